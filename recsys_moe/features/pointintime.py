"""Point-in-time user history and counters, computed without leakage.

Every value for an impression at time ``t`` uses only impressions with a timestamp strictly
earlier than ``t`` (rows sharing a timestamp never see each other). The log is replayed in time
order, one chunk at a time, with a :class:`HistoryState` carried between chunks, so memory is
bounded by a chunk plus one row of state per user and item, not by the length of the log.

Columns added (all derived from earlier rows only):

- ``hist_click_items`` / ``hist_long_watch_items``: the user's last ``max_len`` clicked /
  long-watched item ids, most recent first (seeded from a prior history table when given);
- ``user_impressions``, ``user_clicks``, ``user_ctr``, ``user_watch_mean`` and the same for items
  (``*_ctr`` and ``*_watch_mean`` are null before the first impression).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

LIST_COLUMNS = ("hist_click_items", "hist_long_watch_items")
COUNTER_COLUMNS = tuple(
    f"{who}_{what}" for who in ("user", "item") for what in ("impressions", "clicks", "ctr", "watch_mean")
)
POINT_IN_TIME_COLUMNS = LIST_COLUMNS + COUNTER_COLUMNS
_COUNTS = ("imps", "clicks", "watch")


def before_sums(key: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row, the sum of ``values`` over rows with the same key and a strictly earlier ts.

    ``values`` is ``[n, m]``; the result has the same shape and the input's row order.
    """
    n = len(key)
    if n == 0:
        return np.zeros_like(values)
    order = np.lexsort((ts, key))
    k, t, v = key[order], ts[order], values[order]
    csum = np.cumsum(v, axis=0) - v
    idx = np.arange(n)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = k[1:] != k[:-1]
    new_run = new_group.copy()
    new_run[1:] |= t[1:] != t[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
    run_start = np.maximum.accumulate(np.where(new_run, idx, 0))
    out = np.empty_like(csum)
    out[order] = csum[run_start] - csum[group_start]
    return out


def recent_before(key: np.ndarray, ts: np.ndarray, is_event: np.ndarray, item: np.ndarray, n_max: int) -> pa.Array:
    """Per row: items of the same key's events with a strictly earlier ts, newest first, at most n_max."""
    n = len(key)
    count = before_sums(key, ts, is_event.astype(np.float64)[:, None])[:, 0].astype(np.int64)
    ev = np.flatnonzero(is_event)
    ev_sorted = ev[np.lexsort((ts[ev], key[ev]))]
    first_event = np.searchsorted(key[ev_sorted], key, side="left")
    lengths = np.minimum(count, n_max)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row = np.repeat(np.arange(n), lengths)
    j = np.arange(offsets[-1]) - offsets[:-1][row]
    values = item[ev_sorted[first_event[row] + count[row] - 1 - j]] if len(row) else np.zeros(0, np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int64()))


@dataclass
class HistoryState:
    """What the replay carries from one chunk to the next (and what scoring resumes from)."""

    max_len: int
    long_watch_s: float
    user_hist: pl.DataFrame  # user_id, hist_click_items, hist_long_watch_items (newest first)
    user_counts: pl.DataFrame  # user_id, imps, clicks, watch
    item_counts: pl.DataFrame  # item_id, imps, clicks, watch
    last_ts_ms: int | None = None

    @classmethod
    def empty(cls, max_len: int, long_watch_s: float, prior: pl.DataFrame | None = None) -> HistoryState:
        """A fresh state, seeded from ``prior`` (user_id, click_items, long_watch_items; oldest first)."""
        hist = pl.DataFrame(
            schema={"user_id": pl.Int64, "hist_click_items": pl.List(pl.Int64), "hist_long_watch_items": pl.List(pl.Int64)}
        )
        if prior is not None and prior.height:
            hist = prior.select(
                pl.col("user_id").cast(pl.Int64),
                pl.col("click_items").cast(pl.List(pl.Int64)).list.reverse().list.head(max_len).alias("hist_click_items"),
                pl.col("long_watch_items").cast(pl.List(pl.Int64)).list.reverse().list.head(max_len).alias("hist_long_watch_items"),
            )

        def counts(key: str) -> pl.DataFrame:
            return pl.DataFrame(schema={key: pl.Int64, "imps": pl.Int64, "clicks": pl.Int64, "watch": pl.Float64})

        return cls(max_len, long_watch_s, hist, counts("user_id"), counts("item_id"))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.user_hist.write_parquet(directory / "user_hist.parquet")
        self.user_counts.write_parquet(directory / "user_counts.parquet")
        self.item_counts.write_parquet(directory / "item_counts.parquet")
        meta = {"max_len": self.max_len, "long_watch_s": self.long_watch_s, "last_ts_ms": self.last_ts_ms}
        (directory / "state.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> HistoryState:
        meta = json.loads((directory / "state.json").read_text())
        return cls(
            meta["max_len"], meta["long_watch_s"],
            pl.read_parquet(directory / "user_hist.parquet"),
            pl.read_parquet(directory / "user_counts.parquet"),
            pl.read_parquet(directory / "item_counts.parquet"),
            meta["last_ts_ms"],
        )


def _upsert(state: pl.DataFrame, new: pl.DataFrame, key: str) -> pl.DataFrame:
    return pl.concat([state.filter(~pl.col(key).is_in(new[key].implode())), new.select(state.columns)])


def _add_counts(state: pl.DataFrame, chunk: pl.DataFrame, key: str) -> pl.DataFrame:
    delta = chunk.group_by(key).agg(
        imps=pl.len().cast(pl.Int64), clicks=pl.col("click").sum().cast(pl.Int64), watch=pl.col("watch_time_s").cast(pl.Float64).sum()
    )
    merged = delta.join(state, on=key, how="left", suffix="_old").select(
        key, *[(pl.col(c) + pl.col(f"{c}_old").fill_null(0)).alias(c) for c in _COUNTS]
    )
    return _upsert(state, merged, key)


def add_point_in_time(chunk: pl.DataFrame, state: HistoryState) -> tuple[pl.DataFrame, HistoryState]:
    """Add the point-in-time columns to ``chunk`` (any row order) and return the advanced state.

    Every row of ``chunk`` must be later than or equal to the state's last timestamp.
    """
    ts = chunk["timestamp"].dt.cast_time_unit("ms").cast(pl.Int64).to_numpy()
    if not len(ts):
        return chunk.with_columns(*[pl.lit(None).alias(c) for c in POINT_IN_TIME_COLUMNS]), state
    if state.last_ts_ms is not None and ts.min() < state.last_ts_ms:
        raise ValueError("impressions must be replayed in time order: chunk starts before the state's last timestamp")
    user = chunk["user_id"].to_numpy()
    item = chunk["item_id"].to_numpy()
    click = chunk["click"].to_numpy().astype(bool)
    watch = chunk["watch_time_s"].cast(pl.Float64).to_numpy()
    long_watch = watch >= state.long_watch_s

    # Lists: in-chunk earlier events first, then the carried history, cut to max_len.
    n = state.max_len
    inchunk = pl.DataFrame(
        {
            "_c": pl.Series(recent_before(user, ts, click, item, n)).cast(pl.List(pl.Int64)),
            "_l": pl.Series(recent_before(user, ts, long_watch, item, n)).cast(pl.List(pl.Int64)),
        }
    )
    prior = chunk.select("user_id").join(state.user_hist, on="user_id", how="left", maintain_order="left")
    empty = pl.lit([], dtype=pl.List(pl.Int64))
    lists = pl.concat([inchunk, prior.drop("user_id")], how="horizontal").select(
        pl.concat_list("_c", pl.col("hist_click_items").fill_null(empty)).list.head(n).alias("hist_click_items"),
        pl.concat_list("_l", pl.col("hist_long_watch_items").fill_null(empty)).list.head(n).alias("hist_long_watch_items"),
    )

    # Counters: carried totals plus in-chunk strictly-earlier sums.
    vals = np.stack([np.ones(len(ts)), click.astype(np.float64), watch], axis=1)
    counter_cols = []
    for who, key_arr, state_counts in (("user", user, state.user_counts), ("item", item, state.item_counts)):
        key = f"{who}_id"
        carried = chunk.select(key).join(state_counts, on=key, how="left", maintain_order="left").fill_null(0)
        before = before_sums(key_arr, ts, vals)
        imps = carried["imps"].to_numpy() + before[:, 0]
        clicks = carried["clicks"].to_numpy() + before[:, 1]
        wsum = carried["watch"].to_numpy() + before[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            ctr = np.where(imps > 0, clicks / np.maximum(imps, 1), np.nan)
            wmean = np.where(imps > 0, wsum / np.maximum(imps, 1), np.nan)
        counter_cols += [
            pl.Series(f"{who}_impressions", imps, dtype=pl.Float64),
            pl.Series(f"{who}_clicks", clicks, dtype=pl.Float64),
            pl.Series(f"{who}_ctr", ctr, dtype=pl.Float64).fill_nan(None),
            pl.Series(f"{who}_watch_mean", wmean, dtype=pl.Float64).fill_nan(None),
        ]
    out = pl.concat([chunk, lists], how="horizontal").with_columns(counter_cols)

    # Advance the state with every row of this chunk.
    events = chunk.select("user_id", "item_id", "timestamp", "click", "watch_time_s").with_columns(
        (pl.col("watch_time_s") >= state.long_watch_s).alias("_long")
    ).sort("timestamp", maintain_order=True).reverse()  # newest first; ties: later row first, as in recent_before
    new_lists = events.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").filter(pl.col("click") == 1).head(n).alias("_c"),
        pl.col("item_id").filter(pl.col("_long")).head(n).alias("_l"),
    ).join(state.user_hist, on="user_id", how="left").select(
        "user_id",
        pl.concat_list("_c", pl.col("hist_click_items").fill_null(empty)).list.head(n).alias("hist_click_items"),
        pl.concat_list("_l", pl.col("hist_long_watch_items").fill_null(empty)).list.head(n).alias("hist_long_watch_items"),
    )
    new_state = HistoryState(
        state.max_len, state.long_watch_s,
        _upsert(state.user_hist, new_lists, "user_id"),
        _add_counts(state.user_counts, chunk, "user_id"),
        _add_counts(state.item_counts, chunk, "item_id"),
        int(ts.max()),
    )
    return out, new_state


def point_in_time_from_state(chunk: pl.DataFrame, state: HistoryState) -> pl.DataFrame:
    """Add the point-in-time columns from ``state`` alone, for rows whose outcomes are unknown
    (candidates to score): nothing is learned from the rows themselves and the state is not
    advanced. Equals :func:`add_point_in_time` for rows that all share one timestamp."""
    empty = pl.lit([], dtype=pl.List(pl.Int64))
    lists = chunk.select(pl.col("user_id").cast(pl.Int64)).join(
        state.user_hist, on="user_id", how="left", maintain_order="left"
    ).select(
        pl.col("hist_click_items").fill_null(empty).list.head(state.max_len),
        pl.col("hist_long_watch_items").fill_null(empty).list.head(state.max_len),
    )
    counters = []
    for who, counts in (("user", state.user_counts), ("item", state.item_counts)):
        key = f"{who}_id"
        c = chunk.select(pl.col(key).cast(pl.Int64)).join(counts, on=key, how="left", maintain_order="left").fill_null(0)
        imps = c["imps"].cast(pl.Float64)
        counters += [
            imps.alias(f"{who}_impressions"),
            c["clicks"].cast(pl.Float64).alias(f"{who}_clicks"),
            pl.Series(f"{who}_ctr", (c["clicks"] / imps).to_numpy(), dtype=pl.Float64).fill_nan(None),
            pl.Series(f"{who}_watch_mean", (c["watch"] / imps).to_numpy(), dtype=pl.Float64).fill_nan(None),
        ]
    return pl.concat([chunk, lists], how="horizontal").with_columns(counters)
