"""Gate load diagnostics: mean weight per task and expert, entropy, utilisation, collapse, and
under sparse dispatch the share of chosen (row, expert) pairs each expert's capacity dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recsys_moe.metrics.names import GATE

log = logging.getLogger(__name__)


class GateAccumulator:
    """Sums gate weights ``[T, B, E]`` and per-row entropies over batches."""

    def __init__(self) -> None:
        self.weight_sum: Tensor | None = None
        self.entropy_sum: Tensor | None = None
        self.routed: Tensor | None = None
        self.dropped: Tensor | None = None
        self.rows = 0

    def update(self, weights: Tensor, routed: Tensor | None = None, dropped: Tensor | None = None) -> None:
        """One batch: gate weights ``[T, B, E]`` and, under sparse dispatch, its routed and
        dropped pair counts ``[T, E]``."""
        w = weights.detach().float()
        ent = -(w * torch.log(w.clamp_min(1e-12))).sum(-1)  # [T, B]
        ws, es = w.sum(1).cpu(), ent.sum(1).cpu()
        self.weight_sum = ws if self.weight_sum is None else self.weight_sum + ws
        self.entropy_sum = es if self.entropy_sum is None else self.entropy_sum + es
        self.rows += w.shape[1]
        if routed is not None and dropped is not None:
            r, d = routed.detach().float().cpu(), dropped.detach().float().cpu()
            self.routed = r if self.routed is None else self.routed + r
            self.dropped = d if self.dropped is None else self.dropped + d

    @classmethod
    def merged(cls, parts: list[GateAccumulator]) -> GateAccumulator:
        """The sums of several accumulators (one per rank) as one."""
        out = cls()
        for p in parts:
            out.rows += p.rows
            for name in ("weight_sum", "entropy_sum", "routed", "dropped"):
                mine, theirs = getattr(out, name), getattr(p, name)
                if theirs is not None:
                    setattr(out, name, theirs.clone() if mine is None else mine + theirs)
        return out

    def summary(self, task_names: list[str], threshold: float) -> GateSummary | None:
        if self.weight_sum is None or not self.rows:
            return None
        mean = (self.weight_sum / self.rows).numpy()
        entropy = (self.entropy_sum / self.rows).numpy()
        routed = None if self.routed is None else self.routed.numpy()
        dropped = None if self.dropped is None else self.dropped.numpy()
        return GateSummary(task_names, mean, entropy, threshold, routed, dropped)


@dataclass
class GateSummary:
    task_names: list[str]
    mean_weights: np.ndarray
    """``[T, E]`` mean gate weight of each expert for each task."""
    entropy: np.ndarray
    """``[T]`` mean per-row gate entropy (nats); ``log(E)`` is a uniform gate."""
    threshold: float
    routed: np.ndarray | None = None
    """``[T, E]`` (row, expert) pairs each task chose, under sparse dispatch."""
    dropped: np.ndarray | None = None
    """``[T, E]`` of those, the pairs dropped because the expert was full."""

    @property
    def drop_rate(self) -> np.ndarray | None:
        """``[T, E]`` dropped over routed pairs (0 where an expert was never chosen)."""
        if self.routed is None or self.dropped is None:
            return None
        return np.divide(self.dropped, self.routed, out=np.zeros_like(self.dropped), where=self.routed > 0)

    def task_drop_rate(self) -> np.ndarray | None:
        """``[T]`` share of each task's chosen pairs that were dropped."""
        if self.routed is None or self.dropped is None:
            return None
        return self.dropped.sum(1) / np.maximum(self.routed.sum(1), 1)

    @property
    def utilisation(self) -> np.ndarray:
        """``[E]`` mean share of each expert over tasks."""
        return self.mean_weights.mean(0)

    @property
    def collapsed_experts(self) -> list[int]:
        """Experts whose share is under the threshold for every task."""
        return [int(e) for e in np.flatnonzero((self.mean_weights < self.threshold).all(0))]

    def metrics(self, prefix: str = "val/") -> dict[str, float]:
        out: dict[str, float] = {}
        for t, name in enumerate(self.task_names):
            for e in range(self.mean_weights.shape[1]):
                out[f"{prefix}{GATE}/{name}/expert{e}"] = float(self.mean_weights[t, e])
            out[f"{prefix}{GATE}/{name}/entropy"] = float(self.entropy[t])
        for e, u in enumerate(self.utilisation):
            out[f"{prefix}{GATE}/expert{e}/utilisation"] = float(u)
        out[f"{prefix}{GATE}/collapsed_experts"] = float(len(self.collapsed_experts))
        rates, per_task = self.drop_rate, self.task_drop_rate()
        if rates is not None and per_task is not None:
            for t, name in enumerate(self.task_names):
                out[f"{prefix}{GATE}/{name}/drop_rate"] = float(per_task[t])
                for e in range(rates.shape[1]):
                    out[f"{prefix}{GATE}/{name}/expert{e}/drop_rate"] = float(rates[t, e])
        return out

    def warn_collapse(self) -> list[int]:
        dead = self.collapsed_experts
        if dead:
            top = {n: ", ".join(f"expert {e} {self.mean_weights[i, e]:.3f}" for e in np.argsort(-self.mean_weights[i])[:4])
                   for i, n in enumerate(self.task_names)}
            log.warning(
                "expert collapse: %d of %d experts (%s) get under %.3f of the gate weight for every task; "
                "the most used per task: %s", len(dead), self.mean_weights.shape[1],
                dead if len(dead) <= 12 else f"{dead[:12]} ...", self.threshold, top,
            )
        return dead

    def to_json(self) -> dict[str, object]:
        return {
            "tasks": self.task_names,
            "mean_weights": self.mean_weights.round(6).tolist(),
            "entropy": self.entropy.round(6).tolist(),
            "utilisation": self.utilisation.round(6).tolist(),
            "collapsed_experts": self.collapsed_experts,
            "threshold": self.threshold,
            **({} if self.routed is None else {"routed": self.routed.tolist(), "dropped": self.dropped.tolist(),
                                                "drop_rate": self.drop_rate.round(6).tolist(),
                                                "task_drop_rate": self.task_drop_rate().round(6).tolist()}),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> GateSummary:
        """The inverse of :meth:`to_json` (the derived fields are recomputed)."""
        routed, dropped = data.get("routed"), data.get("dropped")
        return cls(list(data["tasks"]), np.asarray(data["mean_weights"]), np.asarray(data["entropy"]), float(data["threshold"]),
                   None if routed is None else np.asarray(routed, dtype=float), None if dropped is None else np.asarray(dropped, dtype=float))

    def heatmap(self, path: str | Path, title: str = "mean gate weight") -> Path:
        """Save a task x expert heatmap PNG (matplotlib, headless)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t, e = self.mean_weights.shape
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * e, 1.0 + 0.6 * t))
        im = ax.imshow(self.mean_weights, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(self.mean_weights.max())))
        ax.set_xticks(range(e), [f"expert {i}" for i in range(e)])
        ax.set_yticks(range(t), self.task_names)
        for i in range(t):
            for j in range(e):
                ax.text(j, i, f"{self.mean_weights[i, j]:.2f}", ha="center", va="center", color="white", fontsize=9)
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
