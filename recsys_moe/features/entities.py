"""User and item attribute features, mapped once per table row and gathered per impression.

An attribute (a column of the users or items table: gender, category, tags, duration, ...) has
the same value on every impression of its user or item, so mapping it per impression, after a
join, repeats the same work hundreds of times. :class:`EntityAttributes` maps each table once
with the same :class:`~recsys_moe.features.mapper.FeatureMapper` code, plus one all-null row
that stands for a user or item missing from its table (what the left join gave), and a chunk of
impressions takes its rows by key. The summary counts (nulls, OOV values, values) are kept per
table row and weighted by how often each row is taken, so they equal those of mapping every
impression. Point-in-time features change from one impression to the next and are not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from recsys_moe.features.keyindex import KeyIndex
from recsys_moe.features.lookup import list_parts, numpy_of
from recsys_moe.features.spec import OOV_INDEX

if TYPE_CHECKING:
    from recsys_moe.features.mapper import FeatureMapper

ENTITY_KEYS = {"user": "user_id", "item": "item_id"}


def attribute_sources(table: pl.DataFrame, entity: str) -> set[str]:
    """The columns of a users or items table that features may read as attributes: all but the key."""
    return set(table.columns) - {ENTITY_KEYS[entity]}


class _Table:
    """One entity table's attribute features, mapped: ``columns`` has one row per table row plus
    the all-null row last; ``counts`` one value per row and summary key."""

    def __init__(self, mapper: FeatureMapper, table: pl.DataFrame, key: str, names: list[str]):
        self.key, self.names = key, names
        self.index = KeyIndex(table[key].cast(pl.Int64).to_numpy())
        frame = pl.concat([table, table.clear(1)])  # the last row: a key absent from the table
        self.columns, _ = mapper.features(frame, set(names))
        self.counts: dict[str, np.ndarray] = {}
        for f in mapper.spec.features.features:
            if f.name not in names:
                continue
            null = frame[f.source].is_null().to_numpy()
            self.counts[f"{f.name}:null"] = null.astype(np.int64)
            if f.kind == "numeric":
                continue
            mapped = self.columns[f.name]
            if f.kind == "id":
                self.counts[f"{f.name}:oov"] = ((mapped.to_numpy() == OOV_INDEX) & ~null).astype(np.int64)
                self.counts[f"{f.name}:values"] = (~null).astype(np.int64)
            else:
                lengths, flat = list_parts(mapped)
                row_of_value = np.repeat(np.arange(len(lengths)), lengths)
                self.counts[f"{f.name}:oov"] = np.bincount(row_of_value, weights=numpy_of(flat) == OOV_INDEX, minlength=len(lengths)).astype(np.int64)
                self.counts[f"{f.name}:values"] = lengths.astype(np.int64)

    def take(self, keys: pl.Series) -> tuple[pl.DataFrame, dict[str, int]]:
        rows = self.index.rows(keys.cast(pl.Int64).to_numpy())
        rows[rows < 0] = self.index.size  # not in the table: the all-null row
        times = np.bincount(rows, minlength=self.index.size + 1)
        return self.columns[rows], {k: int(v @ times) for k, v in self.counts.items()}


class EntityAttributes:
    """The features whose source is a users- or items-table column, for any chunk of impressions."""

    def __init__(self, mapper: FeatureMapper, users: pl.DataFrame, items: pl.DataFrame):
        self.tables: dict[str, _Table] = {}
        for entity, table in (("user", users), ("item", items)):
            sources = attribute_sources(table, entity)
            names = [f.name for f in mapper.spec.features.features if f.source in sources]
            if names:
                self.tables[entity] = _Table(mapper, table, ENTITY_KEYS[entity], names)
        self.features = {n for t in self.tables.values() for n in t.names}
        """The features mapped here (by name)."""

    def take(self, impressions: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
        """The attribute features' columns for ``impressions`` (rows in order), with their counts."""
        frames, counts = [], {}
        for table in self.tables.values():
            frame, c = table.take(impressions[table.key])
            frames.append(frame)
            counts.update(c)
        return pl.concat(frames, how="horizontal") if frames else pl.DataFrame(), counts
