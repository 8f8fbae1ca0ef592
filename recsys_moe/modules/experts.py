"""All experts of a mixture computed at once: one einsum / batched matmul per layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BatchedExperts(nn.Module):
    """``num_experts`` independent ReLU MLPs with the same shape, stored as stacked weights.

    Layer ``l`` holds ``weight[l]: [E, in, out]`` and ``bias[l]: [E, out]``. The first layer maps
    the shared input ``[B, in]`` to ``[E, B, out]`` with one GEMM against all experts' weights
    side by side; later layers use one ``baddbmm``. Each expert's slice is initialised independently (Kaiming-uniform, as
    ``nn.Linear``), so experts start different: identical initial experts receive identical
    gradients and never specialise.

    Example::

        experts = BatchedExperts(num_experts=4, in_dim=128, hidden=[64])
        h = experts(x)            # x: [B, 128] -> h: [4, B, 64]
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("BatchedExperts needs at least one hidden layer")
        self.num_experts = num_experts
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        width = in_dim
        for h in hidden:
            self.weights.append(nn.Parameter(torch.empty(num_experts, width, h)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, h)))
            width = h
        self.out_dim = width
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            # Same distribution as nn.Linear's default, drawn separately for every expert.
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, in]`` -> ``[E, B, out]``."""
        w0 = self.weights[0]
        e, i, o = w0.shape
        # The shared input meets every expert's first layer in one GEMM with its bias: [B, i] @ [i, E*o].
        h = torch.addmm(self.biases[0].reshape(e * o), x, w0.permute(1, 0, 2).reshape(i, e * o)).view(-1, e, o).transpose(0, 1)
        h = self.dropout(torch.relu(h))
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            h = self.dropout(torch.relu(torch.baddbmm(b.unsqueeze(1), h, w)))
        return h

    def forward_buffers(self, x: Tensor) -> Tensor:
        """Each expert on its own rows: ``x: [E, C, in]`` (row ``c`` of buffer ``e`` goes through
        expert ``e`` only) -> ``[E, C, out]``; one ``baddbmm`` per layer (sparse dispatch,
        :mod:`recsys_moe.modules.dispatch`)."""
        h = x
        for w, b in zip(self.weights, self.biases, strict=True):
            h = self.dropout(torch.relu(torch.baddbmm(b.unsqueeze(1), h, w)))
        return h

    def forward_groups(self, x: Tensor, counts: Tensor) -> Tensor:
        """Each expert on its own rows, as jagged groups: ``x: [N, in]`` sorted by expert, the
        first ``counts[0]`` rows for expert 0 and so on -> ``[N, out]``; one
        ``torch.nn.functional.grouped_mm`` per layer, no padding (see :func:`grouped_mm_runs`)."""
        offs = counts.cumsum(0).to(torch.int32)
        expert_of_row = torch.repeat_interleave(torch.arange(self.num_experts, device=x.device), counts, output_size=x.shape[0])
        h = x
        for w, b in zip(self.weights, self.biases, strict=True):
            h = self.dropout(torch.relu(F.grouped_mm(h, w, offs=offs) + b.index_select(0, expert_of_row)))
        return h


def grouped_mm_runs(x: Tensor, experts: BatchedExperts) -> bool:
    """Whether :meth:`BatchedExperts.forward_groups` can run on ``x``: this torch has
    ``torch.nn.functional.grouped_mm``, every layer's width is a multiple of 16 bytes (the
    kernel's stride rule), and on CUDA the values are bfloat16 on compute capability 8.0 or
    later, the only case its CUDA kernel takes. Otherwise the padded buffers run."""
    if not hasattr(F, "grouped_mm"):
        return False
    per_16_bytes = 16 // x.element_size()
    if any(w.shape[1] % per_16_bytes or w.shape[2] % per_16_bytes for w in experts.weights):
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
