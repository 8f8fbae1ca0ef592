"""Multi-gate Mixture-of-Experts body (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules import BatchedExperts, TaskGates
from recsys_moe.modules.dispatch import combine, dispatch_slots, dispatch_stats


class MMoEBody(nn.Module):
    """Shared experts, one gate per task: task ``t`` sees ``sum_e g_t(x)_e * expert_e(x)``.

    With ``sparse`` (top-k gates only), each expert runs only on the rows some task chose it for,
    up to its capacity (:mod:`recsys_moe.modules.dispatch`): ``capacity_factor`` while training,
    as in Switch, and ``eval_capacity_factor`` otherwise (None: the busiest expert's load, so
    nothing is dropped). Without it every expert runs on every row and the gate weights mix them
    (exact for dense and top-k gates alike)."""

    def __init__(
        self, in_dim: int, num_tasks: int, num_experts: int, hidden: Sequence[int], dropout: float = 0.0,
        temperature: float = 1.0, top_k: int | None = None, noise: bool = True, sparse: bool = False,
        capacity_factor: float | None = 1.25, eval_capacity_factor: float | None = None,
    ) -> None:
        super().__init__()
        if sparse and top_k is None:
            raise ValueError("sparse dispatch needs a top-k gate")
        self.experts = BatchedExperts(num_experts, in_dim, hidden, dropout)
        self.gates = TaskGates(in_dim, num_tasks, num_experts, temperature, top_k, noise)
        self.out_dim = self.experts.out_dim
        self.num_tasks, self.num_experts, self.top_k = num_tasks, num_experts, top_k
        self.sparse = sparse
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor

    def forward(self, inputs: list[Tensor]) -> BodyOutput:
        x = inputs[0]
        gates = self.gates(x)  # weights [T, B, E]
        if self.sparse:
            return self._sparse(x, gates)
        experts = self.experts(x)  # [E, B, D]
        # One batched matmul [B, T, E] @ [B, E, D]: faster, in torch and in ONNX Runtime, than a
        # broadcast product [T, B, E, D] summed over E.
        mixed = torch.matmul(gates.weights.to(experts.dtype).permute(1, 0, 2), experts.transpose(0, 1))
        return list(mixed.unbind(1)), gates

    def _sparse(self, x: Tensor, gates) -> BodyOutput:
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        slot, rows, cap = dispatch_slots(gates.top_indices, self.num_experts, factor)
        buffers = x.index_select(0, rows).view(self.num_experts, cap, x.shape[1])
        mixed, ran = combine(self.experts.forward_buffers(buffers), slot, gates.top_indices, gates.top_weights)
        return list(mixed.unbind(0)), gates._replace(dispatch=dispatch_stats(gates.top_indices, ran, self.num_experts))
