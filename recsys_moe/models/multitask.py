"""The shared model interface: sparse embeddings + dense -> body -> one tower per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

from recsys_moe.modules import MLP, DotInteraction, GateOutput, SparseEmbedding
from recsys_moe.tasks import Task


class MultiTaskModel(nn.Module):
    """``forward(sparse, dense)`` returns a dict of named outputs.

    Per task ``t``: ``raw_<t>`` (tower output, what the loss uses) plus the task's own outputs
    (``logits_<t>``/``probs_<t>`` or ``pred_<t>``). Models with gates add ``gate_weights``
    ``[tasks, batch, experts]``, ``balance_loss`` and ``z_loss``; with sparse dispatch also
    ``dispatch_routed`` and ``dispatch_dropped`` ``[tasks, experts]`` pair counts.

    The model is split into :meth:`embed` (torchrec, sparse) and :meth:`head` (dense tensors
    only), so an export twin can swap the embedding lookup and keep the head as it is.
    """

    def __init__(
        self, kind: str, embeddings: Sequence[SparseEmbedding], body: nn.Module,
        towers: dict[str, MLP], tasks: Sequence[Task], interaction: DotInteraction | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.embeddings = nn.ModuleList(embeddings)
        self.body = body
        self.towers = nn.ModuleDict(towers)
        self.tasks = list(tasks)
        self.interaction = interaction

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def embed(self, sparse: KeyedJaggedTensor, dense: Tensor) -> list[Tensor]:
        """One input vector ``[B, D]`` per embedding set (one, or one per task for SingleTask)."""
        return [self.combine(emb(sparse), dense) for emb in self.embeddings]

    def combine(self, pooled: Tensor, dense: Tensor) -> Tensor:
        """Pooled embeddings ``[B, E]`` + dense ``[B, N]`` -> body input (with dot interactions)."""
        parts = [pooled, dense]
        if self.interaction is not None:
            parts.append(self.interaction(pooled))
        return torch.cat(parts, dim=1)

    def combine_parts(self, parts: list[Tensor], dense: Tensor) -> Tensor:
        """:meth:`combine` from each feature's pooled ``[B, d]`` tensor (in feature order) rather
        than their concatenation: the same values, without slicing the features back out."""
        cols = [*parts, dense]
        if self.interaction is not None:
            cols.append(self.interaction.forward_parts(parts))
        return torch.cat(cols, dim=1)

    def head(self, inputs: list[Tensor]) -> dict[str, Tensor]:
        hidden, gates = self.body(inputs)
        out: dict[str, Tensor] = {}
        for task, h in zip(self.tasks, hidden, strict=True):
            raw = self.towers[task.name](h)
            out[f"raw_{task.name}"] = raw
            out.update(task.outputs(raw))
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
