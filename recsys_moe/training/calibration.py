"""Post-training calibration of each task's prediction, fitted on the validation split.

The losses train rankings well but not always the right quantity: ``log1p_mse`` regresses
``log1p(seconds)``, so ``expm1(output)`` estimates a geometric mean, far under the expected
seconds a ranking score ``p_ctr x E[seconds]`` needs (docs/benchmarks.md); and a click model
picked at its best validation AUC after one epoch need not be calibrated. Every map here is
monotone, so AUC, Spearman and every ranking stay as they were. They are fitted on the
validation split only (the test days are never seen) and stored in the model's
``calibration_scale`` / ``calibration_shift`` buffers, so the model folder, the ONNX export and
every job carry them.

- binary task: Platt scaling (Platt, 1999): ``p = sigmoid(a * logit + b)``, ``(a, b)`` fitted by
  Newton's method on the validation log-loss.
- watch time: a shift ``s`` of the output so that the validation rows' mean predicted seconds
  equal their mean observed seconds. For ``log1p_mse`` this is a retransformation in the spirit
  of Duan's smearing estimate (Duan, JASA 1983): if ``log1p(y) = mu + e`` with the residual
  independent of ``mu``, ``E[y] = exp(mu) * E[exp(e)] - 1 = expm1(mu + s)``; solving for the mean
  directly, rather than averaging ``exp(e)``, stays exact when the residual's spread varies with
  ``mu``. For ``ziln`` and ``weighted_logistic`` the shift scales the seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

from recsys_moe.models import MultiTaskModel
from recsys_moe.tasks import BinaryTask, Task, WatchTimeTask
from recsys_moe.training.batches import Batch

log = logging.getLogger(__name__)


def platt(logit: np.ndarray, label: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimising the log-loss of ``sigmoid(a * logit + b)`` (Newton's method on the
    two parameters; a tiny ridge keeps the Hessian invertible when one class is rare)."""
    z, y = logit.astype(np.float64), label.astype(np.float64)
    if not (0 < y.mean() < 1):
        return 1.0, 0.0
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        r, w = p - y, p * (1 - p)
        grad = np.array([(r * z).mean(), r.mean()])
        hess = np.array([[(w * z * z).mean(), (w * z).mean()], [(w * z).mean(), w.mean()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def seconds_shift(task: WatchTimeTask, raw: np.ndarray, label: np.ndarray) -> float:
    """The shift of ``task``'s calibrated column under which the mean predicted seconds equal
    the mean observed seconds on these rows (module docstring); found by bisection, as the mean
    grows monotonically with the shift."""
    y = float(np.clip(label.astype(np.float64), 0, None).mean())
    if y <= 0:
        return 0.0
    raw_t = torch.from_numpy(raw.astype(np.float64))
    c = task.calibrated_column

    def mean_at(shift: float) -> float:
        shifted = raw_t.clone()
        shifted[:, c] += shift
        return float(task.outputs(shifted)[task.prediction_name].mean())

    lo, hi = -10.0, 10.0
    if not mean_at(lo) < y < mean_at(hi):
        return 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_at(mid) < y else (lo, mid)
    return (lo + hi) / 2


def fit_task(task: Task, raw: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """``(scale, shift)`` of one task's calibrated column, from its uncalibrated tower output."""
    if isinstance(task, BinaryTask):
        return platt(raw[:, 0], label)
    if isinstance(task, WatchTimeTask):
        return 1.0, seconds_shift(task, raw, label)
    return 1.0, 0.0


@torch.no_grad()
def fit_calibration(model: MultiTaskModel, loader: Iterable[Batch]) -> dict[str, dict[str, float]]:
    """Fit every task with ``calibrate`` on the rows of ``loader`` (the validation split) and
    store the maps in ``model``; returns them per task. Tasks without ``calibrate`` keep the
    identity."""
    wanted = [i for i, t in enumerate(model.tasks) if t.cfg.calibrate]
    if not wanted:
        return {}
    was_training = model.training
    model.eval()
    device = model.calibration_scale.device
    raws: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    labels: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.sparse, batch.dense)
        for i in wanted:
            t = model.tasks[i]
            raws[i].append(out[f"raw_{t.name}"].float().cpu().numpy())
            labels[i].append(batch.labels[t.label].float().cpu().numpy())
    fitted: dict[str, dict[str, float]] = {}
    for i in wanted:
        t = model.tasks[i]
        scale, shift = fit_task(t, np.concatenate(raws[i]), np.concatenate(labels[i]))
        if not (math.isfinite(scale) and math.isfinite(shift)) or scale <= 0:
            log.warning("calibration of %s gave scale %s, shift %s; keeping the identity", t.name, scale, shift)
            scale, shift = 1.0, 0.0
        model.calibration_scale[i] = scale
        model.calibration_shift[i] = shift
        fitted[t.name] = {"scale": scale, "shift": shift}
    model.train(was_training)
    return fitted
