"""Apply a FeatureSpec: raw impressions -> model-ready Parquet, one split directory each.

Output columns are :class:`~recsys_moe.features.mapper.FeatureMapper`'s: the key columns of
:mod:`recsys_moe.contract`, one column per feature, then the labels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from recsys_moe import storage
from recsys_moe.atomic import write_parquet
from recsys_moe.config import SplitConfig
from recsys_moe.data.tables import RawTables
from recsys_moe.features.enrich import Replay, initial_state, joined_columns_only
from recsys_moe.features.entities import EntityAttributes
from recsys_moe.features.fit import FeatureError, check_sources
from recsys_moe.features.mapper import FeatureMapper
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import FeatureSpec

PARQUET_COMPRESSION = "lz4"
"""Codec of the model-ready part files: they are written once per run and read every epoch, and
lz4 encodes and decodes faster than zstd at a larger size; pass ``compression="zstd"`` to trade
speed for disk (docs/design.md has the measurement)."""


@dataclass
class TransformSummary:
    out_dir: storage.Location
    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def per_feature(self, spec: FeatureSpec) -> list[dict[str, object]]:
        rows = max(sum(self.rows_out.values()), 1)
        out = []
        for f in spec.features.features:
            values = self.counts.get(f"{f.name}:values", 0)
            out.append({
                "feature": f.name, "kind": f.kind,
                "null_rate": self.counts.get(f"{f.name}:null", 0) / rows,
                "oov_rate": (self.counts.get(f"{f.name}:oov", 0) / values) if values else None,
            })
        return out


def transform(
    raw: RawTables,
    spec: FeatureSpec,
    split: SplitConfig,
    out_dir: storage.Location,
    state: HistoryState | None = None,
    on_day: Callable[[str, int], None] | None = None,
    overwrite: bool = False,
    compression: str = PARQUET_COMPRESSION,
    chunk_rows: int | None = None,
) -> TransformSummary:
    """Replay the log once, writing ``out_dir/{train,validation,test}/part-*.parquet``.

    Rows outside the split windows only advance the point-in-time state. The final state is
    saved to ``out_dir/state`` so later jobs can continue the history; a ``state`` passed in is
    advanced in place (pass ``state.copy()`` to keep it). ``chunk_rows`` (default: the spec's)
    only changes memory and speed, never a value: pass the running config's. ``out_dir`` may be
    an object-store URI. A local output directory is built under a temporary name and renamed into
    place when complete; on an object store, ``MANIFEST.json`` is written last
    (:func:`~recsys_moe.storage.new_folder`).
    """
    check_sources(spec.features, raw)
    raw = joined_columns_only(raw, spec.features)
    out_dir = storage.location(out_dir)
    windows = split.windows()
    start = time.perf_counter()
    summary = TransformSummary(out_dir=out_dir, rows_out=dict.fromkeys(windows, 0))
    parts = dict.fromkeys(windows, 0)
    hist = spec.features.history
    # user and item attributes are mapped once per table row (EntityAttributes), so the replay
    # does not join them onto every impression
    replay = Replay(raw, state or initial_state(raw, hist.max_len, hist.long_watch_s), chunk_rows or spec.features.chunk_rows,
                    joins=False)
    mapper = FeatureMapper(spec)
    entities = EntityAttributes(mapper, raw.users, raw.items)
    with storage.new_folder(out_dir, overwrite) as tmp, ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        for name in windows:
            storage.makedirs(storage.join(tmp, name))
        last = max(w.end for w in windows.values())

        def write(mapped: tuple[pl.DataFrame, dict[str, int]], split_name: str, path: storage.Location) -> None:
            rows, counts = mapped
            try:
                write_parquet(rows, path, compression=compression)
            except OSError as exc:
                kept = "" if storage.is_remote(out_dir) else " (an old one is left as it was)"
                raise FeatureError(f"{out_dir} was not written{kept}: {exc}") from exc
            for k, v in counts.items():
                summary.counts[k] = summary.counts.get(k, 0) + v
            summary.rows_out[split_name] += rows.height

        # The replay is sequential (each chunk advances the history); writing a mapped chunk is
        # not, so it runs on a second thread while the next chunk is replayed and mapped (numpy and
        # Polars release the GIL). The mapping stays on this thread: on the writer's, that thread
        # became the slower of the two. At most one chunk is in flight, so memory holds one extra
        # chunk.
        pending: Future | None = None
        for day, chunk in replay.days(last_day=last):
            summary.rows_in += chunk.height
            split_name = next((n for n, w in windows.items() if w.start <= day <= w.end), None)
            if on_day:
                on_day(str(day), chunk.height)
            if split_name is None or not chunk.height:
                continue
            path = storage.join(tmp, split_name, f"part-{parts[split_name]:05d}.parquet")
            mapped = mapper.apply(chunk, entities)
            if pending is not None:
                pending.result()
            pending = writer.submit(write, mapped, split_name, path)
            parts[split_name] += 1
            del chunk  # else it stays alive while the next chunk is built
        if pending is not None:
            pending.result()
        empty = [n for n, c in summary.rows_out.items() if c == 0]
        if empty:
            raise FeatureError(f"split window(s) {empty} have no impressions in {raw.source} data; check split.* dates")
        replay.state.save(storage.join(tmp, "state"))
        summary.seconds = time.perf_counter() - start
        manifest = {
            "spec_hash": spec.content_hash,
            "features_hash": spec.features_hash,
            "rows_in": summary.rows_in,
            "rows_out": summary.rows_out,
            "parts": parts,
            "split": split.model_dump(mode="json"),
            "features": summary.per_feature(spec),
        }
        storage.write_text(storage.join(tmp, "MANIFEST.json"), json.dumps(manifest, indent=2))
    return summary
