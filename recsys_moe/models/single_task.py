"""Single-task baseline: an independent network (own embeddings, bottom and tower) per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules import MLP


class SingleTaskBody(nn.Module):
    """Task ``t`` reads only ``inputs[t]`` (its own embedding set), so nothing is shared."""

    def __init__(self, in_dim: int, num_tasks: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.bottoms = nn.ModuleList(MLP(in_dim, hidden, dropout=dropout) for _ in range(num_tasks))
        self.out_dim = self.bottoms[0].out_dim

    def forward(self, inputs: list[Tensor], task_inputs: list[Tensor] | None = None) -> BodyOutput:
        return [bottom(x) for bottom, x in zip(self.bottoms, inputs, strict=True)], None
