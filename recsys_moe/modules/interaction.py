"""Pairwise dot products between pooled embeddings of the same width (DLRM's dot interaction,
Naumov et al., 2019). An MLP on concatenated embeddings learns a dot product poorly (Rendle et
al., RecSys 2020), while user x item and user-history x item affinities are exactly that."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class DotInteraction(nn.Module):
    """``[B, sum(dims)]`` (features concatenated in order) -> ``[B, P]`` dot products of every
    pair of features that share a width, group by group. Groups with one feature add nothing."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        starts = [0]
        for d in dims:
            starts.append(starts[-1] + d)
        self.groups: list[tuple[int, int]] = []
        for width in sorted(set(dims), reverse=True):
            members = [i for i, d in enumerate(dims) if d == width]
            if len(members) < 2:
                continue
            rows, cols = torch.triu_indices(len(members), len(members), offset=1)
            g = len(self.groups)
            # Column positions of the left and right member of every pair, flattened [P * width].
            left = torch.tensor([starts[members[r]] + j for r in rows.tolist() for j in range(width)])
            right = torch.tensor([starts[members[c]] + j for c in cols.tolist() for j in range(width)])
            self.register_buffer(f"left_{g}", left, persistent=False)
            self.register_buffer(f"right_{g}", right, persistent=False)
            self.groups.append((len(rows), width))
        self.out_dim = sum(p for p, _ in self.groups)

    def forward(self, x: Tensor) -> Tensor:
        # Gather both sides of every pair and reduce: elementwise work only (Gather, Mul,
        # ReduceSum in ONNX), which beats B tiny batched matmuls on a CPU.
        outs = []
        for g, (pairs, width) in enumerate(self.groups):
            a = x.index_select(1, getattr(self, f"left_{g}"))
            b = x.index_select(1, getattr(self, f"right_{g}"))
            outs.append((a * b).view(-1, pairs, width).sum(-1))
        return torch.cat(outs, dim=1) if outs else x.new_zeros(x.shape[0], 0)
