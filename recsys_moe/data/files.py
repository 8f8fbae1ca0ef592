"""``data.source: files``: your own impressions, users and items as Parquet or CSV, local or on an
object store, mapped onto the raw tables (:mod:`recsys_moe.data.schema`) by a column mapping.

Each table is a file, a folder or a glob (:class:`~recsys_moe.config.TableFiles`). The mapping
renames the user's columns to the raw names, then converts what a log commonly stores
differently: integer epoch timestamps (``timestamp_unit``) or ISO strings into the configured
time zone, watch time and durations in milliseconds, tags as one delimited string, boolean
clicks. Everything else (extra labels, user and item attributes) keeps its name, so a feature can
read it.

Impressions stay lazy: the replay reads one calendar day at a time, so memory follows a day, not
the log. Parquet reads only that day's row groups (by their statistics); CSV has no statistics and
is parsed once per replayed day, so a large log should be Parquet (``docs/design.md``). Users and
items are read whole: they are one row per id.
"""

from __future__ import annotations

import polars as pl

from recsys_moe import storage
from recsys_moe.config import FilesConfig, ImpressionFiles, ItemFiles, TableFiles
from recsys_moe.data.schema import RawDataError
from recsys_moe.data.tables import RawTables

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def table_files(table: TableFiles, name: str) -> tuple[list[str], str]:
    """The table's files (sorted) and their format; a clear error when none match."""
    found = storage.expand(table.path, PARQUET_SUFFIXES + CSV_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"data.files.{name}.path: no files match {table.path!r}")
    files = [str(f) for f in found]
    fmt = table.format
    if fmt == "auto":
        kinds = {"csv" if f.lower().endswith(CSV_SUFFIXES) else "parquet" if f.lower().endswith(PARQUET_SUFFIXES) else "?" for f in files}
        if kinds == {"?"} or len(kinds) > 1:
            raise RawDataError(table.path, None, f"cannot tell the format from the file names ({sorted(kinds)}); "
                               f"set data.files.{name}.format to parquet or csv")
        fmt = kinds.pop()
    return files, fmt


def scan_table(table: TableFiles, name: str, read: dict[str, list[str]] | None = None) -> tuple[pl.LazyFrame, str]:
    """The table's rows with the user's columns renamed to the raw names, and a label for errors;
    the files read are recorded in ``read[name]``."""
    files, fmt = table_files(table, name)
    if read is not None:
        read[name] = files
    where = f"{table.path} (data.files.{name})"
    try:
        if fmt == "csv":
            frame = pl.scan_csv(files, separator=table.separator, infer_schema_length=10_000)
        else:
            hive = storage.is_dir(table.path) and not storage.is_file(table.path)
            frame = pl.scan_parquet(files, hive_partitioning=hive)
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise RawDataError(where, None, f"cannot be read as {fmt} ({exc})") from exc
    return frame.rename(renames(schema, table, name, where)), where


def renames(schema: pl.Schema, table: TableFiles, name: str, where: str) -> dict[str, str]:
    """The user's column -> raw name renames of ``table.columns``, checked against ``schema``."""
    missing = {raw: theirs for raw, theirs in table.columns.items() if theirs not in schema}
    if missing:
        raw, theirs = next(iter(missing.items()))
        raise RawDataError(where, theirs, f"mapped to {raw!r} by data.files.{name}.columns but not in the files; "
                           f"columns present: {list(schema)}")
    renamed = {theirs: raw for raw, theirs in table.columns.items() if theirs != raw}
    clash = sorted(set(renamed.values()) & (set(schema) - set(renamed)))
    if clash:
        raise RawDataError(where, clash[0], f"the files already have a column {clash[0]!r}; "
                           f"map it too, or map another column onto a different name")
    return renamed


def _timestamp(schema: pl.Schema, spec: ImpressionFiles, where: str) -> pl.Expr:
    col = pl.col("timestamp")
    dtype = schema["timestamp"]
    if dtype.is_integer() or dtype.is_float():
        utc = pl.from_epoch(col.cast(pl.Int64), time_unit=spec.timestamp_unit).dt.replace_time_zone("UTC")
        return utc.dt.convert_time_zone(spec.time_zone)
    if dtype == pl.String:
        # an offset in the text ("...+08:00", "Z") is honoured; text without one is wall-clock time in
        # the configured zone. Unparseable text becomes null, which validation counts and names.
        has_offset = col.str.contains(r"(Z|[+-]\d\d:?\d\d)$")
        # each kind parsed on its own rows: Polars infers one format per column from its first value
        parsed = (pl.when(has_offset).then(col.str.replace(r"Z$", "+00:00"))
                  .str.to_datetime(time_unit="ms", time_zone="UTC", strict=False))
        naive = (pl.when(~has_offset).then(col).str.to_datetime(time_unit="ms", strict=False)
                 .dt.replace_time_zone(spec.time_zone, ambiguous="earliest"))
        return pl.when(has_offset).then(parsed.dt.convert_time_zone(spec.time_zone)).otherwise(naive)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.replace_time_zone(spec.time_zone, ambiguous="earliest")
        return col.dt.convert_time_zone(spec.time_zone)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.replace_time_zone(spec.time_zone)
    raise RawDataError(where, spec.columns.get("timestamp", "timestamp"), f"timestamp of type {dtype}: give epoch numbers, ISO strings or datetimes")


def delimited_ids(col: str, separator: str) -> pl.Expr:
    """A string column of delimited ids (``"12,7,40"``) as lists of Int64: empty entries dropped,
    an entry that is not an integer null (callers count or drop those)."""
    return (pl.col(col).fill_null("").str.split(separator)
            .list.eval(pl.element().str.strip_chars().filter(pl.element() != "").cast(pl.Int64, strict=False)))


def _to_int_list(col: str, dtype: pl.DataType | None, separator: str) -> pl.Expr | None:
    """A delimited string or a list of numbers/strings as a list of Int64 (unparseable -> null)."""
    if dtype == pl.String:
        return delimited_ids(col, separator)
    if isinstance(dtype, pl.List) and not dtype.inner.is_integer():
        return pl.col(col).list.eval(pl.element().cast(pl.Int64, strict=False))
    return None


def impressions_frame(spec: ImpressionFiles, read: dict[str, list[str]] | None = None) -> tuple[pl.LazyFrame, str]:
    """The impressions table, converted (lazy)."""
    frame, where = scan_table(spec, "impressions", read)
    return _converted(frame, spec, where), where


def impressions_to_raw(frame: pl.DataFrame, spec: ImpressionFiles, where: str) -> pl.DataFrame:
    """Rows in the user's impressions shape in the raw shape. Mapped columns the rows lack are
    left out (candidates to score have no labels; the scoring job checks its key columns)."""
    present = spec.model_copy(update={"columns": {r: t for r, t in spec.columns.items() if t in frame.columns}})
    renamed = frame.rename(renames(frame.schema, present, "impressions", where))
    return _converted(renamed.lazy(), spec, where).collect()


def _converted(frame: pl.LazyFrame, spec: ImpressionFiles, where: str) -> pl.LazyFrame:
    schema = frame.collect_schema()
    # milliseconds, the raw schema's unit, whatever the source's
    exprs = [_timestamp(schema, spec, where).dt.cast_time_unit("ms").alias("timestamp")] if "timestamp" in schema else []
    if "click" in schema and schema["click"] == pl.Boolean:
        exprs.append(pl.col("click").cast(pl.Int8))
    if "watch_time_s" in schema and (schema["watch_time_s"].is_float() or schema["watch_time_s"].is_integer()):
        per_second = 1000.0 if spec.watch_time_unit == "ms" else 1.0
        exprs.append((pl.col("watch_time_s").cast(pl.Float64) / per_second).cast(pl.Float32))
    if "surface" in schema and schema["surface"] != pl.String:
        exprs.append(pl.col("surface").cast(pl.String))
    return frame.with_columns(exprs)


def items_frame(spec: ItemFiles, read: dict[str, list[str]] | None = None) -> tuple[pl.DataFrame, str]:
    """The items table, converted and read whole; tags that are not integers are refused."""
    frame, where = scan_table(spec, "items", read)
    schema = frame.collect_schema()
    exprs = []
    if "duration_s" in schema and spec.duration_unit == "ms":
        exprs.append((pl.col("duration_s").cast(pl.Float64) / 1000.0).cast(pl.Float32))
    tags = _to_int_list("tags", schema.get("tags"), spec.list_separator)
    items = _collect(frame.with_columns(exprs), where)
    if tags is not None:
        parsed = items.select(tags.alias("tags"))["tags"]
        bad = int(parsed.list.eval(pl.element().is_null()).list.any().sum())
        if bad:
            raise RawDataError(where, spec.columns.get("tags", "tags"),
                               f"tags must be integer ids separated by {spec.list_separator!r}; some are not", bad)
        items = items.with_columns(parsed)
    return items, where


def _collect(frame: pl.LazyFrame, where: str) -> pl.DataFrame:
    try:
        return frame.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise RawDataError(where, None, f"cannot be read ({exc})") from exc


def history_frame(spec: TableFiles, read: dict[str, list[str]] | None = None) -> tuple[pl.DataFrame, str]:
    frame, where = scan_table(spec, "history", read)
    schema = frame.collect_schema()
    exprs = [e.alias(c) for c in ("click_items", "long_watch_items")
             if (e := _to_int_list(c, schema.get(c), ",")) is not None]
    return _collect(frame.with_columns(exprs), where), where


def read_files(cfg: FilesConfig) -> RawTables:
    """Open the configured files as :class:`RawTables` (impressions lazy, the rest read)."""
    read: dict[str, list[str]] = {}
    impressions, imp_where = impressions_frame(cfg.impressions, read)
    users_lf, users_where = scan_table(cfg.users, "users", read)
    items, items_where = items_frame(cfg.items, read)
    files = {"impressions": imp_where, "users": users_where, "items": items_where}
    history = None
    if cfg.history is not None:
        history, files["history"] = history_frame(cfg.history, read)
    read.pop("impressions")  # RawTables.inputs lists the entity tables' files only
    return RawTables(impressions=impressions, users=_collect(users_lf, users_where), items=items, history=history,
                     source="files", files=files, inputs=read)

