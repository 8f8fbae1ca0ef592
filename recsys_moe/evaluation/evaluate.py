"""Offline evaluation: score a time-held-out split with one model (and optionally others on the
same rows), compute every metric, write metrics JSON + Markdown + HTML reports with plots, and
check the configured quality gates. (MLflow logging: :mod:`recsys_moe.evaluation.tracking`.)

Output folder (default ``<work_dir>/evaluate/<split>``), replaced atomically::

    metrics.json        all numbers (see recsys_moe.evaluation.summary)
    predictions.parquet impression_id, each task's prediction and the ranking score per row
    report.md           tables + plots/*.png
    report.html         the same, self-contained (plots inlined)
    plots/              reliability_<task>.png, watch_<task>.png, gates.png

The ranking score (NDCG) is the model's own ``score`` output for an ONNX model, whose exponents
must match ``evaluation.score_exponents`` (:func:`recsys_moe.contract.check_exponents`), and the
same product computed by :func:`recsys_moe.contract.ranking_score` for a torch model.

A model trained with another FeatureSpec than the transformed data (a champion from an earlier
day) is evaluated on the same raw rows transformed with its own spec by the training transform,
cached under ``<work_dir>/evaluate/features/<spec hash>-<split windows hash>``.
"""

from __future__ import annotations

import datetime as dt
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

from recsys_moe import contract
from recsys_moe.atomic import replacing, write_parquet
from recsys_moe.config import Config
from recsys_moe.evaluation import plots, report
from recsys_moe.evaluation.predict import (
    ModelPredictions,
    OnnxPredictor,
    PredictError,
    Predictor,
    TorchPredictor,
)
from recsys_moe.evaluation.summary import (
    EvalRows,
    check_gates,
    clean,
    compare_models,
    evaluate_predictions,
    headline,
)
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.layout import WorkDir
from recsys_moe.registry import RegistryError, resolve

log = logging.getLogger(__name__)
KEYS = (contract.IMPRESSION_ID, contract.RAW_USER_ID, contract.RAW_ITEM_ID, *contract.LABEL_COLUMNS)


class EvaluationError(ValueError):
    """The evaluation cannot run (missing model or rows, rows that differ between models, ...)."""


@dataclass
class EvalResult:
    output: Path
    metrics: dict[str, Any]
    headline: dict[str, float]
    """Flat ``<task>/<metric>`` and ``ranking/...`` numbers (what gates and promotion read)."""
    failed_gates: list[str]
    run_id: str | None = None
    """The MLflow run :func:`recsys_moe.evaluation.tracking.log_evaluation` logged it to."""
    notes: list[str] = field(default_factory=list)

    @property
    def split(self) -> str:
        return self.metrics["split"]


def load_predictor(cfg: Config, model: str, cache: Path, providers: str = "auto", precision: str = "fp32") -> Predictor:
    """``models:/...`` or ``*.onnx`` -> ONNX Runtime (its score exponents checked against the
    config's); a model folder or ``*.ckpt`` -> torch, scored with the config's exponents."""
    path = Path(model)
    exponents = cfg.evaluation.score_exponents
    try:
        if model.startswith("models:/") or path.suffix == ".onnx":
            resolved = resolve(cfg, model, cache / f"model-{abs(hash(model))}", precision)
            return OnnxPredictor.load(resolved.onnx_path, resolved.spec_dir, resolved.label, providers, exponents, resolved.cost_path)
        if (path.suffix == ".ckpt" and path.exists()) or (path / "model.json").is_file():
            return TorchPredictor.load(path, exponents=exponents)
    except (RegistryError, contract.ContractError, PredictError) as exc:
        raise EvaluationError(str(exc)) from exc
    raise EvaluationError(f"{model}: not a model folder, .ckpt, .onnx file or models:/ URI")


def _manifest_hash(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / "MANIFEST.json").read_text()).get("spec_hash")
    except (OSError, json.JSONDecodeError):
        return None


def features_cache_dir(cfg: Config, spec: FeatureSpec) -> Path:
    """Where rows transformed with ``spec`` for this config's split windows are kept."""
    return WorkDir.of(cfg).evaluate_features_dir(cfg, spec.content_hash)


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


def _align(pred: ModelPredictions, ids: np.ndarray, want: np.ndarray, label: str) -> ModelPredictions:
    """Reorder another model's predictions to the primary's impression order."""
    if ids.size == want.size and np.array_equal(ids, want):
        return pred
    order_have, order_want = np.argsort(ids, kind="stable"), np.argsort(want, kind="stable")
    if ids.size != want.size or not np.array_equal(ids[order_have], want[order_want]):
        raise EvaluationError(f"{label}: its rows are not the same impressions as the evaluated model's")
    idx = np.empty_like(order_want)
    idx[order_want] = order_have
    return ModelPredictions({t: p[idx] for t, p in pred.tasks.items()}, pred.score[idx], pred.gates)


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
             data_dir: str | Path | None = None, providers: str = "auto", precision: str = "fp32",
             on_step: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``model`` (and ``compare`` models on the same rows); see the module docstring."""
    step = on_step or (lambda _msg: None)
    split = split or cfg.evaluation.split
    ecfg = cfg.evaluation
    layout = WorkDir.of(cfg)
    out = Path(output or layout.evaluate_dir(split))
    base_data = Path(data_dir or layout.features_dir)
    notes: list[str] = []
    start = time.perf_counter()
    # matplotlib is slow to import and the report needs it last, so it loads meanwhile
    threading.Thread(target=plots.load_matplotlib, name="import-matplotlib", daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp_name:
        cache = Path(tmp_name)
        step(f"loading {model}")
        primary = load_predictor(cfg, model, cache, providers, precision)
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
                with_segments=False,
                score=contract.ranking_score(oracle, {t: a for t, a in ecfg.score_exponents.items() if t in oracle}),
            ) if oracle else None
            result: dict[str, Any] = {
                "model": primary.label, "model_form": primary.kind, "split": split,
                "window": [str(d) for d in (cfg.split.windows()[split].start, cfg.split.windows()[split].end)],
                "spec_hash": primary.spec.content_hash, "training_run_id": primary.training_run_id,
                "task_kinds": primary.task_kinds,
                "primary": evaluate_predictions(pred.tasks, primary.task_kinds, rows, ecfg, cfg.experiment.seed, score=pred.score),
                "gates": pred.gates,
                "serving_cost": primary.cost,
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
            other_pred = _align(other.predict(other_table), ids, rows.impression_id, other.label)
            kinds = {t: k for t, k in primary.task_kinds.items() if t in other_pred.tasks}
            other_metrics = evaluate_predictions(other_pred.tasks, kinds, rows, ecfg, cfg.experiment.seed, with_segments=False,
                                                 score=other_pred.score)
            result["comparisons"].append({
                "model": other.label, "metrics": other_metrics, "deltas": _deltas(flat, headline(other_metrics)),
                "ci": compare_models(pred.tasks, other_pred.tasks, kinds, rows, ecfg, cfg.experiment.seed),
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
            write_parquet(_predictions_frame(rows, pred, primary), tmp / "predictions.parquet")
            doc = report.blocks(result, made)
            (tmp / "report.md").write_text(report.to_markdown(doc, tmp))
            (tmp / "report.html").write_text(report.to_html(doc))
    return EvalResult(out, result, flat, failed, notes=notes)


def _predictions_frame(rows: EvalRows, pred: ModelPredictions, model: Predictor):
    """One row per evaluated impression: its predictions as the model outputs them, and the score."""
    import polars as pl

    columns = {contract.IMPRESSION_ID: rows.impression_id}
    columns |= {contract.prediction_name(t, model.task_kinds[t]): p.astype(np.float32) for t, p in pred.tasks.items()}
    columns[contract.SCORE] = pred.score.astype(np.float32)
    return pl.DataFrame(columns)
