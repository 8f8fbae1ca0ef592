"""Reader for KuaiRand (Gao et al., CIKM 2022; CC BY-SA 4.0) onto the raw table shapes.

Two layouts (``data.kuairand.layout``):

- ``cut``: this project's shared copy (``../shared/data/kuairand/README.md``): the standard log of
  04-25..05-04 in one file, the user and video tables, and a per-user history built from earlier
  days.
- ``official``: the files as released, for KuaiRand-Pure, -1K and -27K (``variant``), in the
  given folder or its ``data/`` folder: ``log_standard_4_08_to_4_21_<v>*.csv``,
  ``log_standard_4_22_to_5_08_<v>*.csv``, ``log_random_4_22_to_5_08_<v>*.csv`` (27K's logs
  come in ``_part<n>`` files; all are read), ``user_features_<v>.csv`` and
  ``video_features_basic_<v>*.csv``. ``video_features_statistic_*`` is not read: it counts over
  the whole period, so it would leak the test days' outcomes into training. There is no separate
  history file: the earlier days are in the logs, and the transform replays them into the
  point-in-time state (rows outside the split windows only advance it).

``data.kuairand.logs`` picks the logs and their days, e.g. the standard log for training and the
random-exposure log (items shown at random: an unbiased test set) for the test window.

Mapping: ``item_id = video_id``, ``timestamp = time_ms`` (in Asia/Shanghai, so calendar days match the log's ``date``), ``surface = tab`` (as a string),
``click = is_click``, ``watch_time_s = play_time_ms / 1000``, ``is_rand`` kept (1 on the random
log). ``impression_id`` numbers the selected rows in time order (ties in file order), so the
official files give the cut's ids for the cut's days. KuaiRand has no slot position.
Items: ``creator_id = author_id``, ``duration_s = video_duration / 1000``, ``tags`` parsed from the
comma-separated ``tag`` column, ``category`` = the first tag (-1 when the video has none).
The cut's per-user history file becomes ``RawTables.history`` with
``click_items = watch_seq`` and ``long_watch_items = long_watch_seq`` (assumed oldest first).

Logs are parsed into memory (about 1.5 GB per 10M rows); KuaiRand-27K's logs (over 300M rows) do
not fit one machine that way: convert them to Parquet and read them with ``data.source: files``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import polars as pl

from recsys_moe import storage
from recsys_moe.config import KuaiRandLog
from recsys_moe.data.files import delimited_ids
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
EXTRA_LOG_LABELS = ("is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_rand")
OFFICIAL_LOGS = {"standard": "log_standard_*_{v}*.csv*", "random": "log_random_*_{v}*.csv*"}
OFFICIAL_USERS = "user_features_{v}.csv*"
OFFICIAL_VIDEOS = "video_features_basic_{v}*.csv*"


def _read_csv(path: storage.Location) -> pl.DataFrame:
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path}: KuaiRand file not found (see ../shared/data/kuairand/README.md)")
    try:
        return pl.read_csv(str(path), infer_schema_length=10_000)
    except pl.exceptions.PolarsError as exc:
        raise RawDataError(str(path), None, f"cannot be read as CSV: {exc}") from exc


def map_log(log: pl.DataFrame, file: str) -> pl.DataFrame:
    """Map KuaiRand log columns onto the raw impressions shape (rows put in time order, ties in
    file order, and numbered in that order)."""
    return _numbered(_log_columns(log, file))


def _log_columns(log: pl.DataFrame, file: str) -> pl.DataFrame:
    check_columns(log.schema, _LOG_COLUMNS, file)
    extras = [c for c in EXTRA_LOG_LABELS if c in log.columns]
    return log.select(
        pl.col("time_ms").cast(pl.Int64),
        pl.col("user_id").cast(pl.Int64),
        pl.col("video_id").cast(pl.Int64).alias("item_id"),
        pl.col("time_ms").cast(pl.Int64).cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone(TIME_ZONE).alias("timestamp"),
        pl.col("tab").cast(pl.String).alias("surface"),
        pl.col("is_click").cast(pl.Int8).alias("click"),
        (pl.col("play_time_ms").cast(pl.Float64) / 1000.0).cast(pl.Float32).alias("watch_time_s"),
        *[pl.col(c) for c in extras],
    )


def _numbered(log: pl.DataFrame) -> pl.DataFrame:
    return (log.sort("time_ms", maintain_order=True).drop("time_ms")
            .with_row_index("impression_id").with_columns(pl.col("impression_id").cast(pl.Int64)))


def map_videos(videos: pl.DataFrame, file: str) -> pl.DataFrame:
    """Map the video table onto the raw items shape."""
    check_columns(videos.schema, _VIDEO_COLUMNS, file)
    tags = delimited_ids("tag", ",").list.drop_nulls()  # KuaiRand's few malformed tags are dropped
    rest = [c for c in videos.columns if c not in ("video_id", "author_id", "video_duration", "tag")]
    return videos.select(
        pl.col("video_id").cast(pl.Int64).alias("item_id"),
        pl.col("author_id").cast(pl.Int64).alias("creator_id"),
        (pl.col("video_duration").cast(pl.Float64) / 1000.0).cast(pl.Float32).alias("duration_s"),
        tags.alias("tags"),
        *[pl.col(c) for c in rest],
    ).with_columns(pl.col("tags").list.first().fill_null(-1).alias("category"))


def _in_days(log: KuaiRandLog) -> pl.Expr:
    day = pl.col("timestamp").dt.date()
    keep = pl.lit(True)
    if log.start is not None:
        keep &= day >= log.start
    if log.end is not None:
        keep &= day <= log.end
    return keep


def _read_logs(files: dict[str, list[storage.Location]], logs: Sequence[KuaiRandLog]) -> pl.DataFrame:
    """The selected days of each selected log, merged in time order and numbered."""
    frames = []
    for log in logs:
        for f in files[log.kind]:
            rows = _log_columns(_read_csv(f), str(f)).filter(_in_days(log))
            if "is_rand" not in rows.columns:
                rows = rows.with_columns(pl.lit(int(log.kind == "random"), pl.Int64).alias("is_rand"))
            frames.append(rows)
    return _numbered(pl.concat(frames, how="diagonal_relaxed"))


def _deferred(files: dict[str, list[storage.Location]], logs: Sequence[KuaiRandLog]) -> pl.LazyFrame:
    """The mapped log as a LazyFrame that parses the CSVs on first use, once.

    Batch scoring needs only the user and video tables, so it never pays for parsing the gzipped
    log. The schema is taken from the parsed log too, so it is never guessed.
    """
    load = functools.cache(lambda: _read_logs(files, logs))
    return pl.defer(load, schema=lambda: load().schema)


def detect_layout(path: storage.Location, variant: str) -> tuple[str, storage.Location]:
    """(``cut`` or ``official``, the folder holding the files) by the files present."""
    for folder in (path, storage.join(path, "data")):
        if storage.is_file(storage.join(folder, LOG_FILE)):
            return "cut", folder
        if storage.expand(storage.join(folder, OFFICIAL_LOGS["standard"].format(v=variant))) or \
                storage.expand(storage.join(folder, OFFICIAL_LOGS["random"].format(v=variant))):
            return "official", folder
    raise FileNotFoundError(
        f"{path}: neither the shared KuaiRand cut ({LOG_FILE}) nor the official KuaiRand-{variant} files "
        f"({OFFICIAL_LOGS['standard'].format(v=variant)}) are here or in data/"
    )


def _one(folder: storage.Location, pattern: str) -> list[storage.Location]:
    found = storage.expand(storage.join(folder, pattern))
    if not found:
        raise FileNotFoundError(f"{storage.join(folder, pattern)}: KuaiRand file not found")
    return found


def read_kuairand(path: storage.Location, layout: str = "auto", variant: str = "pure",
                  logs: Sequence[KuaiRandLog] | None = None) -> RawTables:
    """Read KuaiRand's files in ``path`` (either layout) and map them onto :class:`RawTables`."""
    logs = list(logs or [KuaiRandLog()])
    found, folder = detect_layout(path, variant)
    if layout not in ("auto", found):
        raise FileNotFoundError(f"{path}: data.kuairand.layout is {layout}, but the files here are the {found} layout")
    if found == "cut":
        if any(log.kind == "random" for log in logs):
            raise RawDataError(str(path), None, "the shared cut has only the standard log; "
                               "data.kuairand.logs can name the random log with the official files")
        log_files = {"standard": [storage.join(folder, LOG_FILE)]}
        user_file, video_files = storage.join(folder, USER_FILE), [storage.join(folder, VIDEO_FILE)]
        hist_file = storage.join(folder, HISTORY_FILE)
    else:
        log_files = {kind: _one(folder, OFFICIAL_LOGS[kind].format(v=variant)) for kind in {log.kind for log in logs}}
        user_file = _one(folder, OFFICIAL_USERS.format(v=variant))[0]
        video_files = _one(folder, OFFICIAL_VIDEOS.format(v=variant))
        hist_file = None
    impressions = _deferred(log_files, logs)
    users = _read_csv(user_file)
    videos = pl.concat([_read_csv(f) for f in video_files], how="diagonal_relaxed")
    items = map_videos(videos, str(video_files[0]))
    history = None
    if hist_file is not None and storage.is_file(hist_file):
        history = pl.read_parquet(str(hist_file))
        check_columns(history.schema, _HISTORY_COLUMNS, str(hist_file))
        # Raw history shape: user_id, click_items, long_watch_items (oldest first). KuaiRand's
        # pre-period file has watched (not clicked) items: they are the closest seed for clicks.
        history = history.with_columns(
            pl.col("watch_seq").alias("click_items"), pl.col("long_watch_seq").alias("long_watch_items")
        )
    files = {"impressions": ", ".join(str(f) for kind in log_files for f in log_files[kind]),
             "users": str(user_file), "items": str(video_files[0])}
    inputs = {"users": [str(user_file)], "items": [str(f) for f in video_files]}
    if history is not None:
        files["history"] = str(hist_file)
        inputs["history"] = [str(hist_file)]
    return RawTables(impressions=impressions, users=users, items=items, history=history, source="kuairand",
                     files=files, inputs=inputs)
