"""The raw table shapes every source is mapped onto, and their validation.

Three tables, as a video feed logs them:

- ``impressions``: one row per (user, item) shown. ``impression_id``, ``user_id``, ``item_id``,
  ``timestamp`` (UTC, ms), ``position`` (slot on the page, optional), ``surface`` (context, e.g. the
  tab), ``click`` (0/1) and ``watch_time_s`` (seconds, >= 0).
- ``users``: ``user_id`` plus categorical and numeric attributes (free-form, source-specific).
- ``items``: ``item_id``, ``category``, ``creator_id``, ``duration_s``, ``tags`` (list of ids).

Validation raises :class:`RawDataError` naming the file, the column, the problem and how many
rows have it, so a bad export is fixed at the source instead of surfacing as NaN losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


class RawDataError(ValueError):
    """A raw table does not have the expected shape or values."""

    def __init__(self, file: str, column: str | None, problem: str, count: int | None = None):
        self.file, self.column, self.problem, self.count = file, column, problem, count
        where = f"{file}" + (f", column {column!r}" if column else "")
        rows = f" ({count:,} row(s))" if count is not None else ""
        super().__init__(f"{where}: {problem}{rows}")


# Logical types: "int" accepts any integer width, "float" any float or integer, "str" strings,
# categoricals and enums, "datetime" any datetime, "list[int]" lists of integers.
@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool = True


IMPRESSIONS = (
    Column("impression_id", "int", required=False),
    Column("user_id", "int"),
    Column("item_id", "int"),
    Column("timestamp", "datetime"),
    Column("position", "int", required=False),
    Column("surface", "str", required=False),
    Column("click", "int"),
    Column("watch_time_s", "float"),
)
USERS = (Column("user_id", "int"),)
ITEMS = (
    Column("item_id", "int"),
    Column("category", "int", required=False),
    Column("creator_id", "int", required=False),
    Column("duration_s", "float", required=False),
    Column("tags", "list[int]", required=False),
)
LABEL_COLUMNS = ("click", "watch_time_s")


def _kind_ok(dtype: pl.DataType, kind: str) -> bool:
    if kind == "int":
        return dtype.is_integer()
    if kind == "float":
        return dtype.is_float() or dtype.is_integer()
    if kind == "str":
        return dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Enum, pl.Categorical))
    if kind == "datetime":
        return isinstance(dtype, pl.Datetime)
    if kind == "list[int]":
        return isinstance(dtype, pl.List) and dtype.inner.is_integer()
    raise AssertionError(kind)


def check_columns(schema: pl.Schema, columns: tuple[Column, ...], file: str) -> None:
    """Raise if a required column is missing or any known column has the wrong type."""
    missing = [c.name for c in columns if c.required and c.name not in schema]
    if missing:
        raise RawDataError(
            file, missing[0], f"required column(s) missing: {missing}; present: {list(schema)}"
        )
    for col in columns:
        if col.name in schema and not _kind_ok(schema[col.name], col.kind):
            raise RawDataError(file, col.name, f"expected {col.kind}, got {schema[col.name]}")


def _count_bad(frame: pl.LazyFrame, checks: dict[str, pl.Expr]) -> dict[str, int]:
    row = frame.select(**{k: e.sum() for k, e in checks.items()}).collect().row(0, named=True)
    return {k: int(v or 0) for k, v in row.items()}


def validate_impressions(frame: pl.LazyFrame | pl.DataFrame, file: str, unique_ids: bool = True) -> None:
    """Check columns, types, ids, labels and watch time of an impressions table (one scan).

    ``unique_ids=False`` skips the ``impression_id`` duplicate check, the one check whose memory
    grows with the table (a hash of every id); the replay then checks ids day by day instead
    (:func:`check_unique_ids`)."""
    lf = frame.lazy()
    schema = lf.collect_schema()
    check_columns(schema, IMPRESSIONS, file)
    checks: dict[str, pl.Expr] = {
        "user_id:null id": pl.col("user_id").is_null(),
        "item_id:null id": pl.col("item_id").is_null(),
        "timestamp:null timestamp": pl.col("timestamp").is_null(),
        "click:label outside {0, 1} or null": ~pl.col("click").is_in([0, 1]).fill_null(False),
        "watch_time_s:negative watch time": pl.col("watch_time_s") < 0,
        "watch_time_s:null or NaN watch time": pl.col("watch_time_s").is_null()
        | pl.col("watch_time_s").cast(pl.Float64).is_nan(),
    }
    if "position" in schema:
        checks["position:negative position"] = pl.col("position") < 0
    if "impression_id" in schema and unique_ids:
        checks["impression_id:duplicate impression_id"] = pl.col("impression_id").is_duplicated()
    for key, count in _count_bad(lf, checks).items():
        if count:
            column, problem = key.split(":", 1)
            raise RawDataError(file, column, problem, count)


def check_unique_ids(rows: pl.DataFrame, file: str) -> None:
    """Refuse a batch of impressions that repeats an ``impression_id``."""
    if "impression_id" in rows.columns and rows["impression_id"].n_unique() < rows.height:  # cheaper than the mask
        dup = int(rows["impression_id"].is_duplicated().sum())
        raise RawDataError(file, "impression_id", "duplicate impression_id", dup)


def _validate_entity(frame: pl.DataFrame | pl.LazyFrame, columns: tuple[Column, ...], key: str, file: str) -> None:
    lf = frame.lazy()
    check_columns(lf.collect_schema(), columns, file)
    counts = _count_bad(
        lf,
        {
            "null": pl.col(key).is_null(),
            "dup": pl.col(key).is_duplicated() & pl.col(key).is_not_null(),
        },
    )
    if counts["null"]:
        raise RawDataError(file, key, f"null {key}", counts["null"])
    if counts["dup"]:
        raise RawDataError(file, key, f"duplicate {key} values", counts["dup"])


def validate_users(frame: pl.DataFrame | pl.LazyFrame, file: str) -> None:
    """Check the users table: a non-null, unique ``user_id``."""
    _validate_entity(frame, USERS, "user_id", file)


def validate_items(frame: pl.DataFrame | pl.LazyFrame, file: str) -> None:
    """Check the items table: a non-null, unique ``item_id`` and typed item columns."""
    _validate_entity(frame, ITEMS, "item_id", file)
    lf = frame.lazy()
    if "duration_s" in lf.collect_schema():
        neg = _count_bad(lf, {"n": pl.col("duration_s") < 0})["n"]
        if neg:
            raise RawDataError(file, "duration_s", "negative duration", neg)
