"""Reader for KuaiRand-Pure (Gao et al., CIKM 2022; CC BY-SA 4.0) onto the raw table shapes.

Mapping: ``item_id = video_id``, ``timestamp = time_ms`` (in Asia/Shanghai, so calendar days match the log's ``date``), ``surface = tab`` (as a string),
``click = is_click``, ``watch_time_s = play_time_ms / 1000``. KuaiRand has no slot position.
Items: ``creator_id = author_id``, ``duration_s = video_duration / 1000``, ``tags`` parsed from the
comma-separated ``tag`` column, ``category`` = the first tag (-1 when the video has none).
The per-user history file (from before the logs start) becomes ``RawTables.history`` with
``click_items = watch_seq`` and ``long_watch_items = long_watch_seq`` (assumed oldest first).
"""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl

from recsys_moe.data.schema import Column, RawDataError, check_columns
from recsys_moe.data.tables import RawTables

LOG_FILE = "log_standard_4_25_to_5_04_pure.csv.gz"
USER_FILE = "user_features_pure.csv.gz"
VIDEO_FILE = "video_features_basic_pure.csv"
HISTORY_FILE = "user_history_4_09_to_4_24.parquet"
# Kuaishou logs are in Beijing time: the `date` column 20220425 starts at 16:00 UTC on 04-24.
TIME_ZONE = "Asia/Shanghai"

_LOG_COLUMNS = (
    Column("user_id", "int"), Column("video_id", "int"), Column("time_ms", "int"),
    Column("is_click", "int"), Column("play_time_ms", "int"), Column("tab", "int"),
)
_VIDEO_COLUMNS = (Column("video_id", "int"), Column("author_id", "int"), Column("video_duration", "float"), Column("tag", "str"))
_HISTORY_COLUMNS = (Column("user_id", "int"), Column("watch_seq", "list[int]"), Column("long_watch_seq", "list[int]"))
EXTRA_LOG_LABELS = ("is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view")


def _read_csv(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: KuaiRand file not found (see ../shared/data/kuairand/README.md)")
    try:
        return pl.read_csv(path, infer_schema_length=10_000)
    except pl.exceptions.PolarsError as exc:
        raise RawDataError(str(path), None, f"cannot be read as CSV: {exc}") from exc


def map_log(log: pl.DataFrame, file: str) -> pl.DataFrame:
    """Map KuaiRand log columns onto the raw impressions shape (rows kept in time order)."""
    check_columns(log.schema, _LOG_COLUMNS, file)
    extras = [c for c in EXTRA_LOG_LABELS if c in log.columns]
    return (
        log.sort("time_ms", maintain_order=True)
        .with_row_index("impression_id")
        .select(
            pl.col("impression_id").cast(pl.Int64),
            pl.col("user_id").cast(pl.Int64),
            pl.col("video_id").cast(pl.Int64).alias("item_id"),
            pl.col("time_ms").cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone(TIME_ZONE).alias("timestamp"),
            pl.col("tab").cast(pl.String).alias("surface"),
            pl.col("is_click").cast(pl.Int8).alias("click"),
            (pl.col("play_time_ms").cast(pl.Float64) / 1000.0).cast(pl.Float32).alias("watch_time_s"),
            *[pl.col(c) for c in extras],
        )
    )


def map_videos(videos: pl.DataFrame, file: str) -> pl.DataFrame:
    """Map the video table onto the raw items shape."""
    check_columns(videos.schema, _VIDEO_COLUMNS, file)
    tags = (
        pl.col("tag").fill_null("").str.split(",")
        .list.eval(pl.element().str.strip_chars().filter(pl.element() != "").cast(pl.Int64, strict=False).drop_nulls())
    )
    rest = [c for c in videos.columns if c not in ("video_id", "author_id", "video_duration", "tag")]
    return videos.select(
        pl.col("video_id").cast(pl.Int64).alias("item_id"),
        pl.col("author_id").cast(pl.Int64).alias("creator_id"),
        (pl.col("video_duration").cast(pl.Float64) / 1000.0).cast(pl.Float32).alias("duration_s"),
        tags.alias("tags"),
        *[pl.col(c) for c in rest],
    ).with_columns(pl.col("tags").list.first().fill_null(-1).alias("category"))


def _deferred_log(log_file: Path) -> pl.LazyFrame:
    """The mapped log as a LazyFrame that parses the CSV on first use, once.

    Batch scoring needs only the user and video tables, so it never pays for parsing the gzipped
    log. The schema is taken from the parsed log too, so it is never guessed.
    """
    if not log_file.is_file():
        raise FileNotFoundError(f"{log_file}: KuaiRand file not found (see ../shared/data/kuairand/README.md)")
    load = functools.cache(lambda: map_log(_read_csv(log_file), str(log_file)))
    return pl.defer(load, schema=lambda: load().schema)


def read_kuairand(path: str | Path) -> RawTables:
    """Read the KuaiRand-Pure files in ``path`` and map them onto :class:`RawTables`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: KuaiRand directory not found")
    log_file, user_file, video_file, hist_file = (
        path / LOG_FILE, path / USER_FILE, path / VIDEO_FILE, path / HISTORY_FILE,
    )
    impressions = _deferred_log(log_file)
    users = _read_csv(user_file)
    items = map_videos(_read_csv(video_file), str(video_file))
    history = None
    if hist_file.is_file():
        history = pl.read_parquet(hist_file)
        check_columns(history.schema, _HISTORY_COLUMNS, str(hist_file))
        # Raw history shape: user_id, click_items, long_watch_items (oldest first). KuaiRand's
        # pre-period file has watched (not clicked) items: they are the closest seed for clicks.
        history = history.with_columns(
            pl.col("watch_seq").alias("click_items"), pl.col("long_watch_seq").alias("long_watch_items")
        )
    return RawTables(
        impressions=impressions,
        users=users,
        items=items,
        history=history,
        source="kuairand",
        files={
            "impressions": str(log_file),
            "users": str(user_file),
            "items": str(video_file),
            "history": str(hist_file),
        },
    )
