"""Progressive Layered Extraction body (PLE; Tang, Liu, Zhao & Gong, RecSys 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules.cgc import CGCLayer


class PLEBody(nn.Module):
    """``levels`` stacked CGC layers (:class:`~recsys_moe.modules.cgc.CGCLayer`); one level is
    CGC, the paper's single-level model. Each level has ``task_experts`` experts per task and
    ``shared_experts`` shared ones; every level but the last also mixes all its experts through a
    shared gate for the next level's shared experts. The gate weights reported (and checked for
    collapse) are the last level's task gates, ``[T, B, E]`` over that level's experts.

    ``task_in_dim`` > 0 (STEM, Su et al., AAAI 2024): the first level's task gates also read each
    task's own embeddings (the towers read them too, :class:`~recsys_moe.models.MultiTaskModel`);
    the experts read the shared input only, so every expert of a level runs in one batched call.
    """

    def __init__(
        self, in_dim: int, num_tasks: int, shared_experts: int, task_experts: int, hidden: Sequence[int],
        levels: int = 1, dropout: float = 0.0, temperature: float = 1.0, activation: str = "relu",
        norm: str | None = None, task_in_dim: int = 0,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"PLE needs at least one level, got {levels}")
        self.num_tasks = num_tasks
        self.layers = nn.ModuleList()
        width = in_dim
        for level in range(levels):
            layer = CGCLayer(width, num_tasks, shared_experts, task_experts, hidden, dropout, activation, norm, temperature,
                             shared_gate=level < levels - 1, task_in_dim=task_in_dim if level == 0 else 0)
            self.layers.append(layer)
            width = layer.out_dim
        self.out_dim = width
        self.num_experts = self.layers[-1].num_experts

    def forward(self, inputs: list[Tensor], task_inputs: list[Tensor] | None = None) -> BodyOutput:
        hidden: list[Tensor] = [inputs[0]]
        task_x = torch.stack(task_inputs) if task_inputs else None
        gates = None
        for i, layer in enumerate(self.layers):
            tasks_out, shared_out, gates = layer(hidden, task_x if i == 0 else None)
            hidden = [*tasks_out, shared_out] if shared_out is not None else tasks_out
        return hidden[: self.num_tasks], gates
