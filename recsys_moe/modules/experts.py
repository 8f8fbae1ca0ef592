"""All experts of a mixture computed at once: one einsum / batched matmul per layer."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": torch.relu, "swish": F.silu}
"""Expert activations: ReLU, or Swish (``x * sigmoid(x)``, Ramachandran et al., 2017), which HoME
(Wang et al., Kuaishou 2024) pairs with expert normalisation against dead and collapsed experts."""


class ExpertNorm(nn.Module):
    """Normalises each expert's output ``[E, B, D]`` so that no expert's scale dominates the mix
    (HoME, Wang et al., 2024: experts with larger outputs win the gates and the others starve).

    ``layer``: LayerNorm over ``D`` with a scale and shift per expert (no batch statistics, so a
    row's output never depends on its batch, and jagged groups work). ``batch``: BatchNorm per
    expert and unit over the batch, as HoME; running statistics serve evaluation and export."""

    def __init__(self, kind: str, num_experts: int, dim: int) -> None:
        super().__init__()
        if kind not in ("layer", "batch"):
            raise ValueError(f"expert norm {kind!r}: use 'layer' or 'batch'")
        self.kind, self.num_experts, self.dim = kind, num_experts, dim
        if kind == "layer":
            self.weight = nn.Parameter(torch.ones(num_experts, dim))
            self.bias = nn.Parameter(torch.zeros(num_experts, dim))
        else:
            self.bn = nn.BatchNorm1d(num_experts * dim)

    def forward(self, h: Tensor) -> Tensor:
        """``h: [E, B, D]`` -> the same shape."""
        if self.kind == "layer":
            return F.layer_norm(h, (self.dim,)) * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)
        e, b, d = h.shape
        return self.bn(h.transpose(0, 1).reshape(b, e * d)).view(b, e, d).transpose(0, 1)

    def forward_rows(self, h: Tensor, expert_of_row: Tensor) -> Tensor:
        """Rows of several experts ``[N, D]``, row ``i`` from expert ``expert_of_row[i]`` (layer norm only)."""
        if self.kind != "layer":
            raise ValueError("batch norm over experts needs every expert's whole batch; use layer norm with sparse dispatch")
        return F.layer_norm(h, (self.dim,)) * self.weight.index_select(0, expert_of_row) + self.bias.index_select(0, expert_of_row)

    def subset(self, keep: list[int]) -> ExpertNorm:
        """The same normalisation for the experts ``keep`` only (expert pruning)."""
        out = ExpertNorm(self.kind, len(keep), self.dim)
        with torch.no_grad():
            if self.kind == "layer":
                out.weight.copy_(self.weight[keep])
                out.bias.copy_(self.bias[keep])
            else:
                cols = torch.tensor([e * self.dim + j for e in keep for j in range(self.dim)])
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(out.bn, name).copy_(getattr(self.bn, name)[cols])
                out.bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        return out


class BatchedExperts(nn.Module):
    """``num_experts`` independent MLPs with the same shape, stored as stacked weights.

    Layer ``l`` holds ``weight[l]: [E, in, out]`` and ``bias[l]: [E, out]``. The first layer maps
    the shared input ``[B, in]`` to ``[E, B, out]`` with one GEMM against all experts' weights
    side by side; later layers use one ``baddbmm``. Each expert's slice is initialised independently (Kaiming-uniform, as
    ``nn.Linear``), so experts start different: identical initial experts receive identical
    gradients and never specialise.

    ``activation`` is ``relu`` or ``swish``; ``norm`` (``layer`` or ``batch``, see
    :class:`ExpertNorm`) normalises every expert's output before the gates mix them.

    Example::

        experts = BatchedExperts(num_experts=4, in_dim=128, hidden=[64])
        h = experts(x)            # x: [B, 128] -> h: [4, B, 64]
    """

    def __init__(
        self, num_experts: int, in_dim: int, hidden: Sequence[int], dropout: float = 0.0,
        activation: str = "relu", norm: str | None = None,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("BatchedExperts needs at least one hidden layer")
        if activation not in ACTIVATIONS:
            raise ValueError(f"expert activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.num_experts = num_experts
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        width = in_dim
        for h in hidden:
            self.weights.append(nn.Parameter(torch.empty(num_experts, width, h)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, h)))
            width = h
        self.out_dim = width
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.norm = ExpertNorm(norm, num_experts, width) if norm and norm != "none" else None
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
        h = self._act(h)
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            h = self._act(torch.baddbmm(b.unsqueeze(1), self.dropout(h), w))
        return self._finish(h)

    def _finish(self, h: Tensor) -> Tensor:
        return self.dropout(h if self.norm is None else self.norm(h))

    def forward_buffers(self, x: Tensor) -> Tensor:
        """Each expert on its own rows: ``x: [E, C, in]`` (row ``c`` of buffer ``e`` goes through
        expert ``e`` only) -> ``[E, C, out]``; one ``baddbmm`` per layer (sparse dispatch,
        :mod:`recsys_moe.modules.dispatch`)."""
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = self._act(torch.baddbmm(b.unsqueeze(1), self.dropout(h) if i else h, w))
        return self._finish(h)

    def forward_groups(self, x: Tensor, counts: Tensor) -> Tensor:
        """Each expert on its own rows, as jagged groups: ``x: [N, in]`` sorted by expert, the
        first ``counts[0]`` rows for expert 0 and so on -> ``[N, out]``; one
        ``torch.nn.functional.grouped_mm`` per layer, no padding (see :func:`grouped_mm_runs`)."""
        offs = counts.cumsum(0).to(torch.int32)
        expert_of_row = torch.repeat_interleave(torch.arange(self.num_experts, device=x.device), counts, output_size=x.shape[0])
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = self._act(F.grouped_mm(self.dropout(h) if i else h, w, offs=offs) + b.index_select(0, expert_of_row))
        if self.norm is not None:
            h = self.norm.forward_rows(h, expert_of_row)
        return self.dropout(h)

    def subset(self, keep: list[int]) -> BatchedExperts:
        """A copy holding only the experts ``keep``, in that order (expert pruning)."""
        out = copy.deepcopy(self)
        out.num_experts = len(keep)
        with torch.no_grad():
            for params in (out.weights, out.biases):
                for i, p in enumerate(params):
                    params[i] = nn.Parameter(p[keep].clone())
        if self.norm is not None:
            out.norm = self.norm.subset(keep)
        return out


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
