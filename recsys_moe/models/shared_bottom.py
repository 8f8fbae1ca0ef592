"""Shared-bottom multi-task baseline (Caruana, "Multitask Learning", 1997): one MLP for all tasks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules import MLP


class SharedBottomBody(nn.Module):
    def __init__(self, in_dim: int, num_tasks: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.bottom = MLP(in_dim, hidden, dropout=dropout)
        self.num_tasks = num_tasks
        self.out_dim = self.bottom.out_dim

    def forward(self, inputs: list[Tensor], task_inputs: list[Tensor] | None = None) -> BodyOutput:
        h = self.bottom(inputs[0])
        return [h] * self.num_tasks, None
