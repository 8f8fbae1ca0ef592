"""Raw candidate rows -> the ONNX twin's inputs, with user and item features mapped once per job.

When scoring, the history state is frozen (:func:`~recsys_moe.features.enrich.enrich_candidates`
reads it and learns nothing from the candidates), so every feature of a user (its attributes,
history lists and counters) is the same on each of its rows, and likewise for items. Mapping them
per row, as the training transform must, repeats that work once per impression. Here the same
code (``enrich_candidates`` and :class:`~recsys_moe.features.mapper.FeatureMapper`) runs once
over every known user and item, plus one row for an unknown one, and a batch only gathers those
rows; features of the row itself (the ``user_id``/``item_id`` features, whose hash buckets depend
on the raw id, surface, hour, ...) are mapped per batch. The result equals
``onnx_inputs(FeatureMapper(spec).features(enrich_candidates(rows, ...)))`` exactly (tested).

Set-up costs time and memory in proportion to the users and items known to the users/items tables
and the state (one padded row of ``max_len`` ids per list feature), not to the input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from recsys_moe.data.tables import RawTables
from recsys_moe.features.enrich import CategoryOf, enrich_candidates, with_derived
from recsys_moe.features.entities import ENTITY_KEYS, attribute_sources
from recsys_moe.features.keyindex import KeyIndex
from recsys_moe.features.lookup import numpy_of
from recsys_moe.features.mapper import FeatureMapper
from recsys_moe.features.pointintime import COUNTER_COLUMNS, LIST_COLUMNS, HistoryState
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.serving.inputs import padded_ids

ENTITIES = tuple(ENTITY_KEYS)


@dataclasses.dataclass
class _Arrays:
    """One row per entity (or per candidate): each feature in the twin's input form."""

    ids: dict[str, np.ndarray]
    lists: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]


def dense_owners(spec: FeatureSpec) -> dict[str, str]:
    """Each dense input column -> the numeric feature it comes from (a value or its missing flag)."""
    return {c: f.name for f in spec.features.features if f.kind == "numeric"
            for c in (f.name, f"{f.name}__missing") if c in spec.dense_columns}


def _arrays(frame: pl.DataFrame, spec: FeatureSpec, names: set[str], owners: dict[str, str]) -> _Arrays:
    ids = {f: numpy_of(frame[f].to_arrow()).astype(np.int64, copy=False) for f in spec.id_features if f in names}
    lists = {f: padded_ids(frame[f].to_arrow(), spec.feature(f).max_len) for f in spec.list_features if f in names}
    dense = {c: frame[c].to_numpy().astype(np.float32, copy=False) for c, f in owners.items() if f in names}
    return _Arrays(ids, lists, dense)


class CandidateInputs:
    """``inputs(rows)``: ONNX inputs for raw candidate rows (``user_id``, ``item_id``, ``timestamp``
    and the row features' sources), reading history from ``state``, which is left unchanged."""

    def __init__(self, spec: FeatureSpec, raw: RawTables, state: HistoryState, mapper: FeatureMapper | None = None):
        self.spec = spec
        self.mapper = mapper or FeatureMapper(spec)
        self.dense_owner = dense_owners(spec)
        pit = {"user": {*LIST_COLUMNS, "hist_click_categories", *(c for c in COUNTER_COLUMNS if c.startswith("user_"))},
               "item": {c for c in COUNTER_COLUMNS if c.startswith("item_")}}
        sources = {"user": attribute_sources(raw.users, "user") | pit["user"],
                   "item": attribute_sources(raw.items, "item") | pit["item"]}
        self.scope: dict[str, str] = {}
        for f in spec.features.features:
            self.scope[f.name] = next((e for e in ENTITIES if f.source in sources[e]), "row")
        # join keys as Int64 on both sides, so an unknown key can be made up without overflow
        raw = dataclasses.replace(raw, users=raw.users.with_columns(pl.col("user_id").cast(pl.Int64)),
                                  items=raw.items.with_columns(pl.col("item_id").cast(pl.Int64)))
        category = CategoryOf(raw.items) if "category" in raw.items.columns else None
        known = {"user": (raw.users["user_id"].to_numpy(), state.users.keys()),
                 "item": (raw.items["item_id"].to_numpy(), state.items.keys())}
        self.index: dict[str, KeyIndex] = {}
        self.unknown_row: dict[str, int] = {}
        self.arrays: dict[str, _Arrays] = {}
        for entity in ENTITIES:
            keys = np.unique(np.concatenate(known[entity]).astype(np.int64))
            absent = int(keys.max()) + 1 if len(keys) else 0  # a key no table or state holds
            self.index[entity] = KeyIndex(keys)
            self.unknown_row[entity] = len(keys)
            other = "item" if entity == "user" else "user"
            frame = pl.DataFrame({
                f"{entity}_id": np.append(keys, absent),
                f"{other}_id": np.full(len(keys) + 1, -1, np.int64),  # joins nothing: its features are not read
                "timestamp": pl.Series(np.zeros(len(keys) + 1, "datetime64[ms]")),
            })
            names = {n for n, s in self.scope.items() if s == entity}
            feats = self.mapper.features(enrich_candidates(frame, raw, state, category), names)[0] if names else pl.DataFrame()
            self.arrays[entity] = _arrays(feats, spec, names, self.dense_owner)
        self.row_features = {n for n, s in self.scope.items() if s == "row"}

    def _rows(self, entity: str, keys: pl.Series) -> np.ndarray:
        rows = self.index[entity].rows(keys.cast(pl.Int64).to_numpy())
        rows[rows < 0] = self.unknown_row[entity]
        return rows

    def inputs(self, rows: pl.DataFrame) -> dict[str, np.ndarray]:
        """The twin's inputs (``ids``, ``list_<name>``, ``dense``) for ``rows``, in their order."""
        at = {"user": self._rows("user", rows["user_id"]), "item": self._rows("item", rows["item_id"])}
        own = self.mapper.features(with_derived(rows), self.row_features)[0]
        arrays = {**{e: self.arrays[e] for e in ENTITIES}, "row": _arrays(own, self.spec, self.row_features, self.dense_owner)}

        def column(kind: str, name: str, feature: str) -> np.ndarray:
            scope = self.scope[feature]
            values = getattr(arrays[scope], kind)[name]
            return values if scope == "row" else values.take(at[scope], axis=0)

        n = rows.height
        ids = np.empty((n, len(self.spec.id_features)), np.int64)
        for j, f in enumerate(self.spec.id_features):
            ids[:, j] = column("ids", f, f)
        out = {"ids": ids}
        for f in self.spec.list_features:
            out[f"list_{f}"] = column("lists", f, f)
        dense = np.empty((n, len(self.spec.dense_columns)), np.float32)
        for j, c in enumerate(self.spec.dense_columns):
            dense[:, j] = column("dense", c, self.dense_owner[c])
        out["dense"] = dense
        return out
