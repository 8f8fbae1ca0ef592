"""The shared model interface: sparse embeddings + dense -> body -> one tower per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

from recsys_moe.modules import MLP, DotInteraction, GateOutput, PositionTower, SparseEmbedding
from recsys_moe.tasks import Task


class ModelInputs(NamedTuple):
    """What :meth:`MultiTaskModel.head` reads: dense tensors only (an export twin builds them
    from its own lookups)."""

    shared: list[Tensor]
    """One body input ``[B, D]`` per shared embedding set (one, or one per task for SingleTask)."""
    task: list[Tensor] | None = None
    """STEM: per task, its own embeddings and their dot interactions ``[B, D_t]``."""
    position: Tensor | None = None
    """Position-bias logit ``[B]`` (training only; None: the tower's unknown-slot constant)."""


class MultiTaskModel(nn.Module):
    """``forward(sparse, dense)`` returns a dict of named outputs.

    Per task ``t``: ``raw_<t>`` (tower output, what the loss uses) plus the task's own outputs
    (``logits_<t>``/``probs_<t>`` or ``pred_<t>``, after the calibration fitted on the validation
    split, :mod:`recsys_moe.training.calibration`). Models with gates add ``gate_weights``
    ``[tasks, batch, experts]``, ``balance_loss`` and ``z_loss``; with sparse dispatch also
    ``dispatch_routed`` and ``dispatch_dropped`` ``[tasks, experts]`` pair counts.

    Optional parts: ``task_embeddings`` (STEM, Su et al., AAAI 2024: per task, its own copy of
    some tables, read by that task's gate and tower only, so only that task's loss trains it) and
    a ``position_tower`` (:class:`~recsys_moe.modules.PositionTower`, whose logit is added to one
    binary task's logit in training). With ``task_tables_cross`` each task also reads the other
    tasks' own embeddings, detached (STEM's all-forward, task-specific-backward gate).

    The model is split into :meth:`embed` (torchrec, sparse) and :meth:`head` (dense tensors
    only), so an export twin can swap the embedding lookup and keep the head as it is.
    """

    def __init__(
        self, kind: str, embeddings: Sequence[SparseEmbedding], body: nn.Module,
        towers: dict[str, MLP], tasks: Sequence[Task], interaction: DotInteraction | None = None,
        task_embeddings: Sequence[SparseEmbedding] = (), task_interaction: DotInteraction | None = None,
        position_tower: PositionTower | None = None, position_task: str | None = None,
        task_tables_cross: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.embeddings = nn.ModuleList(embeddings)
        self.task_embeddings = nn.ModuleList(task_embeddings)
        self.body = body
        self.towers = nn.ModuleDict(towers)
        self.tasks = list(tasks)
        self.interaction = interaction
        self.task_interaction = task_interaction
        self.position_tower = position_tower
        self.position_task = position_task
        self.task_tables_cross = task_tables_cross
        if position_tower is not None and position_task not in self.task_names:
            raise ValueError(f"position tower: task {position_task!r} is not one of {self.task_names}")
        # Per task, an affine map of the tower's output fitted after training (identity until then).
        self.register_buffer("calibration_scale", torch.ones(len(self.tasks)))
        self.register_buffer("calibration_shift", torch.zeros(len(self.tasks)))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def embedding_sets(self) -> dict[str, SparseEmbedding]:
        """Every embedding set by a prefix for its tables: ``""`` for the shared set (``"set<i>/"``
        for SingleTask's), ``"<task>/"`` for a task's own tables, ``"position/"``."""
        sets = {("" if len(self.embeddings) == 1 else f"set{i}/"): e for i, e in enumerate(self.embeddings)}
        sets |= {f"{t}/": e for t, e in zip(self.task_names, self.task_embeddings, strict=False)}
        if self.position_tower is not None:
            sets["position/"] = self.position_tower.embedding
        return sets

    def table_weights(self) -> dict[str, Tensor]:
        """Every table's weight, named by :meth:`embedding_sets`' prefix and the table name."""
        return {f"{prefix}{name}": w for prefix, e in self.embedding_sets().items() for name, w in e.table_weights().items()}

    def embed(self, sparse: KeyedJaggedTensor, dense: Tensor) -> ModelInputs:
        """The lookups: each embedding set pooled and combined with the dense features."""
        shared = [self.combine(emb(sparse), dense) for emb in self.embeddings]
        task = [self.combine_task(emb(sparse)) for emb in self.task_embeddings] or None
        position = self.position_tower(sparse) if self.position_tower is not None and self.training else None
        return ModelInputs(shared, task, position)

    def combine(self, pooled: Tensor, dense: Tensor) -> Tensor:
        """Pooled embeddings ``[B, E]`` + dense ``[B, N]`` -> body input (with dot interactions)."""
        parts = [pooled, dense]
        if self.interaction is not None:
            parts.append(self.interaction(pooled))
        return torch.cat(parts, dim=1)

    def combine_task(self, pooled: Tensor) -> Tensor:
        """A task's own pooled embeddings ``[B, E_t]`` -> with their dot interactions."""
        if self.task_interaction is None:
            return pooled
        return torch.cat([pooled, self.task_interaction(pooled)], dim=1)

    def combine_parts(self, parts: list[Tensor], dense: Tensor) -> Tensor:
        """:meth:`combine` from each feature's pooled ``[B, d]`` tensor (in feature order) rather
        than their concatenation: the same values, without slicing the features back out."""
        cols = [*parts, dense]
        if self.interaction is not None:
            cols.append(self.interaction.forward_parts(parts))
        return torch.cat(cols, dim=1)

    def combine_task_parts(self, parts: list[Tensor]) -> Tensor:
        """:meth:`combine_task` from each feature's pooled tensor (the export twin's form)."""
        cols = list(parts)
        if self.task_interaction is not None:
            cols.append(self.task_interaction.forward_parts(parts))
        return torch.cat(cols, dim=1)

    def head(self, inputs: ModelInputs) -> dict[str, Tensor]:
        task_views = inputs.task
        if task_views is not None and self.task_tables_cross:
            # STEM's all-forward, task-specific-backward: task t also reads the other tasks' own
            # embeddings, without gradient, so each task's tables still learn from that task alone
            task_views = [torch.cat([e if u == t else e.detach() for u, e in enumerate(inputs.task)], dim=1)
                          for t in range(len(inputs.task))]
        hidden, gates = self.body(inputs.shared, task_views)
        out: dict[str, Tensor] = {}
        for i, (task, h) in enumerate(zip(self.tasks, hidden, strict=True)):
            if task_views is not None:
                h = torch.cat([h, task_views[i]], dim=1)
            raw = self.towers[task.name](h)
            if self.position_tower is not None and task.name == self.position_task:
                position = inputs.position if inputs.position is not None else self.position_tower.unknown.expand(raw.shape[0])
                raw = raw + position.unsqueeze(1).to(raw.dtype)
            out[f"raw_{task.name}"] = raw
            out.update(task.outputs(task.calibrate(raw, self.calibration_scale[i], self.calibration_shift[i])))
        if gates is not None:
            out["gate_weights"] = gates.weights
            out["balance_loss"] = gates.balance_loss
            out["z_loss"] = gates.z_loss
            if gates.dispatch is not None:
                out["dispatch_routed"], out["dispatch_dropped"] = gates.dispatch
        return out

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> dict[str, Tensor]:
        return self.head(self.embed(sparse, dense))


BodyOutput = tuple[list[Tensor], GateOutput | None]
