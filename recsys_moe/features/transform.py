"""Apply a FeatureSpec: raw impressions -> model-ready Parquet, one split directory each.

Output columns: ``impression_id``, ``timestamp``, ``raw_user_id``, ``raw_item_id``, one column
per feature (Int64 index for ids, List[Int64] for lists, Float32 for numerics, plus
``<name>__missing`` Float32 when asked), and the labels ``click`` and ``watch_time_s`` (Float32).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from recsys_moe.atomic import replacing
from recsys_moe.config import FeatureDef, SplitConfig
from recsys_moe.data.raw import RawTables
from recsys_moe.features.enrich import Replay, initial_state
from recsys_moe.features.fit import FeatureError, check_sources, numeric_pre_standardize
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import OOV_INDEX, FeatureSpec, TableSpec

META_COLUMNS = ("impression_id", "timestamp", "raw_user_id", "raw_item_id")
LABEL_COLUMNS = ("click", "watch_time_s")


def _map_ids(x: pl.Expr, table: TableSpec) -> pl.Expr:
    """Raw id -> embedding index: vocabulary 1..V, hash buckets V+1..V+H, else OOV (0)."""
    x = x.cast(pl.String) if table.dtype == "str" else x.cast(pl.Int64)
    idx = pl.Series(range(1, len(table.vocab) + 1), dtype=pl.Int64)
    mapped = x.replace_strict(table.vocab, idx, default=None, return_dtype=pl.Int64)
    if table.hash_buckets:
        bucket = len(table.vocab) + 1 + (x % table.hash_buckets)
        mapped = pl.when(mapped.is_null() & x.is_not_null()).then(bucket).otherwise(mapped)
    return mapped.fill_null(OOV_INDEX)


def feature_exprs(spec: FeatureSpec) -> list[pl.Expr]:
    """The expressions that turn enriched columns into model inputs (shared by every job)."""
    exprs: list[pl.Expr] = []
    for f in spec.features.features:
        if f.kind == "id":
            exprs.append(_map_ids(pl.col(f.source), spec.tables[f.table_name]).alias(f.name))
        elif f.kind == "id_list":
            table = spec.tables[f.table_name]
            exprs.append(
                pl.col(f.source).fill_null([]).list.head(f.max_len)
                .list.eval(_map_ids(pl.element(), table)).cast(pl.List(pl.Int64)).alias(f.name)
            )
        else:
            exprs.extend(_numeric_exprs(f, spec.numeric_stats[f.name]))
    return exprs


def _numeric_exprs(f: FeatureDef, stats: dict[str, float]) -> list[pl.Expr]:
    x = numeric_pre_standardize(f)
    if "standardize" in f.transform:
        x = (x - stats["mean"]) / stats["std"]
    out = [x.fill_null(f.default).cast(pl.Float32).alias(f.name)]
    if f.missing_indicator:
        out.append(numeric_pre_standardize(f).is_null().cast(pl.Float32).alias(f"{f.name}__missing"))
    return out


def _stat_exprs(spec: FeatureSpec) -> list[pl.Expr]:
    """Per feature: rows with a null source, and id values that fell to OOV.

    Runs on the enriched frame with the mapped features added under ``__out_<name>``."""
    out = []
    for f in spec.features.features:
        mapped = pl.col(f"__out_{f.name}")
        out.append(pl.col(f.source).is_null().sum().alias(f"{f.name}:null"))
        if f.kind == "id":
            out.append(((mapped == OOV_INDEX) & pl.col(f.source).is_not_null()).sum().alias(f"{f.name}:oov"))
            out.append(pl.col(f.source).is_not_null().sum().alias(f"{f.name}:values"))
        elif f.kind == "id_list":
            out.append(mapped.list.eval((pl.element() == OOV_INDEX).sum()).list.sum().sum().alias(f"{f.name}:oov"))
            out.append(mapped.list.len().sum().alias(f"{f.name}:values"))
    return out


def apply_spec(enriched: pl.DataFrame, spec: FeatureSpec) -> tuple[pl.DataFrame, dict[str, int]]:
    """Model-ready rows from enriched rows (row order kept), with per-feature counts."""
    feats = enriched.select(feature_exprs(spec))
    stats: dict[str, int] = {}
    if enriched.height:
        with_out = enriched.with_columns(feats.select(pl.all().name.prefix("__out_")))
        stats = {k: int(v or 0) for k, v in with_out.select(_stat_exprs(spec)).row(0, named=True).items()}
    meta = enriched.select(
        "impression_id",
        "timestamp",
        pl.col("user_id").alias("raw_user_id"),
        pl.col("item_id").alias("raw_item_id"),
    )
    labels = enriched.select(pl.col("click").cast(pl.Float32), pl.col("watch_time_s").cast(pl.Float32))
    return pl.concat([meta, feats, labels], how="horizontal"), stats


@dataclass
class TransformSummary:
    out_dir: Path
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
    out_dir: str | Path,
    state: HistoryState | None = None,
    on_day: Callable[[str, int], None] | None = None,
    overwrite: bool = False,
) -> TransformSummary:
    """Replay the log once, writing ``out_dir/{train,validation,test}/part-*.parquet``.

    Rows outside the split windows only advance the point-in-time state. The final state is
    saved to ``out_dir/state`` so later jobs can continue the history. The output directory is
    built under a temporary name and renamed into place when complete.
    """
    check_sources(spec.features, raw)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    windows = split.windows()
    start = time.perf_counter()
    summary = TransformSummary(out_dir=out_dir, rows_out=dict.fromkeys(windows, 0))
    parts = dict.fromkeys(windows, 0)
    hist = spec.features.history
    replay = Replay(raw, state or initial_state(raw, hist.max_len, hist.long_watch_s), spec.features.chunk_rows)
    with replacing(out_dir) as tmp:
        for name in windows:
            (tmp / name).mkdir(parents=True)
        last = max(w.end for w in windows.values())
        for day, chunk in replay.days(last_day=last):
            summary.rows_in += chunk.height
            split_name = next((n for n, w in windows.items() if w.start <= day <= w.end), None)
            if on_day:
                on_day(str(day), chunk.height)
            if split_name is None or not chunk.height:
                continue
            rows, counts = apply_spec(chunk, spec)
            for k, v in counts.items():
                summary.counts[k] = summary.counts.get(k, 0) + v
            rows.write_parquet(tmp / split_name / f"part-{parts[split_name]:05d}.parquet")
            parts[split_name] += 1
            summary.rows_out[split_name] += rows.height
        empty = [n for n, c in summary.rows_out.items() if c == 0]
        if empty:
            raise FeatureError(f"split window(s) {empty} have no impressions in {raw.source} data; check split.* dates")
        replay.state.save(tmp / "state")
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
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    return summary
