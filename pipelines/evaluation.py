"""Offline evaluation job: score a time-held-out split with one model (and optionally others on
the same rows), compute every metric, write metrics JSON + Markdown + HTML reports with plots,
log them to MLflow, and check the configured quality gates.

Output folder (default ``<work_dir>/evaluate/<split>``), replaced atomically::

    metrics.json   all numbers (see recsys_moe.evaluation.summary)
    report.md      tables + plots/*.png
    report.html    the same, self-contained (plots inlined)
    plots/         reliability_<task>.png, watch_<task>.png, gates.png

A model trained with another FeatureSpec than the transformed data (a champion from an earlier
day) is evaluated on the same raw rows transformed with its own spec by the training transform,
cached under ``<work_dir>/evaluate/features/<spec hash>-<split windows hash>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe.atomic import replacing
from recsys_moe.config import Config
from recsys_moe.evaluation import plots, report
from recsys_moe.evaluation.predict import OnnxPredictor, Predictor, TorchPredictor
from recsys_moe.evaluation.summary import (
    EvalRows,
    check_gates,
    clean,
    compare_models,
    evaluate_predictions,
    headline,
)
from recsys_moe.features.spec import FeatureSpec

log = logging.getLogger(__name__)
KEYS = ("impression_id", "raw_user_id", "raw_item_id", "click", "watch_time_s")


class EvaluationError(ValueError):
    """The evaluation cannot run (missing model or rows, rows that differ between models, ...)."""


@dataclass
class EvalResult:
    output: Path
    metrics: dict[str, Any]
    headline: dict[str, float]
    failed_gates: list[str]
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def load_predictor(cfg: Config, model: str, cache: Path, providers: str = "auto") -> Predictor:
    """``models:/...`` or ``*.onnx`` -> ONNX Runtime; a model folder or ``*.ckpt`` -> torch."""
    from pipelines.batch_scoring import ScoringError, resolve_model

    path = Path(model)
    if model.startswith("models:/") or path.suffix == ".onnx":
        try:
            onnx_path, spec_dir, label = resolve_model(cfg, model, cache / f"model-{abs(hash(model))}")
        except ScoringError as exc:
            raise EvaluationError(str(exc)) from exc
        return OnnxPredictor.load(onnx_path, spec_dir, label, providers)
    if (path.suffix == ".ckpt" and path.is_file()) or (path / "model.json").is_file():
        return TorchPredictor.load(path)
    raise EvaluationError(f"{model}: not a model folder, .ckpt, .onnx file or models:/ URI")


def _manifest_hash(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / "MANIFEST.json").read_text()).get("spec_hash")
    except (OSError, json.JSONDecodeError):
        return None


def features_cache_dir(cfg: Config, spec: FeatureSpec) -> Path:
    """Where rows transformed with ``spec`` for this config's split windows are kept."""
    windows = hashlib.sha256(json.dumps(cfg.split.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
    return cfg.experiment.work_dir / "evaluate" / "features" / f"{spec.content_hash}-{windows}"


def features_for(cfg: Config, spec: FeatureSpec, data_dir: Path, notes: list[str]) -> Path:
    """Model-ready rows transformed with ``spec``: ``data_dir`` when it was, else a cached
    transform of the configured raw data with that spec (made on first use)."""
    if _manifest_hash(data_dir) == spec.content_hash:
        return data_dir
    cached = features_cache_dir(cfg, spec)
    if _manifest_hash(cached) != spec.content_hash:
        from recsys_moe.data.raw import load_raw
        from recsys_moe.features import transform

        notes.append(f"FeatureSpec {spec.content_hash} differs from {data_dir}'s; transformed the raw log with it into {cached}")
        transform(load_raw(cfg.data), spec, cfg.split, cached, overwrite=True, chunk_rows=cfg.features.chunk_rows)
    return cached


def read_split(data_dir: Path, split: str, columns: Sequence[str]) -> pa.Table:
    files = sorted((data_dir / split).glob("*.parquet"))
    if not files:
        raise EvaluationError(f"{data_dir / split}: no Parquet files; run `recsys-moe features transform` first")
    missing = [c for c in columns if c not in pq.read_schema(files[0]).names]
    if missing:
        raise EvaluationError(f"{files[0]}: columns {missing} missing")
    table = pa.concat_tables(pq.read_table(f, columns=list(columns)) for f in files)
    if table.num_rows == 0:
        raise EvaluationError(f"{data_dir / split}: the split has no rows")
    return table


def _column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(table.column(name).combine_chunks(), dtype=dtype)


def _counts_of(seen: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How often each of ``keys`` occurs in ``seen`` (0 for keys never seen)."""
    uniq, counts = np.unique(seen, return_counts=True)
    if uniq.size == 0:
        return np.zeros(keys.size, dtype=np.int64)
    pos = np.clip(np.searchsorted(uniq, keys), 0, uniq.size - 1)
    return np.where(uniq[pos] == keys, counts[pos], 0)


def _rows(table: pa.Table, data_dir: Path) -> EvalRows:
    """Keys and labels of ``table``, with each user's and item's train-window impressions (one
    read of the train split's two key columns)."""
    user, item = _column(table, "raw_user_id", np.int64), _column(table, "raw_item_id", np.int64)
    files = sorted((data_dir / "train").glob("*.parquet"))
    train = pa.concat_tables(pq.read_table(f, columns=["raw_user_id", "raw_item_id"]) for f in files) if files else None
    seen = {c: _column(train, c, np.int64) if train is not None else np.zeros(0, np.int64) for c in ("raw_user_id", "raw_item_id")}
    return EvalRows(
        impression_id=_column(table, "impression_id", np.int64), user=user, item=item,
        click=_column(table, "click", np.float64), watch_time_s=_column(table, "watch_time_s", np.float64),
        user_train_count=_counts_of(seen["raw_user_id"], user), item_train_count=_counts_of(seen["raw_item_id"], item),
    )


def _needed(spec: FeatureSpec) -> list[str]:
    return list(dict.fromkeys([*KEYS, *spec.id_features, *spec.list_features, *spec.dense_columns]))


def _align(preds: dict[str, np.ndarray], ids: np.ndarray, want: np.ndarray, label: str) -> dict[str, np.ndarray]:
    """Reorder another model's predictions to the primary's impression order."""
    if ids.size == want.size and np.array_equal(ids, want):
        return preds
    order_have, order_want = np.argsort(ids, kind="stable"), np.argsort(want, kind="stable")
    if ids.size != want.size or not np.array_equal(ids[order_have], want[order_want]):
        raise EvaluationError(f"{label}: its rows are not the same impressions as the evaluated model's")
    idx = np.empty_like(order_want)
    idx[order_want] = order_have
    return {t: p[idx] for t, p in preds.items()}


def _oracle(cfg: Config, rows: EvalRows, kinds: dict[str, str]) -> dict[str, np.ndarray] | None:
    """The synthetic generator's true click probability / expected watch seconds per row."""
    if cfg.data.source != "synthetic":
        return None
    import polars as pl

    from recsys_moe.data.raw import load_raw

    oracle = load_raw(cfg.data, validate=False).oracle
    if oracle is None:
        return None
    ids = pl.DataFrame({"impression_id": rows.impression_id})
    got = ids.join(oracle.collect(), on="impression_id", how="left", maintain_order="left")
    if got["true_ctr"].null_count():
        return None
    first = {"binary": got["true_ctr"].to_numpy(), "watch_time": got["true_watch_time_s"].to_numpy()}
    out: dict[str, np.ndarray] = {}
    for t, kind in kinds.items():
        if kind in first:
            out[t] = first.pop(kind).astype(np.float64)  # the first task of each kind only
    return out


def _plots(result: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    made: dict[str, Path] = {}
    p = result["primary"]
    named = [("this model", p)]
    if result.get("oracle"):
        named.append(("oracle", result["oracle"]))
    named += [(c["model"], c["metrics"]) for c in result.get("comparisons", [])]
    for t, kind in result["task_kinds"].items():
        if kind == "binary":
            curves = {n: mm["tasks"][t]["reliability"] for n, mm in named if "reliability" in mm["tasks"].get(t, {})}
            made[f"reliability_{t}"] = plots.reliability(curves, plot_dir / f"reliability_{t}.png", f"{t}: reliability ({result['split']})")
        else:
            curves = {n: mm["tasks"][t]["binned"] for n, mm in named if "binned" in mm["tasks"].get(t, {})}
            made[f"watch_{t}"] = plots.watch_time(curves, plot_dir / f"watch_{t}.png", f"{t}: predicted vs observed ({result['split']})")
    if result.get("gates"):
        made["gates"] = plots.gate_heatmap(result["gates"], plot_dir / "gates.png", f"mean gate weight ({result['split']})")
    return made


def _deltas(a: dict[str, float], b: dict[str, float]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for k in a:
        if k in b and not k.endswith(("_users", "_pairs")):
            d = a[k] - b[k]
            out[k] = {"this": a[k], "other": b[k], "delta": None if d != d else d}
    return out


def evaluate(cfg: Config, model: str, compare: Sequence[str] = (), split: str | None = None, output: str | Path | None = None,
             data_dir: str | Path | None = None, track: bool = True, providers: str = "auto",
             on_step: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``model`` (and ``compare`` models on the same rows); see the module docstring."""
    step = on_step or (lambda _msg: None)
    split = split or cfg.evaluation.split
    ecfg = cfg.evaluation
    out = Path(output or cfg.experiment.work_dir / "evaluate" / split)
    base_data = Path(data_dir or cfg.experiment.work_dir / "features" / "data")
    notes: list[str] = []
    start = time.perf_counter()
    # matplotlib takes 0.7 s to import; the report needs it last, so it loads meanwhile
    threading.Thread(target=plots.load_matplotlib, name="import-matplotlib", daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp_name:
        cache = Path(tmp_name)
        step(f"loading {model}")
        primary = load_predictor(cfg, model, cache, providers)
        others = [load_predictor(cfg, c, cache, providers) for c in compare]
        step("reading rows")
        data = features_for(cfg, primary.spec, base_data, notes)
        table = read_split(data, split, _needed(primary.spec))
        rows = _rows(table, data)
        step(f"predicting {rows.click.size:,} rows")
        pred = primary.predict(table)
        del table
        step("computing metrics")
        oracle = _oracle(cfg, rows, primary.task_kinds)
        with ThreadPoolExecutor(1, thread_name_prefix="oracle-metrics") as pool:
            # the metrics are numpy sorts on one core: the oracle's run on the other meanwhile
            oracle_metrics = pool.submit(
                evaluate_predictions, oracle, {t: primary.task_kinds[t] for t in oracle}, rows, ecfg, cfg.experiment.seed,
                with_segments=False) if oracle else None
            result: dict[str, Any] = {
                "model": primary.label, "model_form": primary.kind, "split": split,
                "window": [str(d) for d in (cfg.split.windows()[split].start, cfg.split.windows()[split].end)],
                "spec_hash": primary.spec.content_hash, "training_run_id": primary.training_run_id,
                "task_kinds": primary.task_kinds,
                "primary": evaluate_predictions(pred.tasks, primary.task_kinds, rows, ecfg, cfg.experiment.seed),
                "gates": pred.gates,
                "gates_note": "This model form (ONNX) returns predictions only; evaluate the model folder or checkpoint for gate weights.",
            }
            if oracle_metrics is not None:
                result["oracle"] = oracle_metrics.result()
        flat = headline(result["primary"])
        result["comparisons"] = []
        for other in others:
            step(f"comparing with {other.label}")
            other_data = features_for(cfg, other.spec, base_data, notes)
            other_table = read_split(other_data, split, _needed(other.spec))
            ids = _column(other_table, "impression_id", np.int64)
            other_pred = _align(other.predict(other_table).tasks, ids, rows.impression_id, other.label)
            kinds = {t: k for t, k in primary.task_kinds.items() if t in other_pred}
            other_metrics = evaluate_predictions(other_pred, kinds, rows, ecfg, cfg.experiment.seed, with_segments=False)
            result["comparisons"].append({
                "model": other.label, "metrics": other_metrics, "deltas": _deltas(flat, headline(other_metrics)),
                "ci": compare_models(pred.tasks, other_pred, kinds, rows, ecfg, cfg.experiment.seed),
            })
        collapsed = (pred.gates or {}).get("collapsed_experts")
        failed = check_gates(flat, ecfg, collapsed)
        result["quality_gates"] = {"checked": [g.metric for g in ecfg.gates] + (["no collapse"] if ecfg.fail_on_collapse else []),
                                   "failed": failed}
        result["notes"] = notes
        result["evaluated_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        result["seconds"] = time.perf_counter() - start
        result = clean(result)
        step("writing reports")
        with replacing(out) as tmp:
            tmp.mkdir(parents=True)
            made = _plots(result, tmp / "plots")
            (tmp / "metrics.json").write_text(json.dumps(result, indent=2))
            doc = report.blocks(result, made)
            (tmp / "report.md").write_text(report.to_markdown(doc, tmp))
            (tmp / "report.html").write_text(report.to_html(doc))
    run_id = _track(cfg, out, split, result, flat) if track and cfg.tracking.enabled else None
    return EvalResult(out, result, flat, failed, run_id, notes)


def _track(cfg: Config, out: Path, split: str, result: dict[str, Any], flat: dict[str, float]) -> str:
    """A run of its own per evaluation (tag ``job=evaluate``), so evaluating an old champion never
    changes that champion's training run."""
    from mlflow.entities import Metric

    from recsys_moe import tracking

    c = tracking.client(cfg)
    run = c.create_run(tracking.experiment_id(cfg), run_name=f"evaluate-{split}", tags={
        "job": "evaluate", "model": result["model"], "split": split, "feature_spec_hash": result["spec_hash"],
        "training_run_id": result.get("training_run_id") or "", "git_commit": tracking.git_commit(),
        "quality_gates": "failed" if result["quality_gates"]["failed"] else "passed",
    })
    now = int(time.time() * 1000)
    metrics = [Metric(f"{split}/{k}", v, now, 0) for k, v in flat.items() if v == v]
    for i in range(0, len(metrics), 500):
        c.log_batch(run.info.run_id, metrics=metrics[i: i + 500])
    c.log_artifacts(run.info.run_id, str(out), "evaluation")
    c.set_terminated(run.info.run_id, "FINISHED")  # the job ran; the gate verdict is the tag
    return run.info.run_id
