"""LightningModule: multi-task loss, optimiser, validation metrics and gate diagnostics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from recsys_moe.config import GateConfig, TasksConfig, TrainingConfig
from recsys_moe.metrics.functions import task_metrics
from recsys_moe.metrics.names import GATE
from recsys_moe.models import MultiTaskModel
from recsys_moe.training.batches import Batch
from recsys_moe.training.distributed import gathered, group_size
from recsys_moe.training.gate_diagnostics import GateAccumulator, GateSummary
from recsys_moe.training.optim import build_optimizer
from recsys_moe.training.sharding.strategy import combined_optimizer
from recsys_moe.training.sharding.wrap import is_sharded


class MultiTaskModule(L.LightningModule):
    """Trains a :class:`MultiTaskModel`.

    Loss: ``sum_t w_t * L_t`` (fixed weights) or, with ``tasks.weighting: uncertainty``,
    ``sum_t w_t * (exp(-s_t) * L_t + s_t)`` with learned ``s_t = log sigma_t^2`` (Kendall et al.,
    CVPR 2018); plus ``gate.balance_weight * balance_loss`` for top-k gates and
    ``gate.z_loss_weight * z_loss`` (the router z-loss). Validation logs
    ``val/<task>/<metric>``, ``val/loss`` and ``val/gate/...`` diagnostics (names:
    :mod:`recsys_moe.metrics.names`).
    """

    def __init__(self, model: MultiTaskModel, tasks: TasksConfig, training: TrainingConfig, gate: GateConfig) -> None:
        super().__init__()
        self.model = model
        self.tasks_cfg, self.training_cfg, self.gate_cfg = tasks, training, gate
        self.log_vars = nn.Parameter(torch.zeros(len(model.tasks))) if tasks.weighting == "uncertainty" else None
        self._val: dict[str, list[Tensor]] = {}
        self._gates = GateAccumulator()
        self._train_routed: Tensor | None = None
        self._train_dropped: Tensor | None = None
        self.train_drop_rate: dict[str, float] = {}
        """Per task, the last training epoch's share of pairs dropped by sparse dispatch."""

    @property
    def net(self) -> MultiTaskModel:
        """The model: ``self.model`` itself, or the model inside it once sharded (DMP)."""
        return self.model.module if is_sharded(self.model) else self.model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.model(batch.sparse, batch.dense)

    def compute_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        total = torch.zeros((), device=batch.dense.device)
        for i, task in enumerate(self.net.tasks):
            loss = task.loss(out[f"raw_{task.name}"], batch.labels[task.label])
            parts[f"loss_{task.name}"] = loss
            if self.log_vars is not None:
                loss = torch.exp(-self.log_vars[i]) * loss + self.log_vars[i]
            total = total + task.weight * loss
        if "balance_loss" in out and self.gate_cfg.top_k is not None and self.gate_cfg.balance_weight:
            parts["balance_loss"] = out["balance_loss"]
            total = total + self.gate_cfg.balance_weight * out["balance_loss"]
        if "z_loss" in out and self.gate_cfg.z_loss_weight:
            parts["z_loss"] = out["z_loss"]
            total = total + self.gate_cfg.z_loss_weight * out["z_loss"]
        return total, parts

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self(batch)
        total, parts = self.compute_loss(out, batch)
        if batch_idx % self.training_cfg.log_every_n_steps == 0:
            b = len(batch)
            self.log("train/loss", total.detach(), batch_size=b, prog_bar=True)
            for k, v in parts.items():
                self.log(f"train/{k}", v.detach(), batch_size=b)
        if "dispatch_routed" in out:  # sparse dispatch drops pairs in training only: count them
            routed, dropped = out["dispatch_routed"].detach(), out["dispatch_dropped"].detach()
            self._train_routed = routed if self._train_routed is None else self._train_routed + routed
            self._train_dropped = dropped if self._train_dropped is None else self._train_dropped + dropped
        return total

    def on_train_epoch_start(self) -> None:
        self._train_routed = self._train_dropped = None

    def on_train_epoch_end(self) -> None:
        """Log the epoch's share of chosen (row, expert) pairs that capacity dropped, per task."""
        if self._train_routed is None:
            return
        rate = self._train_dropped.sum(1) / self._train_routed.sum(1).clamp_min(1)
        self.train_drop_rate = {t: float(r) for t, r in zip(self.net.task_names, rate, strict=True)}
        for t, r in self.train_drop_rate.items():
            self.log(f"train/{GATE}/{t}/drop_rate", r)

    def on_validation_epoch_start(self) -> None:
        self._val = {}
        self._gates = GateAccumulator()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self(batch)
        total, _ = self.compute_loss(out, batch)
        keep = {t.prediction_name: out[t.prediction_name] for t in self.net.tasks}
        keep |= {f"label_{t.name}": batch.labels[t.label] for t in self.net.tasks}
        keep["loss"] = total.detach().reshape(1).float() * len(batch)
        keep["rows"] = torch.tensor([float(len(batch))], device=total.device)
        for k, v in keep.items():
            self._val.setdefault(k, []).append(v.detach().float().cpu())
        if "gate_weights" in out:
            self._gates.update(out["gate_weights"], out.get("dispatch_routed"), out.get("dispatch_dropped"))

    def epoch_metrics(self, prefix: str = "val/") -> tuple[dict[str, float], GateSummary | None]:
        """Metrics over everything collected since :meth:`on_validation_epoch_start`."""
        if not self._val:
            return {}, None
        cat = {k: torch.cat(v).numpy() for k, v in self._val.items()}
        metrics: dict[str, float] = {"loss": float(cat["loss"].sum() / cat["rows"].sum())}
        for task in self.net.tasks:
            metrics |= task_metrics(task.cfg.kind, task.name, cat[task.prediction_name], cat[f"label_{task.name}"])
        out = {f"{prefix}{k}": v for k, v in metrics.items()}
        summary = self._gates.summary(self.net.task_names, self.gate_cfg.collapse_threshold)
        if summary is not None:
            out |= summary.metrics(prefix)
        return out, summary

    def gather_ranks(self) -> None:
        """Under DDP, replace this rank's validation outputs and gate sums by every rank's, so the
        metrics are exact over the whole split and equal on every rank (each validated a share)."""
        if group_size() == 1:
            return
        parts = gathered(({k: torch.cat(v) for k, v in self._val.items()}, self._gates))
        self._val = {}
        for outputs, _ in parts:
            for k, v in outputs.items():
                self._val.setdefault(k, []).append(v)
        self._gates = GateAccumulator.merged([g for _, g in parts])

    def on_validation_epoch_end(self) -> None:
        self.gather_ranks()
        logged, summary = self.epoch_metrics("val/")
        if not logged:
            return
        if summary is not None and not self.trainer.sanity_checking:
            summary.warn_collapse()
        logged = {k: v for k, v in logged.items() if np.isfinite(v)}
        monitor = f"val/{self.tasks_cfg.monitor}"
        self.log(monitor, logged.pop(monitor, float("nan")), prog_bar=True)
        self.log_dict(logged, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.training_cfg
        if is_sharded(self.model):  # tables are updated by their fused optimiser, inside backward
            return combined_optimizer(self, cfg.learning_rate, cfg.weight_decay)
        return build_optimizer(
            self.named_parameters(), cfg.learning_rate, cfg.weight_decay, cfg.embedding_optimizer,
            cfg.embedding_learning_rate or cfg.learning_rate,
        )
