"""Join impressions with users and items, add derived and point-in-time columns, one day at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from recsys_moe.config import FeaturesConfig
from recsys_moe.data.schema import RawDataError, check_unique_ids
from recsys_moe.data.tables import RawTables
from recsys_moe.features.keyindex import KeyIndex
from recsys_moe.features.lookup import list_parts, list_series, numpy_of
from recsys_moe.features.pointintime import (
    POINT_IN_TIME_COLUMNS,
    HistoryState,
    add_point_in_time,
    point_in_time_from_state,
)

DERIVED_COLUMNS = ("hour", "weekday")


def check_join_columns(raw: RawTables) -> None:
    """Users and items columns are joined by name: refuse names that would collide."""
    imp_cols = set(raw.impressions.collect_schema()) | set(DERIVED_COLUMNS) | set(POINT_IN_TIME_COLUMNS)
    for table, frame, key in (("users", raw.users, "user_id"), ("items", raw.items, "item_id")):
        clash = sorted((set(frame.columns) - {key}) & imp_cols)
        if clash:
            raise RawDataError(raw.files.get(table, table), clash[0], "column name collides with an impressions/derived column")
    both = sorted((set(raw.users.columns) - {"user_id"}) & (set(raw.items.columns) - {"item_id"}))
    if both:
        raise RawDataError(raw.files.get("items", "items"), both[0], "column name appears in both users and items")


def joined_columns_only(raw: RawTables, features: FeaturesConfig) -> RawTables:
    """``raw`` with users and items cut to their key and the columns some feature reads (plus the
    items' ``category``, which history categories need), so each join copies only those.

    KuaiRand's user table has 31 columns; the feature set reads 5 of them."""
    read = {f.source for f in features.features} | {"category"}
    return dataclasses.replace(
        raw,
        users=raw.users.select(c for c in raw.users.columns if c == "user_id" or c in read),
        items=raw.items.select(c for c in raw.items.columns if c == "item_id" or c in read),
    )


def available_columns(raw: RawTables) -> dict[str, pl.DataType]:
    """Every column a feature may name as its source, with its type."""
    cols: dict[str, pl.DataType] = dict(raw.impressions.collect_schema())
    cols.update({c: raw.users.schema[c] for c in raw.users.columns})
    cols.update({c: raw.items.schema[c] for c in raw.items.columns})
    cols.update({"hour": pl.Int8(), "weekday": pl.Int8()})
    cols.update({c: pl.List(pl.Int64()) for c in POINT_IN_TIME_COLUMNS[:2]})
    cols.update({c: pl.Float64() for c in POINT_IN_TIME_COLUMNS[2:]})
    cols["hist_click_categories"] = pl.List(pl.Int64())
    return cols


def days_in_log(raw: RawTables) -> list[dt.date]:
    days = raw.impressions.select(pl.col("timestamp").dt.date().unique().sort()).collect().to_series()
    return days.to_list()


def day_bounds(dtype: pl.Datetime, day: dt.date) -> tuple[pl.Expr, pl.Expr]:
    tz = ZoneInfo(dtype.time_zone) if dtype.time_zone else None
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    end = start + dt.timedelta(days=1)
    if tz is not None:  # wall-clock midnight to midnight, correct across DST changes
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return pl.lit(start).cast(dtype), pl.lit(end).cast(dtype)


class Replay:
    """Replays a log day by day, carrying the point-in-time state; ``state`` is the state after
    the last day yielded (what a later job continues from). The state passed in is advanced in
    place: pass ``state.copy()`` to keep the original."""

    def __init__(self, raw: RawTables, state: HistoryState, chunk_rows: int = 49_152, joins: bool = True):
        self.raw, self.state, self.chunk_rows, self.joins = raw, state, chunk_rows, joins

    def days(self, last_day: dt.date | None = None) -> Iterator[tuple[dt.date, pl.DataFrame]]:
        """Yield (day, enriched rows) up to ``last_day``; rows keep their time order. Without
        ``joins``, the users' and items' columns are left out (for a caller that takes them from
        :class:`~recsys_moe.features.entities.EntityAttributes`)."""
        yield from _enriched_days(self.raw, self.state, self.chunk_rows, last_day, self.joins)


class CategoryOf:
    """Item id -> its category id (-1 for items not in the items table), for history lists."""

    def __init__(self, items: pl.DataFrame):
        self.index = KeyIndex(items["item_id"].cast(pl.Int64).to_numpy())
        cats = items["category"].cast(pl.Int64)
        # one extra entry at the end, read by row -1 (an item not in the table): category -1, valid
        self.cats = np.append(cats.fill_null(-1).to_numpy(), -1)
        self.valid = np.append(cats.is_not_null().to_numpy(), True)

    def of_lists(self, items: pl.Series, name: str) -> pl.Series:
        """A list column of item ids -> the same lists of their categories (null where the item's
        category is null)."""
        lengths, flat = list_parts(items)
        rows = self.index.rows(numpy_of(flat))
        valid = self.valid.take(rows)
        return list_series(name, lengths, self.cats.take(rows), None if valid.all() else valid)


def slice_bounds(ts: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Cut sorted timestamps into slices of about ``chunk_rows``, only where the timestamp changes."""
    cuts = {0, len(ts)}
    for b in range(chunk_rows, len(ts), chunk_rows):
        cuts.add(int(np.searchsorted(ts, ts[b], side="left")))
    edges = sorted(cuts)
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _enriched_days(
    raw: RawTables, state: HistoryState, chunk_rows: int, last_day: dt.date | None = None, joins: bool = True,
) -> Iterator[tuple[dt.date, pl.DataFrame]]:
    check_join_columns(raw)
    dtype = raw.impressions.collect_schema()["timestamp"]
    category = CategoryOf(raw.items) if "category" in raw.items.columns else None
    for day in days_in_log(raw):
        if last_day and day > last_day:
            break
        lo, hi = day_bounds(dtype, day)
        day_rows = (
            raw.impressions.filter((pl.col("timestamp") >= lo) & (pl.col("timestamp") < hi))
            .collect()
        )
        check_unique_ids(day_rows, f"{raw.files.get('impressions', 'impressions')} ({day})")
        if not day_rows["timestamp"].is_sorted():
            day_rows = day_rows.sort("timestamp", maintain_order=True)
        ts = day_rows["timestamp"].dt.cast_time_unit("ms").cast(pl.Int64).to_numpy()
        for a, b in slice_bounds(ts, chunk_rows):
            yield day, _enrich(day_rows[a:b], raw, category, state, joins=joins)
        del day_rows  # before the next day is read, not after


def with_derived(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with the columns derived from each row alone (:data:`DERIVED_COLUMNS`)."""
    return rows.with_columns(
        pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"),
        pl.col("timestamp").dt.weekday().cast(pl.Int8).alias("weekday"),
    )


def _enrich(
    rows: pl.DataFrame, raw: RawTables, category: CategoryOf | None, state: HistoryState, advance: bool = True,
    joins: bool = True,
) -> pl.DataFrame:
    if joins:
        rows = (rows.join(raw.users, on="user_id", how="left", maintain_order="left")
                .join(raw.items, on="item_id", how="left", maintain_order="left"))
    chunk = with_derived(rows)
    chunk = add_point_in_time(chunk, state) if advance else point_in_time_from_state(chunk, state)
    if category is not None:
        chunk = chunk.with_columns(category.of_lists(chunk["hist_click_items"], "hist_click_categories"))
    return chunk


def enrich_candidates(rows: pl.DataFrame, raw: RawTables, state: HistoryState, category: CategoryOf | None = None) -> pl.DataFrame:
    """Enrich impressions to score (no labels needed): the same joins and derived columns as the
    replay, with point-in-time features read from ``state`` (the history up to the end of the
    transformed log), which is left unchanged. Row order is kept. Pass ``category`` (built once
    from ``raw.items``) when enriching many batches."""
    if category is None and "category" in raw.items.columns:
        category = CategoryOf(raw.items)
    return _enrich(rows, raw, category, state, advance=False)


def initial_state(raw: RawTables, max_len: int, long_watch_s: float) -> HistoryState:
    """A state seeded from the source's prior history table, when it has one."""
    return HistoryState.empty(max_len, long_watch_s, raw.history)
