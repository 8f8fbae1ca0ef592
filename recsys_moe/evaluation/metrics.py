"""Vectorised metrics on numpy arrays (no per-row or per-user Python loops).

Every function refuses NaN or infinite predictions with a :class:`MetricError` instead of
returning a silent NaN.
"""

from __future__ import annotations

import numpy as np


class MetricError(ValueError):
    """Inputs a metric cannot be computed from (NaN predictions, mismatched lengths, ...)."""


def _check(pred: np.ndarray, label: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    label = np.asarray(label, dtype=np.float64).reshape(-1)
    if pred.shape != label.shape:
        raise MetricError(f"{name}: {pred.size} predictions for {label.size} labels")
    if pred.size == 0:
        raise MetricError(f"{name}: no rows")
    bad = ~np.isfinite(pred)
    if bad.any():
        raise MetricError(f"{name}: {int(bad.sum())} of {pred.size} predictions are NaN or infinite")
    return pred, label


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    change = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [xs.size]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(pred: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted as half. NaN if one class."""
    pred, label = _check(pred, label, "auc")
    pos = label > 0.5
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(pred)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(prob: np.ndarray, label: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    prob, label = _check(prob, label, "logloss")
    p = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = _check(pred, target, "rmse")
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks). NaN when either side is constant."""
    pred, target = _check(pred, target, "spearman")
    a, b = average_ranks(pred), average_ranks(target)
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def task_metrics(kind: str, name: str, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The validation metrics of one task: binary -> auc, logloss; watch time -> rmse and
    spearman on ``log1p(seconds)``."""
    if kind == "binary":
        return {f"auc_{name}": auc(pred, label), f"logloss_{name}": logloss(pred, label)}
    p, y = np.log1p(np.clip(pred, 0, None)), np.log1p(np.clip(label, 0, None))
    return {f"rmse_{name}": rmse(p, y), f"spearman_{name}": spearman(p, y)}
