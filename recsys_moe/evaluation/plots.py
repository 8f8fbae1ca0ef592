"""Report figures as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def load_matplotlib():
    """pyplot on the headless Agg backend (imported on first use: the import is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability(curves: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Mean predicted vs observed rate per probability bin, one line per model; point size ~ rows."""
    plt = load_matplotlib()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    top = 0.0
    for label, c in curves.items():
        pred, obs, count = (np.asarray(c[k], dtype=float) for k in ("pred", "observed", "count"))
        ax.plot(pred, obs, marker="o", label=label)
        ax.scatter(pred, obs, s=10 + 200 * count / max(count.sum(), 1), alpha=0.3)
        top = max(top, float(pred.max(initial=0)), float(obs.max(initial=0)))
    lim = min(1.0, top * 1.1 + 0.02)
    ax.plot([0, lim], [0, lim], ls="--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, lim), ylim=(0, lim), xlabel="mean predicted probability", ylabel="observed rate", title=title)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def watch_time(curves: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Observed vs predicted mean watch seconds in bins of equal rows along the prediction."""
    plt = load_matplotlib()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    lo, hi = np.inf, 0.0
    for label, c in curves.items():
        pred, obs = np.asarray(c["pred_s"], dtype=float), np.asarray(c["observed_s"], dtype=float)
        ax.plot(pred, obs, marker="o", label=label)
        both = np.concatenate([pred, obs])
        both = both[both > 0]
        if both.size:
            lo, hi = min(lo, float(both.min())), max(hi, float(both.max()))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", label="predicted = observed")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(xlabel="mean predicted watch time (s)", ylabel="mean observed watch time (s)", title=title)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def gate_heatmap(gates: dict[str, Any], path: Path, title: str) -> Path:
    from recsys_moe.training.gate_diagnostics import GateSummary

    return GateSummary.from_json(gates).heatmap(path, title)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.subplots_adjust(left=0.14, bottom=0.12, right=0.97, top=0.92)  # fixed margins: layout engines cost seconds
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
