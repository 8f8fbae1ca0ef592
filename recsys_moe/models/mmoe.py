"""Multi-gate Mixture-of-Experts body (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules import BatchedExperts, TaskGates


class MMoEBody(nn.Module):
    """Shared experts, one gate per task: task ``t`` sees ``sum_e g_t(x)_e * expert_e(x)``."""

    def __init__(
        self, in_dim: int, num_tasks: int, num_experts: int, hidden: Sequence[int], dropout: float = 0.0,
        temperature: float = 1.0, top_k: int | None = None, noise: bool = True,
    ) -> None:
        super().__init__()
        self.experts = BatchedExperts(num_experts, in_dim, hidden, dropout)
        self.gates = TaskGates(in_dim, num_tasks, num_experts, temperature, top_k, noise)
        self.out_dim = self.experts.out_dim

    def forward(self, inputs: list[Tensor]) -> BodyOutput:
        x = inputs[0]
        experts = self.experts(x)  # [E, B, D]
        gates = self.gates(x)  # weights [T, B, E]
        # One batched matmul [B, T, E] @ [B, E, D]: faster, in torch and in ONNX Runtime, than a
        # broadcast product [T, B, E, D] summed over E.
        mixed = torch.matmul(gates.weights.to(experts.dtype).permute(1, 0, 2), experts.transpose(0, 1))
        return list(mixed.unbind(1)), gates
