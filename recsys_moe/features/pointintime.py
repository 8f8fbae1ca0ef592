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

How: a chunk is sorted once by (user, time) and once by (item, time). In that order each key's
rows are contiguous, so "sum over the same key's strictly earlier rows" is a difference of two
prefix sums (at the row's first tie and at the key's first row), and a row's recent events are a
slice of the chunk's events. The carried history lives in numpy arrays (one padded row of
``max_len`` ids per user), so a chunk costs time in proportion to its rows, not to the state.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from recsys_moe import storage
from recsys_moe.features.keyindex import KeyIndex
from recsys_moe.features.lookup import head_positions, list_parts, list_series, numpy_of

LIST_COLUMNS = ("hist_click_items", "hist_long_watch_items")
COUNTER_COLUMNS = tuple(
    f"{who}_{what}" for who in ("user", "item") for what in ("impressions", "clicks", "ctr", "watch_mean")
)
POINT_IN_TIME_COLUMNS = LIST_COLUMNS + COUNTER_COLUMNS
STATE_FILE = "state.json"


def stable_order(key: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order sorted by (key, ts), ties in row order.

    When ``ts`` is already sorted (the replay's slices are) and the keys are dense row numbers
    below 2**32, a stable sort by key alone is enough, done as radix passes over 16-bit digits
    (numpy radix-sorts 16-bit integers, much faster than a two-key sort)."""
    if len(key) and (ts[1:] >= ts[:-1]).all() and key.min() >= 0 and key.max() < 2**32:
        order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
        if key.max() >= 2**16:
            order = order[np.argsort((key[order] >> 16).astype(np.uint16), kind="stable")]
        return order
    return np.lexsort((ts, key))


class SortedRuns:
    """One chunk's rows sorted by (key, time), with each row's key group and tie run located."""

    def __init__(self, key: np.ndarray, ts: np.ndarray):
        n = len(key)
        self.n = n
        self.order = stable_order(key, ts)
        k, t = key[self.order], ts[self.order]
        new_group = np.ones(n, dtype=bool)
        np.not_equal(k[1:], k[:-1], out=new_group[1:])
        new_run = new_group.copy()
        new_run[1:] |= t[1:] != t[:-1]
        idx = np.arange(n)
        # sorted positions of each sorted row's first same-key row and first same-(key, time) row
        self.group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
        self.run_start = np.maximum.accumulate(np.where(new_run, idx, 0))
        self.group = np.cumsum(new_group) - 1  # per sorted row: its key's number, 0..keys-1
        self.firsts = np.flatnonzero(new_group)  # sorted position of each key's first row
        self.ends = np.append(self.firsts[1:], n)  # ... and one past its last

    def prefix(self, values: np.ndarray) -> np.ndarray:
        """Exclusive prefix sums of ``values`` (original row order) in sorted order, length n+1."""
        out = np.zeros(self.n + 1, dtype=np.float64 if values.dtype.kind == "f" else np.int64)
        np.cumsum(values[self.order], out=out[1:])
        return out

    def to_rows(self, sorted_values: np.ndarray) -> np.ndarray:
        """Values given in sorted order, back in the chunk's row order."""
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out

    def before(self, prefix: np.ndarray) -> np.ndarray:
        """Per row (original order): the sum over the same key's strictly earlier rows."""
        return self.to_rows(prefix[self.run_start] - prefix[self.group_start])


def before_sums(key: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row, the sum of ``values`` over rows with the same key and a strictly earlier ts.

    ``values`` is ``[n, m]``; the result has the same shape and the input's row order.
    """
    runs = SortedRuns(key, ts)
    return np.stack([runs.before(runs.prefix(values[:, j])) for j in range(values.shape[1])], axis=1)


def take_lists(seq: np.ndarray, top: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Flat values of the lists ``seq[top], seq[top - 1], ...`` (``length`` values each).

    Value ``e`` of the output belongs to row ``r`` starting at offset ``o_r``, so it is
    ``seq[top_r + o_r - e]``: one repeat and one gather, with no per-row loop."""
    ends = np.cumsum(length)
    idx = np.repeat(top + ends - length, length)
    np.subtract(idx, np.arange(len(idx)), out=idx)
    return seq.take(idx)


def recent_lists(
    runs: SortedRuns, is_event: np.ndarray, item: np.ndarray, n_max: int,
    carried: _Lists | None = None, group_rows: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each row's items of its key's strictly earlier events, newest first, after the key's
    carried list (rows ``group_rows`` of ``carried``, one per key in sorted key order).

    Every key's events are laid out oldest to newest in one flat sequence (carried ones first,
    then the chunk's), so a row's list is the ``n_max`` values ending just before its first tie.
    Returns ((lengths, flat values) per row in the chunk's order, (sequence, last position,
    length) per key: the key's list after the whole chunk)."""
    ev = runs.prefix(is_event.astype(np.int64))
    new_events = ev[runs.ends] - ev[runs.firsts]
    have = carried.length[group_rows] if carried is not None else np.zeros(len(runs.firsts), np.int64)
    seq_len = have + new_events
    base = np.zeros(len(seq_len), np.int64)
    np.cumsum(seq_len[:-1], out=base[1:])
    seq = np.empty(int(seq_len.sum()), np.int64)
    sorted_event = is_event[runs.order]
    event_group = runs.group[sorted_event]
    seq[np.arange(len(event_group)) + (base + have - ev[runs.firsts])[event_group]] = item[runs.order][sorted_event]
    if carried is not None and have.any():
        i = np.arange(n_max)[None, :]
        inside = i < have[:, None]
        oldest_first = np.take_along_axis(carried.items[group_rows], np.maximum(have[:, None] - 1 - i, 0), axis=1)
        seq[(base[:, None] + i)[inside]] = oldest_first[inside]
    before = have[runs.group] + ev[runs.run_start] - ev[runs.group_start]
    length = runs.to_rows(np.minimum(before, n_max))
    rows = (length, take_lists(seq, runs.to_rows(base[runs.group] + before - 1), length))
    return rows, (seq, base + seq_len - 1, np.minimum(seq_len, n_max))


def recent_before(key: np.ndarray, ts: np.ndarray, is_event: np.ndarray, item: np.ndarray, n_max: int) -> pa.Array:
    """Per row: items of the same key's events with a strictly earlier ts, newest first, at most n_max."""
    (lengths, values), _ = recent_lists(SortedRuns(key, ts), is_event, item, n_max)
    return list_series("", lengths, values).to_arrow()


@dataclass
class _Lists:
    """Per user row: up to ``max_len`` item ids, newest first (a padded matrix plus lengths)."""

    items: np.ndarray
    length: np.ndarray

    @classmethod
    def empty(cls, max_len: int) -> _Lists:
        return cls(np.zeros((0, max_len), np.int64), np.zeros(0, np.int64))

    def grow(self, rows: int) -> None:
        if rows > len(self.length):
            cap = max(rows, 2 * len(self.length), 1024)
            items = np.zeros((cap, self.items.shape[1]), np.int64)
            items[: len(self.length)] = self.items
            length = np.zeros(cap, np.int64)
            length[: len(self.length)] = self.length
            self.items, self.length = items, length

    def set(self, rows: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        """Replace the lists of ``rows`` with the flat ``values`` cut by ``lengths``."""
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        r = np.repeat(np.arange(len(lengths)), lengths)
        self.items[rows[r], np.arange(len(values)) - offsets[:-1][r]] = values
        self.length[rows] = lengths

    def set_newest(self, rows: np.ndarray, seq: np.ndarray, top: np.ndarray, length: np.ndarray) -> None:
        """Make each of ``rows`` the list ``seq[top], seq[top - 1], ...`` of ``length`` ids."""
        if len(seq):
            self.items[rows] = seq.take(np.maximum(top[:, None] - np.arange(self.items.shape[1])[None, :], 0))
        self.length[rows] = length

    def column(self, name: str, rows: np.ndarray) -> pl.Series:
        """The lists of ``rows`` as a ``List(Int64)`` column (empty where the row is -1)."""
        known = rows >= 0
        if not len(self.length):
            return list_series(name, np.zeros(len(rows), np.int64), np.zeros(0, np.int64))
        safe = np.where(known, rows, 0)
        lengths = np.where(known, self.length[safe], 0)
        # newest first is stored first: row r's list is items[r, :length], i.e. flat r * n_max + j
        ends = np.cumsum(lengths)
        idx = np.repeat(safe * self.items.shape[1] - (ends - lengths), lengths)
        idx += np.arange(len(idx))
        return list_series(name, lengths, self.items.ravel().take(idx))


@dataclass
class _Counts:
    """Per key row: impressions, clicks and summed watch seconds so far."""

    imps: np.ndarray
    clicks: np.ndarray
    watch: np.ndarray

    @classmethod
    def empty(cls) -> _Counts:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def grow(self, rows: int) -> None:
        if rows > len(self.imps):
            cap = max(rows, 2 * len(self.imps), 1024)
            self.imps, self.clicks, self.watch = (np.concatenate([a, np.zeros(cap - len(a), a.dtype)]) for a in (self.imps, self.clicks, self.watch))

    def add(self, rows: np.ndarray, click: np.ndarray, watch: np.ndarray) -> None:
        size = len(self.imps)
        self.imps += np.bincount(rows, minlength=size)
        self.clicks += np.bincount(rows, weights=click, minlength=size).astype(np.int64)
        self.watch += np.bincount(rows, weights=watch, minlength=size)

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(impressions, clicks, watch) of ``rows``; zeros where the row is -1 (never seen)."""
        if not len(self.imps):  # a state that has seen no impression yet (no prior history)
            return np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64), np.zeros(len(rows), np.float64)
        known = rows >= 0
        r = np.where(known, rows, 0)
        return tuple(np.where(known, a[r], 0) for a in (self.imps, self.clicks, self.watch))  # type: ignore[return-value]

    def frame(self, key: str, keys: np.ndarray) -> pl.DataFrame:
        """One row per key with at least one impression, sorted by key."""
        k = len(keys)
        frame = pl.DataFrame({key: keys, "imps": self.imps[:k], "clicks": self.clicks[:k], "watch": self.watch[:k]})
        return frame.filter(pl.col("imps") > 0).sort(key)


@dataclass
class HistoryState:
    """What the replay carries from one chunk to the next (and what scoring resumes from).

    Held in numpy arrays, advanced in place by :func:`add_point_in_time`; saved as three Parquet
    tables (``user_hist``, ``user_counts``, ``item_counts``) plus ``state.json``.
    """

    max_len: int
    long_watch_s: float
    users: KeyIndex
    items: KeyIndex
    clicked: _Lists
    long_watched: _Lists
    user_counts: _Counts
    item_counts: _Counts
    last_ts_ms: int | None = None

    @classmethod
    def empty(cls, max_len: int, long_watch_s: float, prior: pl.DataFrame | None = None) -> HistoryState:
        """A fresh state, seeded from ``prior`` (user_id, click_items, long_watch_items; oldest first)."""
        state = cls(max_len, long_watch_s, KeyIndex(), KeyIndex(), _Lists.empty(max_len), _Lists.empty(max_len),
                    _Counts.empty(), _Counts.empty())
        if prior is not None and prior.height:
            hist = prior.select(
                pl.col("user_id").cast(pl.Int64),
                pl.col("click_items").cast(pl.List(pl.Int64)).list.drop_nulls().list.reverse().alias("hist_click_items"),
                pl.col("long_watch_items").cast(pl.List(pl.Int64)).list.drop_nulls().list.reverse().alias("hist_long_watch_items"),
            )
            state._load_lists(hist)
        return state

    def copy(self) -> HistoryState:
        """An independent copy (advancing it leaves this one as it is)."""
        return copy.deepcopy(self)

    def _load_lists(self, hist: pl.DataFrame) -> None:
        rows = self.users.add(hist["user_id"].to_numpy())
        self._grow()
        for lists, col in ((self.clicked, "hist_click_items"), (self.long_watched, "hist_long_watch_items")):
            lengths, flat = list_parts(hist[col])
            kept, keep = head_positions(lengths, self.max_len)
            values = numpy_of(flat).astype(np.int64, copy=False)
            lists.set(rows, kept, values if keep is None else values[keep])

    def _grow(self) -> None:
        self.clicked.grow(self.users.size)
        self.long_watched.grow(self.users.size)
        self.user_counts.grow(self.users.size)
        self.item_counts.grow(self.items.size)

    @property
    def user_hist(self) -> pl.DataFrame:
        """user_id, hist_click_items, hist_long_watch_items (newest first), sorted by user."""
        rows = np.arange(self.users.size)
        return pl.DataFrame([
            pl.Series("user_id", self.users.keys()),
            self.clicked.column("hist_click_items", rows),
            self.long_watched.column("hist_long_watch_items", rows),
        ]).sort("user_id")

    def _counted(self, who: str) -> tuple[KeyIndex, _Counts]:
        return (self.users, self.user_counts) if who == "user" else (self.items, self.item_counts)

    def counts_frame(self, who: str) -> pl.DataFrame:
        """``<who>_id``, imps, clicks, watch for every user / item seen, sorted by id."""
        index, counts = self._counted(who)
        return counts.frame(f"{who}_id", index.keys())

    def save(self, directory: storage.Location) -> None:
        """Write the state to a local folder or an object-store prefix (``state.json`` last)."""
        save_state_frames(directory, self.max_len, self.long_watch_s, self.last_ts_ms, self.user_hist,
                          self.counts_frame("user"), self.counts_frame("item"))

    @staticmethod
    def last_event_ms(directory: storage.Location) -> int | None:
        """The saved state's last event time, read from its ``state.json`` alone."""
        return json.loads(storage.read_text(storage.join(directory, STATE_FILE)))["last_ts_ms"]

    @classmethod
    def load(cls, directory: storage.Location) -> HistoryState:
        meta = json.loads(storage.read_text(storage.join(directory, STATE_FILE)))
        state = cls.empty(meta["max_len"], meta["long_watch_s"])
        state.last_ts_ms = meta["last_ts_ms"]
        state._load_lists(pl.read_parquet(str(storage.join(directory, "user_hist.parquet"))))
        for who in ("user", "item"):
            frame = pl.read_parquet(str(storage.join(directory, f"{who}_counts.parquet")))
            index, counts = state._counted(who)
            rows = index.add(frame[f"{who}_id"].to_numpy())
            state._grow()
            counts.imps[rows] = frame["imps"].to_numpy()
            counts.clicks[rows] = frame["clicks"].to_numpy()
            counts.watch[rows] = frame["watch"].to_numpy()
        return state


def save_state_frames(directory: storage.Location, max_len: int, long_watch_s: float, last_ts_ms: int | None,
                      user_hist: pl.DataFrame, user_counts: pl.DataFrame, item_counts: pl.DataFrame) -> None:
    """A state's files from its tables (each sorted by id), ``state.json`` last: what
    :meth:`HistoryState.save` writes, and what a partitioned replay assembles from its parts."""
    storage.makedirs(directory)
    storage.write_parquet(user_hist, storage.join(directory, "user_hist.parquet"))
    storage.write_parquet(user_counts, storage.join(directory, "user_counts.parquet"))
    storage.write_parquet(item_counts, storage.join(directory, "item_counts.parquet"))
    meta = {"max_len": max_len, "long_watch_s": long_watch_s, "last_ts_ms": last_ts_ms}
    storage.write_text(storage.join(directory, STATE_FILE), json.dumps(meta))


def _counter_columns(who: str, imps: np.ndarray, clicks: np.ndarray, watch: np.ndarray) -> list[pl.Series]:
    imps, clicks = imps.astype(np.float64), clicks.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 before the first impression -> null
        ctr, wmean = clicks / imps, watch / imps
    return [
        pl.Series(f"{who}_impressions", imps),
        pl.Series(f"{who}_clicks", clicks),
        pl.Series(f"{who}_ctr", ctr).fill_nan(None),
        pl.Series(f"{who}_watch_mean", wmean).fill_nan(None),
    ]


def add_point_in_time(chunk: pl.DataFrame, state: HistoryState) -> pl.DataFrame:
    """``chunk`` (any row order) with the point-in-time columns added; advances ``state`` in place
    past every row of the chunk.

    Every row of ``chunk`` must be later than or equal to the state's last timestamp.
    """
    ts = chunk["timestamp"].dt.cast_time_unit("ms").cast(pl.Int64).to_numpy()
    if not len(ts):
        return chunk.with_columns(*[pl.lit(None).alias(c) for c in POINT_IN_TIME_COLUMNS])
    if state.last_ts_ms is not None and ts.min() < state.last_ts_ms:
        raise ValueError("impressions must be replayed in time order: chunk starts before the state's last timestamp")
    user = chunk["user_id"].cast(pl.Int64).to_numpy()
    item = chunk["item_id"].cast(pl.Int64).to_numpy()
    click = chunk["click"].cast(pl.Int64).to_numpy()
    watch = chunk["watch_time_s"].cast(pl.Float64).to_numpy()
    is_click, is_long = click.astype(bool), watch >= state.long_watch_s
    user_row, item_row = state.users.add(user), state.items.add(item)
    state._grow()

    # Lists: in-chunk earlier events first, then the carried history, cut to max_len.
    by_user = SortedRuns(user_row, ts)  # state rows: dense, so the sort is a radix sort
    group_rows = user_row[by_user.order[by_user.firsts]]  # state row of each user in the chunk
    n = state.max_len
    columns, after = [], []
    for name, event, lists in (("hist_click_items", is_click, state.clicked), ("hist_long_watch_items", is_long, state.long_watched)):
        per_row, per_user = recent_lists(by_user, event, item, n, lists, group_rows)
        columns.append(list_series(name, *per_row))
        after.append((lists, per_user))

    # Counters: carried totals plus in-chunk strictly-earlier sums.
    for who, runs, rows, counts in (("user", by_user, user_row, state.user_counts), ("item", SortedRuns(item_row, ts), item_row, state.item_counts)):
        imps, clicks, wsum = counts.at(rows)
        columns += _counter_columns(
            who,
            imps + runs.to_rows(runs.run_start - runs.group_start),
            clicks + runs.before(runs.prefix(click)),
            wsum + runs.before(runs.prefix(watch)),
        )
    out = chunk.with_columns(columns)

    # Advance the state with every row of this chunk.
    for lists, (seq, top, length) in after:
        lists.set_newest(group_rows, seq, top, length)
    state.user_counts.add(user_row, click, watch)
    state.item_counts.add(item_row, click, watch)
    state.last_ts_ms = int(ts.max())
    return out


def point_in_time_from_state(chunk: pl.DataFrame, state: HistoryState) -> pl.DataFrame:
    """Add the point-in-time columns from ``state`` alone, for rows whose outcomes are unknown
    (candidates to score): nothing is learned from the rows themselves and the state is not
    advanced. Equals :func:`add_point_in_time` for rows that all share one timestamp."""
    user_row = state.users.rows(chunk["user_id"].cast(pl.Int64).to_numpy())
    item_row = state.items.rows(chunk["item_id"].cast(pl.Int64).to_numpy())
    columns = [lists.column(name, user_row) for name, lists in (("hist_click_items", state.clicked), ("hist_long_watch_items", state.long_watched))]
    for who, rows, counts in (("user", user_row, state.user_counts), ("item", item_row, state.item_counts)):
        columns += _counter_columns(who, *counts.at(rows))
    return chunk.with_columns(columns)
