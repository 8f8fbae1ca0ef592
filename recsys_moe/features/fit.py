"""Fit a FeatureSpec: vocabularies and numeric statistics from the training window only."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from recsys_moe.config import Config, FeatureDef, FeaturesConfig, Window
from recsys_moe.data.schema import RawDataError
from recsys_moe.data.tables import RawTables
from recsys_moe.features.enrich import Replay, available_columns, initial_state
from recsys_moe.features.pointintime import POINT_IN_TIME_COLUMNS
from recsys_moe.features.spec import FeatureSpec, TableSpec

# History lists hold item ids, which are embedded with the table of a direct feature
# (e.g. item_id); they never grow a vocabulary of their own.
_LIST_SOURCES_WITHOUT_VOCAB = {"hist_click_items", "hist_long_watch_items", "hist_click_categories"}


class FeatureError(ValueError):
    """A feature definition cannot be fitted or applied to this data."""


def check_sources(features: FeaturesConfig, raw: RawTables) -> None:
    """Every feature's source exists and has a type that fits its kind."""
    cols = available_columns(raw)
    for f in features.features:
        if f.source not in cols:
            raise RawDataError(
                f"{raw.source} raw tables", f.source,
                f"feature {f.name!r} reads a column that is in no table (impressions, users, items, derived, point-in-time)",
            )
        dtype = cols[f.source]
        ok = {
            "numeric": dtype.is_numeric() or dtype == pl.Boolean,
            "id": dtype.is_numeric() or dtype in (pl.String, pl.Categorical) or dtype == pl.Boolean,
            "id_list": isinstance(dtype, pl.List) and (dtype.inner.is_integer() or dtype.inner == pl.String),
        }[f.kind]
        if not ok:
            raise RawDataError(f"{raw.source} raw tables", f.source, f"feature {f.name!r} of kind {f.kind} cannot read type {dtype}")
        if f.hash_buckets and not (dtype.is_integer() or (isinstance(dtype, pl.List) and dtype.inner.is_integer())):
            raise FeatureError(f"feature {f.name!r}: hash_buckets need integer ids (stable modulo hashing), {f.source} is {dtype}")
    tables = {f.table_name for f in features.features if f.kind != "numeric"}
    for t in tables:
        if all(f.source in _LIST_SOURCES_WITHOUT_VOCAB for f in features.features if f.table_name == t and f.kind != "numeric"):
            raise FeatureError(f"table {t!r} is only read by history features; share it with a direct feature (e.g. table: item)")


def dtype_is_str(dtype: pl.DataType) -> bool:
    inner = dtype.inner if isinstance(dtype, pl.List) else dtype
    return inner in (pl.String, pl.Categorical) or isinstance(inner, (pl.Categorical, pl.Enum))


def value_expr(f: FeatureDef, dtype: pl.DataType) -> pl.Expr:
    """The (possibly exploded) raw id values a feature contributes, as Int64 or String.

    Float ids (some exports store small categoricals as floats) are truncated to integers."""
    col = pl.col(f.source)
    if f.kind == "id_list":
        col = col.list.head(f.max_len).explode()
    return col.cast(pl.String) if dtype_is_str(dtype) else col.cast(pl.Int64)


def numeric_pre_standardize(f: FeatureDef) -> pl.Expr:
    """Clip, then every transform before ``standardize``; log1p of a negative value uses 0."""
    x = pl.col(f.source).cast(pl.Float64)
    x = pl.when(x.is_nan()).then(None).otherwise(x)
    if f.clip:
        x = x.clip(f.clip[0], f.clip[1])
    for t in f.transform:
        if t == "log1p":
            x = x.clip(lower_bound=0.0).log1p()
    return x


def _in_window(window: Window) -> pl.Expr:
    d = pl.col("timestamp").dt.date()
    return (d >= window.start) & (d <= window.end)


def fit(raw: RawTables, cfg: Config, on_day: Callable[[str, int], None] | None = None) -> FeatureSpec:
    """Replay the log up to the end of the train window and learn vocabularies and statistics
    from the train-window rows only."""
    features = cfg.features
    if not features.features:
        raise FeatureError("config has no features (features.features is empty)")
    check_sources(features, raw)
    window = cfg.split.train
    replay = Replay(raw, initial_state(raw, features.history.max_len, features.history.long_watch_s), features.chunk_rows)
    counts: dict[str, list[pl.DataFrame]] = {}
    moments: dict[str, list[tuple[float, float, int, int]]] = {}
    rows = 0
    vocab_features = [f for f in features.features if f.kind != "numeric" and f.source not in _LIST_SOURCES_WITHOUT_VOCAB]
    numeric = [f for f in features.features if f.kind == "numeric"]
    for day, chunk in replay.days(last_day=window.end):
        part = chunk.filter(_in_window(window))
        if on_day:
            on_day(str(day), part.height)
        if not part.height:
            continue
        rows += part.height
        for f in vocab_features:
            vals = part.select(value_expr(f, part.schema[f.source]).alias("value"))
            counts.setdefault(f.table_name, []).append(vals.drop_nulls().group_by("value").agg(n=pl.len()))
        for f in numeric:
            x = part.select(numeric_pre_standardize(f).alias("x"))["x"]
            moments.setdefault(f.name, []).append(
                (float(x.sum() or 0.0), float((x * x).sum() or 0.0), x.len() - x.null_count(), x.len())
            )
    if rows == 0:
        raise FeatureError(f"train window {window.start}..{window.end} has no impressions in {raw.source} data")
    tables: dict[str, TableSpec] = {}
    for f in vocab_features:
        if f.table_name in tables:
            continue
        sharing = [g for g in vocab_features if g.table_name == f.table_name]
        frames = counts.get(f.table_name, [])
        total = pl.concat(frames).group_by("value").agg(pl.col("n").sum()) if frames else None
        if total is None or total.height == 0:
            raise FeatureError(f"feature(s) {[g.name for g in sharing]}: every value is null in the train window")
        dtypes = {str(fr.schema['value']) for fr in frames}
        if len(dtypes) > 1:
            raise FeatureError(f"table {f.table_name!r}: features mix id types {sorted(dtypes)}")
        min_count = max(g.min_count for g in sharing)
        max_vocab = min((g.max_vocab for g in sharing if g.max_vocab), default=None)
        kept = total.filter(pl.col("n") >= min_count).sort(["n", "value"], descending=[True, False])
        if max_vocab:
            kept = kept.head(max_vocab)
        vocab = kept["value"].sort()
        tables[f.table_name] = TableSpec(
            name=f.table_name, dim=f.dim, dtype="str" if vocab.dtype == pl.String else "int",
            vocab=vocab, hash_buckets=max(g.hash_buckets for g in sharing),
        )
    stats: dict[str, dict[str, float]] = {}
    for f in numeric:
        s, ss, n, total_rows = (sum(m[i] for m in moments.get(f.name, [])) for i in range(4))
        if n == 0:
            raise FeatureError(f"numeric feature {f.name!r} (source {f.source!r}) is null in every train-window row")
        mean = s / n
        std = max((ss / n - mean * mean), 0.0) ** 0.5
        stats[f.name] = {"mean": mean, "std": std if std > 1e-12 else 1.0, "null_rate": 1 - n / total_rows}
    for f in features.features:
        if f.kind != "numeric" and f.source in POINT_IN_TIME_COLUMNS and f.table_name not in tables:
            raise FeatureError(f"feature {f.name!r}: table {f.table_name!r} has no vocabulary")
    return FeatureSpec(
        features=features, tables=tables, numeric_stats=stats,
        train_window=(str(window.start), str(window.end)), source=raw.source, rows_fitted=rows,
        meta={"config_hash": cfg.content_hash(), "experiment": cfg.experiment.name},
    )
