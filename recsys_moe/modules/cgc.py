"""Customized Gate Control: one extraction layer of Progressive Layered Extraction (PLE; Tang,
Liu, Zhao & Gong, RecSys 2020).

Each task owns ``task_experts`` experts and all tasks share ``shared_experts``. Task ``t``'s gate
mixes only its own and the shared experts, so a task's experts learn from that task alone and
the shared ones carry what the tasks have in common: the seesaw between tasks that MMoE's fully
shared experts show is what PLE separates. Below the last layer a shared gate over every expert
feeds the next layer's shared experts.

Every expert of the layer (all tasks' and the shared ones) runs in one
:class:`~recsys_moe.modules.experts.BatchedExperts` call: on the first layer they all read the
same input; above it each expert reads its group's input (its task's, or the shared one),
stacked to ``[E, B, in]`` for one batched matmul per expert layer. The gates run for all tasks
at once too. There is no Python loop over experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_moe.modules.experts import BatchedExperts
from recsys_moe.modules.gates import GateOutput, router_z_loss, with_task_inputs


class CGCLayer(nn.Module):
    """``forward(inputs, task_x)``: ``inputs`` is one ``[B, in]`` tensor shared by every expert
    (the first layer) or ``num_tasks + 1`` of them (each task's, then the shared one); returns
    ``(task outputs [T] of [B, D], shared output [B, D] or None, GateOutput of the task gates)``.

    Experts are numbered task by task, then the shared ones: task ``t`` owns experts
    ``t * task_experts ... (t + 1) * task_experts - 1``; the gate weights in the
    :class:`GateOutput` are ``[T, B, E]`` over all of them (0 for other tasks' experts), so gate
    diagnostics read them as they read MMoE's.

    """

    def __init__(
        self, in_dim: int, num_tasks: int, shared_experts: int, task_experts: int, hidden: Sequence[int],
        dropout: float = 0.0, activation: str = "relu", norm: str | None = None, temperature: float = 1.0,
        shared_gate: bool = False, task_in_dim: int = 0,
    ) -> None:
        super().__init__()
        if task_experts < 1 and shared_experts < 1:
            raise ValueError("a CGC layer needs at least one expert")
        self.num_tasks, self.task_experts, self.shared_experts = num_tasks, task_experts, shared_experts
        self.num_experts = num_tasks * task_experts + shared_experts
        self.temperature = temperature
        self.experts = BatchedExperts(self.num_experts, in_dim, hidden, dropout, activation, norm)
        self.out_dim = self.experts.out_dim
        groups = [t for t in range(num_tasks) for _ in range(task_experts)] + [num_tasks] * shared_experts
        self.register_buffer("expert_group", torch.tensor(groups), persistent=False)
        k = task_experts + shared_experts
        select = torch.zeros(num_tasks, k, self.num_experts)
        for t in range(num_tasks):
            own = list(range(t * task_experts, (t + 1) * task_experts)) + list(range(num_tasks * task_experts, self.num_experts))
            select[t, torch.arange(k), torch.tensor(own)] = 1.0
        # [T, K, E]: task t's K gate weights -> its place among all E experts (a 0/1 matmul: exact)
        self.register_buffer("select", select, persistent=False)
        bound = 1.0 / (in_dim + task_in_dim) ** 0.5  # nn.Linear's init over the gate's whole input
        self.gate_weight = nn.Parameter(torch.empty(num_tasks, in_dim, k).uniform_(-bound, bound))
        self.gate_bias = nn.Parameter(torch.empty(num_tasks, k).uniform_(-bound, bound))
        self.task_gate_weight = (nn.Parameter(torch.empty(num_tasks, task_in_dim, k).uniform_(-bound, bound))
                                 if task_in_dim else None)
        self.shared_gate = nn.Linear(in_dim, self.num_experts) if shared_gate else None

    def forward(self, inputs: Sequence[Tensor], task_x: Tensor | None = None) -> tuple[list[Tensor], Tensor | None, GateOutput]:
        t_count = self.num_tasks
        if len(inputs) == 1:  # every expert and gate reads the same input
            x = inputs[0]
            experts = self.experts(x)  # [E, B, D]
            i, k = self.gate_weight.shape[1:]
            logits = torch.addmm(self.gate_bias.reshape(-1), x, self.gate_weight.permute(1, 0, 2).reshape(i, t_count * k))
            logits = logits.view(x.shape[0], t_count, k).transpose(0, 1)  # [T, B, K]
            shared_in = x
        else:
            stacked = torch.stack(list(inputs))  # [T + 1, B, in]
            experts = self.experts.forward_buffers(stacked.index_select(0, self.expert_group))
            logits = torch.baddbmm(self.gate_bias.unsqueeze(1), stacked[:t_count], self.gate_weight)
            shared_in = inputs[-1]
        logits = with_task_inputs(logits, self.task_gate_weight, task_x) / self.temperature
        z_loss = router_z_loss(logits)
        weights = torch.bmm(torch.softmax(logits, dim=-1), self.select)  # [T, B, E]
        mix = weights
        if self.shared_gate is not None:
            shared_w = torch.softmax(self.shared_gate(shared_in) / self.temperature, dim=-1)
            mix = torch.cat([weights, shared_w.unsqueeze(0)])
        mixed = torch.matmul(mix.to(experts.dtype).permute(1, 0, 2), experts.transpose(0, 1)).unbind(1)  # [B, G, D]
        shared_out = mixed[t_count] if self.shared_gate is not None else None
        return list(mixed[:t_count]), shared_out, GateOutput(weights, weights.new_zeros(()), z_loss)
