"""Sparse id features through a torchrec EmbeddingBagCollection, pooled per feature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType


@dataclass(frozen=True)
class TableDef:
    """One embedding table and the features that look it up (features may share a table)."""

    name: str
    dim: int
    num_embeddings: int
    feature_names: tuple[str, ...]
    pooling: str = "mean"  # "sum" or "mean"; torchrec pools per table


class SparseEmbedding(nn.Module):
    """``KeyedJaggedTensor`` (one key per feature, single ids have length 1) -> ``[B, sum(dims)]``.

    ``init_std`` re-initialises every table from ``N(0, init_std^2)``.
    Pooled embeddings are concatenated in ``feature_order``, which fixes the layout the dense
    layers see (and that an exported twin must reproduce). An empty list pools to zeros.
    """

    def __init__(
        self, tables: Sequence[TableDef], feature_order: Sequence[str], init_std: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        pooling = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
        self.tables = tuple(tables)
        self.init_std = init_std
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=t.name, embedding_dim=t.dim, num_embeddings=t.num_embeddings,
                    feature_names=list(t.feature_names), pooling=pooling[t.pooling],
                )
                for t in tables
            ],
            device=device,
        )
        if init_std is not None:
            # torchrec's default is uniform(+-1/sqrt(num_embeddings)): for big tables the initial
            # dot products are ~0 and factorised interactions start to learn very slowly.
            for bag in self.ebc.embedding_bags.values():
                nn.init.normal_(bag.weight, 0.0, init_std)
        dims = {f: t.dim for t in tables for f in t.feature_names}
        missing = [f for f in feature_order if f not in dims]
        if missing:
            raise ValueError(f"features {missing} are in feature_order but in no table")
        self.feature_order = tuple(feature_order)
        self.feature_dims = tuple(dims[f] for f in self.feature_order)
        self.out_dim = sum(self.feature_dims)

    def forward(self, sparse: KeyedJaggedTensor) -> Tensor:
        pooled = self.ebc(sparse).to_dict()
        return torch.cat([pooled[f] for f in self.feature_order], dim=1)

    def table_weights(self) -> dict[str, Tensor]:
        """Table name -> weight ``[num_embeddings, dim]`` (for export and diagnostics)."""
        return {name: bag.weight for name, bag in self.ebc.embedding_bags.items()}
