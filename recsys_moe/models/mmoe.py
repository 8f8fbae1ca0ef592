"""Multi-gate Mixture-of-Experts body (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_moe.models.multitask import BodyOutput
from recsys_moe.modules import BatchedExperts, TaskGates
from recsys_moe.modules.dispatch import combine, dispatch_slots, dispatch_stats, grouped_slots
from recsys_moe.modules.experts import grouped_mm_runs


class MMoEBody(nn.Module):
    """Shared experts, one gate per task: task ``t`` sees ``sum_e g_t(x)_e * expert_e(x)``.

    With ``sparse`` (top-k gates only), each expert runs only on the rows some task chose it for,
    up to its capacity (:mod:`recsys_moe.modules.dispatch`): ``capacity_factor`` while training,
    as in Switch, and ``eval_capacity_factor`` otherwise (None: nothing is dropped, and eager
    torch runs the experts on jagged groups instead of buffers padded to the busiest expert).
    Without it every expert runs on every row and the gate weights mix them (exact for dense and
    top-k gates alike).

    ``activation`` and ``norm`` shape the experts (:class:`~recsys_moe.modules.BatchedExperts`);
    ``task_in_dim`` > 0 lets each gate read its task's own embeddings as well (STEM)."""

    def __init__(
        self, in_dim: int, num_tasks: int, num_experts: int, hidden: Sequence[int], dropout: float = 0.0,
        temperature: float = 1.0, top_k: int | None = None, noise: bool = True, sparse: bool = False,
        capacity_factor: float | None = 1.25, eval_capacity_factor: float | None = None,
        activation: str = "relu", norm: str | None = None, task_in_dim: int = 0,
    ) -> None:
        super().__init__()
        if sparse and top_k is None:
            raise ValueError("sparse dispatch needs a top-k gate")
        if sparse and norm == "batch":
            raise ValueError("batch norm over experts needs every expert's whole batch: use layer norm with sparse dispatch")
        self.experts = BatchedExperts(num_experts, in_dim, hidden, dropout, activation, norm)
        self.gates = TaskGates(in_dim, num_tasks, num_experts, temperature, top_k, noise, task_in_dim)
        self.out_dim = self.experts.out_dim
        self.num_tasks, self.num_experts, self.top_k = num_tasks, num_experts, top_k
        self.sparse = sparse
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.grouped = True
        """Without a capacity (outside training), run the experts on jagged groups in eager torch
        where torch has the kernel (:mod:`recsys_moe.modules.dispatch`); False keeps the padded
        buffers, as the exported graph does."""

    def forward(self, inputs: list[Tensor], task_inputs: list[Tensor] | None = None) -> BodyOutput:
        x = inputs[0]
        gates = self.gates(x, torch.stack(task_inputs) if task_inputs else None)  # weights [T, B, E]
        if self.sparse:
            return self._sparse(x, gates)
        experts = self.experts(x)  # [E, B, D]
        # One batched matmul [B, T, E] @ [B, E, D]: faster, in torch and in ONNX Runtime, than a
        # broadcast product [T, B, E, D] summed over E.
        mixed = torch.matmul(gates.weights.to(experts.dtype).permute(1, 0, 2), experts.transpose(0, 1))
        return list(mixed.unbind(1)), gates

    def _sparse(self, x: Tensor, gates) -> BodyOutput:
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if factor is None and self.grouped and _eager() and grouped_mm_runs(x, self.experts):
            slot, rows, counts = grouped_slots(gates.top_indices, self.num_experts)
            outputs = self.experts.forward_groups(x.index_select(0, rows), counts)
        else:
            slot, rows, cap = dispatch_slots(gates.top_indices, self.num_experts, factor)
            outputs = self.experts.forward_buffers(x.index_select(0, rows).view(self.num_experts, cap, x.shape[1]))
        mixed, ran = combine(outputs, slot, gates.top_indices, gates.top_weights)
        return list(mixed.unbind(0)), gates._replace(dispatch=dispatch_stats(gates.top_indices, ran, self.num_experts))


def _eager() -> bool:
    """Not being traced for export or compiled: the grouped kernel's data-dependent sizes would
    not export."""
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
                or torch.jit.is_tracing())
