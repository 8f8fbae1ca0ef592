"""Confidence intervals for AUC differences between two models scored on the same rows.

Poisson bootstrap by user: every user draws a weight from Poisson(1) per replicate and all of
the user's impressions carry it. Resampling users rather than rows keeps a user's correlated
impressions together, so the interval is not too narrow (rows of one user are not independent).
Each model's rows are sorted once; a replicate is then a weighted rank-sum in O(rows), so 200
replicates on 1M rows take seconds, not the minutes of re-sorting a resample each time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_moe.metrics.functions import MetricError, _check


class SortedAUC:
    """Weighted ROC AUC of fixed predictions for any row weights (ties count half)."""

    def __init__(self, pred: np.ndarray, label: np.ndarray) -> None:
        pred, label = _check(pred, label, "auc")
        self.order = np.argsort(pred)  # tied rows form one block, so stability does not matter
        p = pred[self.order]
        self.block = np.cumsum(np.concatenate([[True], p[1:] != p[:-1]])) - 1
        self.pos = (label[self.order] > 0.5).astype(np.float64)
        self.blocks = int(self.block[-1]) + 1

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        wp = np.bincount(self.block, w * self.pos, minlength=self.blocks)
        wn = np.bincount(self.block, w * (1.0 - self.pos), minlength=self.blocks)
        below = np.cumsum(wn) - wn  # negative weight strictly below each block
        tp, tn = wp.sum(), wn.sum()
        if tp == 0 or tn == 0:
            return float("nan")
        return float(np.sum(wp * (below + 0.5 * wn)) / (tp * tn))


@dataclass
class DeltaCI:
    delta: float
    """AUC of model A minus AUC of model B on all rows."""
    low: float
    high: float
    samples: int
    level: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def auc_delta_ci(pred_a: np.ndarray, pred_b: np.ndarray, label: np.ndarray, groups: np.ndarray,
                 samples: int = 200, level: float = 0.95, seed: int = 0) -> DeltaCI:
    """Percentile interval of AUC(A) - AUC(B) over a Poisson bootstrap of users."""
    if samples < 10:
        raise MetricError(f"bootstrap: {samples} samples are too few for an interval (use 10 or more)")
    a, b = SortedAUC(pred_a, label), SortedAUC(pred_b, label)
    _, code = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    ones = np.ones(code.size)
    delta = a(ones) - b(ones)
    rng = np.random.default_rng(seed)
    deltas = np.empty(samples)
    for s in range(samples):  # a loop over replicates, each one vectorised over rows
        w = rng.poisson(1.0, size=int(code.max()) + 1).astype(np.float64)[code]
        deltas[s] = a(w) - b(w)
    deltas = deltas[np.isfinite(deltas)]
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(deltas, [tail, 1.0 - tail]) if deltas.size else (float("nan"), float("nan"))
    return DeltaCI(float(delta), float(lo), float(hi), int(deltas.size), level)
