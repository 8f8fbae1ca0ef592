"""Per-task softmax gates over experts, dense or noisy top-k sparse, with a balancing loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_moe.modules.dispatch import DispatchStats


class GateOutput(NamedTuple):
    weights: Tensor
    """``[T, B, E]``: per task, row and expert; each row sums to 1."""
    balance_loss: Tensor
    """Scalar load-balancing auxiliary loss (0 for dense gates)."""
    z_loss: Tensor
    """Scalar router z-loss ``mean (logsumexp logits)^2`` (ST-MoE, Zoph et al., 2022)."""
    top_indices: Tensor | None = None
    """``[T, B, k]``: the experts each task chose per row (top-k gates only)."""
    top_weights: Tensor | None = None
    """``[T, B, k]``: their weights (``weights`` at ``top_indices``)."""
    dispatch: DispatchStats | None = None
    """Routed and dropped pairs when the experts ran with sparse dispatch."""


def top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=-1)`` (largest first; ties to the lower index). For the small ``k`` of MoE
    routing, ``k`` max passes are faster than ``topk`` on CPU, in torch and in ONNX Runtime."""
    if k > 4:
        return x.topk(k, dim=-1)
    values, indices = [], []
    for i in range(k):
        v, j = x.max(dim=-1, keepdim=True)
        values.append(v)
        indices.append(j)
        if i + 1 < k:
            x = x.scatter(-1, j, float("-inf"))
    return torch.cat(values, -1), torch.cat(indices, -1)


def with_task_inputs(logits: Tensor, weight: Tensor | None, task_x: Tensor | None) -> Tensor:
    """Gate logits ``[T, B, K]`` plus, when the gates read each task's own input (STEM),
    ``task_x[t] @ weight[t]`` for every task ``t`` (``task_x [T, B, D]``, ``weight [T, D, K]``)."""
    if weight is None:
        return logits
    if task_x is None:
        raise ValueError("these gates read each task's own input: pass task_x [T, B, task_in_dim]")
    return logits + torch.bmm(task_x, weight)


def router_z_loss(logits: Tensor) -> Tensor:
    """The router z-loss of ST-MoE (Zoph et al., 2022): mean squared log-sum-exp of the logits."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


class TaskGates(nn.Module):
    """One gate per task, ``softmax(W_t x / temperature)`` over ``E`` experts (MMoE, Ma et al.,
    KDD 2018), computed for all tasks with one linear layer.

    With ``top_k`` set, each row keeps only its ``k`` largest gate logits and renormalises over
    them (noisy top-k gating, Shazeer et al., ICLR 2017): ``k=1`` as in Switch Transformers
    (Fedus et al., 2021), ``k=2`` as in GLaM (Du et al., 2022). While training, trainable Gaussian
    noise (``softplus(W_noise x)`` std) is added to the logits before the top-k choice when
    ``noise`` is on. The balancing loss is the Switch form ``E * sum_e f_e * P_e`` (``f_e``: share
    of the routed slots that went to expert ``e``, ``P_e``: its mean router probability), averaged
    over tasks; it is 1 when the load is even and grows as it concentrates. The router z-loss
    (ST-MoE, Zoph et al., 2022) keeps the logits small, which stabilises routing. Noise is drawn
    only while training: evaluation and export route deterministically.

    ``task_in_dim`` > 0 gives each gate a second input of its own, ``task_x [T, B, task_in_dim]``
    (a task's own embeddings, STEM: Su et al., AAAI 2024): gate ``t`` reads ``[x, task_x[t]]``.
    """

    def __init__(
        self, in_dim: int, num_tasks: int, num_experts: int, temperature: float = 1.0,
        top_k: int | None = None, noise: bool = True, task_in_dim: int = 0,
    ) -> None:
        super().__init__()
        if top_k is not None and not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        self.num_tasks, self.num_experts = num_tasks, num_experts
        self.temperature, self.top_k = temperature, top_k
        self.logits = nn.Linear(in_dim, num_tasks * num_experts)
        self.noise = nn.Linear(in_dim, num_tasks * num_experts) if (top_k is not None and noise) else None
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)
        self.task_weight = None
        if task_in_dim:
            bound = 1.0 / (in_dim + task_in_dim) ** 0.5  # nn.Linear's init over the whole input
            self.task_weight = nn.Parameter(torch.empty(num_tasks, task_in_dim, num_experts).uniform_(-bound, bound))

    def _split(self, y: Tensor) -> Tensor:
        return y.view(y.shape[0], self.num_tasks, self.num_experts).transpose(0, 1)  # [T, B, E]

    def forward(self, x: Tensor, task_x: Tensor | None = None) -> GateOutput:
        clean = with_task_inputs(self._split(self.logits(x)), self.task_weight, task_x) / self.temperature
        z_loss = router_z_loss(clean)
        if self.top_k is None:
            return GateOutput(torch.softmax(clean, dim=-1), clean.new_zeros(()), z_loss)
        noisy = clean
        if self.noise is not None and self.training:
            std = F.softplus(self._split(self.noise(x)))
            # drawn contiguous: randn_like would follow clean's transposed strides, far slower on CPU
            noisy = clean + torch.randn(clean.shape, dtype=clean.dtype, device=clean.device) * std
        top_logits, top = top_k(noisy, self.top_k)
        top_weights = torch.softmax(top_logits, dim=-1)
        weights = torch.zeros_like(noisy).scatter(-1, top, top_weights)
        routed = torch.zeros_like(noisy).scatter(-1, top, 1.0).mean(dim=1) / self.top_k  # [T, E], f_e
        probs = torch.softmax(clean, dim=-1).mean(dim=1)  # [T, E], P_e
        balance = (self.num_experts * (routed * probs).sum(-1)).mean()
        return GateOutput(weights, balance, z_loss, top, top_weights)
