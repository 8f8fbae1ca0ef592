"""The feature transform on Ray (``recsys-moe features transform --engine ray``).

The local transform replays the whole log in one process. Its point-in-time features split
cleanly by key: a user's history lists and counters depend only on that user's earlier
impressions, an item's counters only on that item's. So the replay runs as Ray tasks:

1. **user partitions** (``partitions`` tasks): task ``p`` replays, day by day, the impressions
   whose user hashes to ``p`` (and that slice of the prior history), keeping the user-side columns
   (history lists and their categories, user counters) per ``impression_id``;
2. **item partitions**: the same by item, keeping the item counters;
3. **days** (``partitions`` tasks, each a run of consecutive days in a split window): each day's
   impressions in the local replay's order, joined with both sides on ``impression_id``, mapped by the same
   :class:`~recsys_moe.features.mapper.FeatureMapper` and written as that split's parts.

The final history state is the user partitions' users and the item partitions' items, saved as
the local job saves its own (sorted by id), so scoring reads either. The output equals the local
transform's row for row (the tests check every split and the state); only float sums of watch
time may differ in the last bits, since they are added in another order.

Each partition task reads the whole log and keeps its share (a filter pushed into the Parquet
scan): simple, and the reads run in parallel; the side columns go to a scratch folder beside the
output, which every node must see (object store or shared file system), as must the raw log.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from recsys_moe import storage
from recsys_moe.atomic import write_parquet
from recsys_moe.config import Config
from recsys_moe.data.raw import load_raw
from recsys_moe.data.schema import check_unique_ids
from recsys_moe.data.tables import RawTables
from recsys_moe.features.enrich import (
    Replay,
    day_bounds,
    days_in_log,
    initial_state,
    joined_columns_only,
    slice_bounds,
    with_derived,
)
from recsys_moe.features.entities import EntityAttributes
from recsys_moe.features.fit import FeatureError, check_sources
from recsys_moe.features.mapper import FeatureMapper
from recsys_moe.features.pointintime import COUNTER_COLUMNS, LIST_COLUMNS, save_state_frames
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.features.transform import PARQUET_COMPRESSION, TransformSummary
from recsys_moe.ray_cluster import connect

SIDES = {
    "user": ("user_id", [*LIST_COLUMNS, "hist_click_categories", *[c for c in COUNTER_COLUMNS if c.startswith("user_")]]),
    "item": ("item_id", [c for c in COUNTER_COLUMNS if c.startswith("item_")]),
}
SCRATCH = "_sides"


def _mine(key: str, partition: int, partitions: int) -> pl.Expr:
    # polars' hash is stable within one job (every task runs the same polars), which is all a
    # partition needs: nothing partitioned is kept after the job
    return (pl.col(key).cast(pl.Int64).hash(seed=17) % partitions) == partition


def _raw(cfg: Config, spec: FeatureSpec) -> RawTables:
    return joined_columns_only(load_raw(cfg.data, validate=False), spec.features)


def replay_side(cfg: Config, spec: FeatureSpec, side: str, partition: int, partitions: int, last_day: dt.date,
                scratch: str, chunk_rows: int) -> dict[str, Any]:
    """Ray task: replay one key partition, write its side columns per day, return its state."""
    key, columns = SIDES[side]
    raw = _raw(cfg, spec)
    mine = _mine(key, partition, partitions)
    history = raw.history.filter(mine) if side == "user" and raw.history is not None else None
    part = RawTables(impressions=raw.impressions.filter(mine), users=raw.users, items=raw.items, source=raw.source,
                     history=history, files=raw.files)
    hist = spec.features.history
    replay = Replay(part, initial_state(part, hist.max_len, hist.long_watch_s), chunk_rows, joins=False)
    current: dt.date | None = None
    frames: list[pl.DataFrame] = []

    def flush() -> None:  # one day's columns at a time: memory follows a day, not the log
        if frames:
            storage.write_parquet(pl.concat(frames), storage.join(scratch, side, f"day={current}", f"part-{partition:05d}.parquet"))
            frames.clear()

    for day, chunk in replay.days(last_day=last_day):
        if day != current:
            flush()
            current = day
        frames.append(chunk.select("impression_id", *[c for c in columns if c in chunk.columns]))
    flush()
    state = replay.state
    tables = {"user_hist": state.user_hist, "user_counts": state.counts_frame("user")} if side == "user" else \
        {"item_counts": state.counts_frame("item")}
    return {"frames": tables, "last_ts_ms": state.last_ts_ms}


def map_days(cfg: Config, spec: FeatureSpec, days: list[tuple[dt.date, str, int]], scratch: str, out_dir: str,
             chunk_rows: int, compression: str) -> list[dict[str, Any]]:
    """Ray task: for each ``(day, split, day index)``, the day's model-ready rows in the local
    replay's order, joined with both sides' columns and written as that split's parts."""
    raw = _raw(cfg, spec)
    dtype = raw.impressions.collect_schema()["timestamp"]
    mapper = FeatureMapper(spec)
    entities = EntityAttributes(mapper, raw.users, raw.items)
    results = []
    for day, split_name, day_index in days:
        lo, hi = day_bounds(dtype, day)
        rows = raw.impressions.filter((pl.col("timestamp") >= lo) & (pl.col("timestamp") < hi)).collect()
        check_unique_ids(rows, f"{raw.files.get('impressions', 'impressions')} ({day})")
        if not rows["timestamp"].is_sorted():
            rows = rows.sort("timestamp", maintain_order=True)
        for side in SIDES:
            cols = pl.read_parquet(str(storage.join(scratch, side, f"day={day}", "*.parquet")))
            rows = rows.join(cols, on="impression_id", how="left", maintain_order="left")
        rows = with_derived(rows)
        ts = rows["timestamp"].dt.cast_time_unit("ms").cast(pl.Int64).to_numpy()
        counts: dict[str, int] = {}
        written = 0
        for k, (a, b) in enumerate(slice_bounds(ts, chunk_rows)):
            mapped, chunk_counts = mapper.apply(rows[a:b], entities)
            write_parquet(mapped, storage.join(out_dir, split_name, f"part-{day_index:05d}-{k:04d}.parquet"), compression=compression)
            written += mapped.height
            for c, v in chunk_counts.items():
                counts[c] = counts.get(c, 0) + v
        results.append({"day": str(day), "split": split_name, "rows": written, "counts": counts})
    return results


def day_groups(days: list[tuple[dt.date, str, int]], groups: int) -> list[list[tuple[dt.date, str, int]]]:
    """``days`` cut into at most ``groups`` runs of consecutive days (one task each: a task reads
    the users and items once for its run)."""
    size = -(-len(days) // max(groups, 1))
    return [days[i:i + size] for i in range(0, len(days), size)]


def transform_on_ray(
    cfg: Config, spec: FeatureSpec, out_dir: storage.Location, partitions: int, address: str | None = None,
    num_cpus: float = 1.0, overwrite: bool = False, chunk_rows: int | None = None,
    compression: str = PARQUET_COMPRESSION, on_day: Callable[[str, int], None] | None = None,
) -> TransformSummary:
    """:func:`~recsys_moe.features.transform.transform` as Ray tasks (module docstring): the same
    folder, splits, state and manifest."""
    try:
        import ray
    except ImportError as exc:
        raise FeatureError("the Ray engine needs Ray: pip install 'recsys-moe[ray]'") from exc
    raw = load_raw(cfg.data, validate=False)
    check_sources(spec.features, raw)
    out_dir = storage.location(out_dir)
    windows = cfg.split.windows()
    last = max(w.end for w in windows.values())
    days = [d for d in days_in_log(raw) if d <= last]
    chunk = chunk_rows or spec.features.chunk_rows
    start = time.perf_counter()
    summary = TransformSummary(out_dir=out_dir, rows_out=dict.fromkeys(windows, 0))
    started = connect(address)
    try:
        with storage.new_folder(out_dir, overwrite) as tmp:
            scratch = storage.join(tmp, SCRATCH)
            for name in windows:
                storage.makedirs(storage.join(tmp, name))
            task = ray.remote(num_cpus=num_cpus)(replay_side)
            sides = {side: [task.remote(cfg, spec, side, p, partitions, last, str(scratch), chunk) for p in range(partitions)]
                     for side in SIDES}
            states = {side: ray.get(refs) for side, refs in sides.items()}
            mapper_task = ray.remote(num_cpus=num_cpus)(map_days)
            in_window = []
            for i, day in enumerate(days):
                split_name = next((n for n, w in windows.items() if w.start <= day <= w.end), None)
                if split_name is not None:
                    in_window.append((day, split_name, i))
                elif on_day:  # replayed for the history only
                    on_day(str(day), 0)
            refs = [mapper_task.remote(cfg, spec, group, str(scratch), str(tmp), chunk, compression)
                    for group in day_groups(in_window, partitions)]
            for result in (r for group in ray.get(refs) for r in group):
                summary.rows_out[result["split"]] += result["rows"]
                for k, v in result["counts"].items():
                    summary.counts[k] = summary.counts.get(k, 0) + v
                if on_day:
                    on_day(result["day"], result["rows"])
            summary.rows_in = raw.impressions.filter(pl.col("timestamp").dt.date() <= last).select(pl.len()).collect().item()
            empty = [n for n, c in summary.rows_out.items() if c == 0]
            if empty:
                raise FeatureError(f"split window(s) {empty} have no impressions in {raw.source} data; check split.* dates")
            user, item = states["user"], states["item"]
            hist = spec.features.history
            stamps = [s["last_ts_ms"] for s in user if s["last_ts_ms"] is not None]
            save_state_frames(
                storage.join(tmp, "state"), hist.max_len, hist.long_watch_s, max(stamps) if stamps else None,
                pl.concat([s["frames"]["user_hist"] for s in user]).sort("user_id"),
                pl.concat([s["frames"]["user_counts"] for s in user]).sort("user_id"),
                pl.concat([s["frames"]["item_counts"] for s in item]).sort("item_id"),
            )
            storage.remove(scratch)
            summary.seconds = time.perf_counter() - start
            manifest = {
                "spec_hash": spec.content_hash, "features_hash": spec.features_hash, "rows_in": summary.rows_in,
                "rows_out": summary.rows_out, "parts": {n: len(storage.files_below(storage.join(tmp, n))) for n in windows},
                "split": cfg.split.model_dump(mode="json"), "features": summary.per_feature(spec),
                "engine": f"ray ({partitions} partitions)",
            }
            storage.write_text(storage.join(tmp, "MANIFEST.json"), json.dumps(manifest, indent=2))
    finally:
        if started:
            ray.shutdown()
    return summary
