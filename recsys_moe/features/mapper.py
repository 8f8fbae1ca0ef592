"""A FeatureSpec compiled once: enriched rows -> model-input columns, shared by every job.

The feature transform (training data), the scoring runtime and the per-entity attribute tables
all map features through :class:`FeatureMapper`, so no feature logic is written twice. Output
columns follow :mod:`recsys_moe.contract`: the key columns, one column per feature (Int64 index
for ids, List[Int64] for lists, Float32 for numerics, plus ``<name>__missing`` when asked), then
the labels as Float32.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import polars as pl

from recsys_moe import contract
from recsys_moe.config import FeatureDef
from recsys_moe.features.fit import numeric_pre_standardize
from recsys_moe.features.lookup import IdLookup
from recsys_moe.features.spec import FeatureSpec

if TYPE_CHECKING:
    from recsys_moe.features.entities import EntityAttributes


class FeatureMapper:
    """A FeatureSpec compiled once: enriched rows -> model inputs, shared by every job.

    Ids and id lists go through numpy lookups (:mod:`recsys_moe.features.lookup`), numeric
    features through Polars expressions. Output columns keep the config's order (each numeric
    feature followed by its missing indicator) and the input's row order.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.lookups = {name: IdLookup(t) for name, t in spec.tables.items()}
        self._numeric = {f.name: _numeric_exprs(f, spec.numeric_stats[f.name]) for f in spec.features.features if f.kind == "numeric"}

    def features(self, enriched: pl.DataFrame, names: Collection[str] | None = None) -> tuple[pl.DataFrame, dict[str, int]]:
        """The model-input columns (of the features ``names`` only, when given), with per-feature
        counts (``<name>:null``, ``:oov``, ``:values``). Every feature maps each row on its own, so
        mapping a subset of rows or features gives the same values as mapping all of them."""
        wanted = [f for f in self.spec.features.features if names is None or f.name in names]
        numeric = enriched.select([e for f in wanted if f.kind == "numeric" for e in self._numeric[f.name]])
        cols: list[pl.Series] = []
        counts: dict[str, int] = {}
        for f in wanted:
            src = enriched[f.source]
            counts[f"{f.name}:null"] = src.null_count()
            if f.kind == "numeric":
                cols.extend(numeric[e.meta.output_name()] for e in self._numeric[f.name])
                continue
            lookup = self.lookups[f.table_name]
            m = lookup.map_ids(src, f.name) if f.kind == "id" else lookup.map_lists(src, f.name, f.max_len)
            cols.append(m.series)
            counts[f"{f.name}:oov"], counts[f"{f.name}:values"] = m.oov, m.values
        return pl.DataFrame(cols), counts

    @property
    def feature_columns(self) -> list[str]:
        """The columns :meth:`features` returns, in order."""
        cols = []
        for f in self.spec.features.features:
            cols.append(f.name)
            if f.kind == "numeric" and f.missing_indicator:
                cols.append(f"{f.name}__missing")
        return cols

    def apply(self, enriched: pl.DataFrame, entities: EntityAttributes | None = None) -> tuple[pl.DataFrame, dict[str, int]]:
        """Model-ready rows (ids, features, labels) from enriched rows, with per-feature counts.

        With ``entities``, the user and item attribute features are taken from their tables'
        mapped rows (``enriched`` then needs no users/items columns): the same values and counts."""
        if entities is None:
            feats, counts = self.features(enriched)
        else:
            own, counts = self.features(enriched, {f.name for f in self.spec.features.features} - entities.features)
            taken, taken_counts = entities.take(enriched)
            counts.update(taken_counts)
            feats = pl.concat([own, taken], how="horizontal").select(self.feature_columns)
        meta = enriched.select(
            contract.IMPRESSION_ID,
            contract.TIMESTAMP,
            pl.col("user_id").alias(contract.RAW_USER_ID),
            pl.col("item_id").alias(contract.RAW_ITEM_ID),
        )
        labels = enriched.select(pl.col(c).cast(pl.Float32) for c in contract.LABEL_COLUMNS)
        return pl.concat([meta, feats, labels], how="horizontal"), counts


def _numeric_exprs(f: FeatureDef, stats: dict[str, float]) -> list[pl.Expr]:
    x = numeric_pre_standardize(f)
    if "standardize" in f.transform:
        x = (x - stats["mean"]) / stats["std"]
    out = [x.fill_null(f.default).cast(pl.Float32).alias(f.name)]
    if f.missing_indicator:
        out.append(numeric_pre_standardize(f).is_null().cast(pl.Float32).alias(f"{f.name}__missing"))
    return out


def apply_spec(enriched: pl.DataFrame, spec: FeatureSpec) -> tuple[pl.DataFrame, dict[str, int]]:
    """Model-ready rows from enriched rows (row order kept), with per-feature counts; for repeated
    calls build one :class:`FeatureMapper` instead."""
    return FeatureMapper(spec).apply(enriched)
