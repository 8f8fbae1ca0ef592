"""Pairwise dot products between pooled embeddings of the same width (DLRM's dot interaction,
Naumov et al., 2019). An MLP on concatenated embeddings learns a dot product poorly (Rendle et
al., RecSys 2020), while user x item and user-history x item affinities are exactly that."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class DotInteraction(nn.Module):
    """``[B, sum(dims)]`` (features concatenated in order) -> ``[B, P]`` dot products of every
    pair of features that share a width, group by group. Groups with one feature add nothing.

    Each group's features are stacked to ``[B, n, w]``; one batched matmul gives every dot product
    ``[B, n, n]`` and the pairs above the diagonal are read out with one gather, as in DLRM. (Two
    gathers of the pair members followed by a product and a sum move ``2 * pairs * w`` floats per
    row, which dominated ONNX Runtime's time.)"""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        starts = [0]
        for d in dims:
            starts.append(starts[-1] + d)
        self.groups: list[tuple[tuple[int, ...], int]] = []
        for width in sorted(set(dims), reverse=True):
            members = [i for i, d in enumerate(dims) if d == width]
            if len(members) < 2:
                continue
            n = len(members)
            rows, cols = torch.triu_indices(n, n, offset=1)
            self.register_buffer(f"pairs_{len(self.groups)}", rows * n + cols, persistent=False)
            select = torch.zeros(n * n, len(rows))
            select[rows * n + cols, torch.arange(len(rows))] = 1.0  # one 1 per column: exact
            self.register_buffer(f"select_{len(self.groups)}", select, persistent=False)
            self.groups.append((tuple(starts[i] for i in members), width))
        self.out_dim = sum(len(s) * (len(s) - 1) // 2 for s, _ in self.groups)

    def pair_macs(self) -> list[int]:
        """Multiply-adds per row of each group's dot products (all ``n * n``, as the matmul computes them)."""
        return [len(starts) * len(starts) * width for starts, width in self.groups]

    def forward(self, x: Tensor) -> Tensor:
        return self._dots([[x[:, s: s + width] for s in starts] for starts, width in self.groups], x)

    def forward_parts(self, parts: Sequence[Tensor]) -> Tensor:
        """The same dot products from the features as separate ``[B, d]`` tensors (in order), as
        the ONNX twin has them: no slicing back out of the concatenation.

        The pairs are read out with a matmul against a constant 0/1 matrix (one 1 per column, so
        the values are exact): ONNX Runtime's Gather along axis 1 copies element by element, so the
        matmul is faster there, while torch eager is faster with ``index_select``, which
        :meth:`forward` keeps (docs/design.md)."""
        index: dict[int, list[int]] = {}
        for i, p in enumerate(parts):
            index.setdefault(p.shape[1], []).append(i)
        return self._dots([[parts[i] for i in index[width]] for _, width in self.groups], parts[0], by_matmul=True)

    def _dots(self, members: list[list[Tensor]], like: Tensor, by_matmul: bool = False) -> Tensor:
        outs = []
        for g, group in enumerate(members):
            e = torch.stack(group, dim=1)  # [B, n, w]
            dots = torch.bmm(e, e.transpose(1, 2)).flatten(1)  # [B, n * n]
            if by_matmul:
                outs.append(dots @ getattr(self, f"select_{g}"))
            else:
                outs.append(dots.index_select(1, getattr(self, f"pairs_{g}")))
        return torch.cat(outs, dim=1) if outs else like.new_zeros(like.shape[0], 0)
