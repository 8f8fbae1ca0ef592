"""An export bundle: a trained model folder (or an MLflow training run) -> the folder scoring
reads, parity-checked, optionally made smaller, and optionally registered.

Bundle folder (default ``<work_dir>/export/<model.kind>``)::

    model.onnx       the twin, with metadata (FeatureSpec hash, score exponents, outputs, opset);
                     with expert pruning, the pruned model when it passed the quality gate
    model.fp16.onnx  with fp16: a float16 copy for GPU serving, parity-checked within 2e-3
    model.int8.onnx  with int8: row-wise INT8 embedding tables, when it passed the quality gate
    feature_spec/    the FeatureSpec the model expects (the scoring job refuses any other)
    parity.json      the parity report (torch vs ONNX Runtime)
    compression.json expert usage, what was pruned, the quality gates of pruning and INT8
    cost.json        bytes of every part in fp32/fp16/int8 and FLOPs per row (:mod:`recsys_moe.models.cost`)

The ``score`` output uses the config's ``evaluation.score_exponents`` (the serving contract,
:mod:`recsys_moe.contract`). A smaller copy is kept only when it passes the quality gate of
:mod:`.quality` on the validation split (``export.max_auc_drop``, ``export.max_spearman_drop``);
otherwise the export says why, writes no such file and keeps the float32 model. Registration is
:func:`recsys_moe.registry.register`; the fp16 and INT8 files travel with the registered version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe import contract, registry
from recsys_moe.atomic import replacing
from recsys_moe.config import Config
from recsys_moe.export.onnx_export import (
    ExportError,
    ParityReport,
    export_fp16,
    export_int8,
    export_onnx,
)
from recsys_moe.export.quality import QualityReport, quality_gate
from recsys_moe.layout import WorkDir
from recsys_moe.models.cost import model_cost
from recsys_moe.training.artifacts import load_model


@dataclass
class ExportResult:
    onnx_path: Path
    spec_dir: Path
    parity: ParityReport | None
    """torch vs ONNX Runtime on held-out rows (set once model.onnx is written)."""
    spec_hash: str
    registered_name: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    fp16_path: Path | None = None
    fp16_parity: ParityReport | None = None
    int8_path: Path | None = None
    """None when INT8 was not asked for or failed its gate (see ``int8_quality``)."""
    int8_quality: QualityReport | None = None
    pruned_experts: list[int] = field(default_factory=list)
    prune_quality: QualityReport | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_rows(path: str | Path, limit: int) -> pa.Table:
    """The first ``limit`` rows of a model-ready Parquet file or folder."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"{path}: no Parquet rows for the parity check; run `recsys-moe features transform`")
    tables, n = [], 0
    for f in files:
        t = pq.read_table(f)
        tables.append(t)
        n += t.num_rows
        if n >= limit:
            break
    return pa.concat_tables(tables).slice(0, limit)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def export_bundle(cfg: Config, model_dir: str | Path | None = None, run_id: str | None = None, output: str | Path | None = None,
                  rows: str | Path | None = None, parity_rows: int | None = None, register: bool = True,
                  fp16: bool | None = None, int8: bool | None = None, prune_experts: bool | None = None) -> ExportResult:
    """Export, check and write the bundle; register it when ``register`` and tracking is on. The
    ``fp16``/``int8``/``prune_experts`` arguments override the config's ``export`` section."""
    ecfg = cfg.export
    fp16 = ecfg.fp16 if fp16 is None else fp16
    int8 = ecfg.int8 if int8 is None else int8
    prune = ecfg.prune_experts if prune_experts is None else prune_experts
    layout = WorkDir.of(cfg)
    out = Path(output or layout.export_dir(cfg.model.kind))
    with tempfile.TemporaryDirectory() as tmp_name:
        if run_id is not None:
            model_dir = registry.download_training_model(cfg, run_id, Path(tmp_name))
        model_dir = Path(model_dir or layout.model_dir(cfg.model.kind))
        model, spec, meta = load_model(model_dir)
        run_id = run_id or meta.get("mlflow_run_id")
        table = read_rows(rows or layout.split_dir("test"), parity_rows or ecfg.parity_rows)
        gate_rows = read_rows(layout.split_dir("validation"), ecfg.gate_rows) if (int8 or prune) else None
        try:
            exponents = contract.exponents_for(model.task_names, cfg.evaluation.score_exponents)
        except contract.ContractError as exc:
            raise ExportError(f"{model_dir}: {exc}") from exc
        hint = {"model_kind": meta["kind"], "trained_run_id": str(run_id or ""), "model_spec_hash": meta["spec_hash"]}
        result = ExportResult(out / "model.onnx", out / "feature_spec", None, spec_hash=spec.content_hash, run_id=run_id)
        compression: dict[str, Any] = {}
        with replacing(out) as tmp_out:
            tmp_out.mkdir()
            served = model
            if prune:
                served = _prune(model, spec, table, gate_rows, exponents, hint, cfg, tmp_out, result, compression)
            if result.parity is None:  # pruning did not write model.onnx
                _, result.parity = export_onnx(model, spec, tmp_out / "model.onnx", table, metadata=hint, score_exponents=exponents)
            spec.save(tmp_out / "feature_spec")
            (tmp_out / "parity.json").write_text(json.dumps(result.parity.__dict__, indent=2))
            if fp16:
                _, result.fp16_parity = export_fp16(served, spec, tmp_out / "model.onnx", tmp_out / "model.fp16.onnx", table)
                (tmp_out / "parity_fp16.json").write_text(json.dumps(result.fp16_parity.__dict__, indent=2))
                result.fp16_path = out / "model.fp16.onnx"
            if int8:
                _int8(spec, gate_rows, cfg, tmp_out, result, compression)
            result.cost = model_cost(served)
            if result.pruned_experts:
                result.cost["before_pruning"] = model_cost(model)
            (tmp_out / "cost.json").write_text(json.dumps(result.cost, indent=2))
            if compression:
                (tmp_out / "compression.json").write_text(json.dumps(compression, indent=2))
    if register and cfg.tracking.enabled:
        extra = [p for p in (result.fp16_path, result.int8_path, out / "cost.json") if p is not None]
        logged = {"export/parity.json": result.parity.__dict__, "export/cost.json": result.cost}
        if compression:
            logged["export/compression.json"] = compression
        metrics = _metrics(result)
        result.registered_name, result.registered_version, result.run_id = registry.register(
            cfg, result.onnx_path, result.spec_dir, spec.content_hash, run_id, logged=logged, extra_models=extra, metrics=metrics)
    return result


def _prune(model, spec, table, gate_rows, exponents, hint, cfg, tmp_out: Path, result: ExportResult, compression: dict):
    """Export the pruned model as model.onnx if it passes the gate against the unpruned one;
    return the model that is served."""
    from recsys_moe.export.prune import expert_usage, experts_to_prune, pruned_copy

    ecfg = cfg.export
    usage = expert_usage(model, spec, gate_rows)
    drop = experts_to_prune(usage, ecfg.prune_threshold)
    compression["prune"] = {"threshold": ecfg.prune_threshold, "usage": usage.round(6).tolist(), "candidates": drop}
    if not drop:
        result.notes.append(f"expert pruning: no expert is under {ecfg.prune_threshold:g} of the gate weight for every task; nothing pruned")
        return model
    full = tmp_out / ".unpruned.onnx"
    _, full_parity = export_onnx(model, spec, full, table, metadata=hint, score_exponents=exponents)
    pruned = pruned_copy(model, drop)
    _, parity = export_onnx(pruned, spec, tmp_out / "model.onnx", table, score_exponents=exponents,
                            metadata={**hint, "pruned_experts": ",".join(map(str, drop))})
    q = quality_gate(full, tmp_out / "model.onnx", spec, gate_rows, "pruned", ecfg.max_auc_drop, ecfg.max_spearman_drop)
    result.prune_quality = q
    compression["prune"]["quality_gate"] = q.to_json()
    if q.passed:
        before, after = model_cost(model), model_cost(pruned)
        saved_bytes = before["bytes"]["fp32"]["total"] - after["bytes"]["fp32"]["total"]
        saved_flops = before["flops_per_row"]["total"] - after["flops_per_row"]["total"]
        result.pruned_experts, result.parity = drop, parity
        result.notes.append(f"pruned experts {drop} (under {ecfg.prune_threshold:g} of the gate weight for every task): "
                            f"{_mib(saved_bytes)} and {saved_flops:,} FLOPs per row saved; {q.summary()}")
        full.unlink()
        return pruned
    result.notes.append(f"expert pruning refused, the unpruned model is served: {q.summary()}")
    full.replace(tmp_out / "model.onnx")
    result.parity = full_parity
    return model


def _int8(spec, gate_rows, cfg, tmp_out: Path, result: ExportResult, compression: dict) -> None:
    ecfg = cfg.export
    path, _ = export_int8(tmp_out / "model.onnx", tmp_out / "model.int8.onnx", ecfg.int8_scales)
    q = quality_gate(tmp_out / "model.onnx", path, spec, gate_rows, "int8", ecfg.max_auc_drop, ecfg.max_spearman_drop)
    result.int8_quality = q
    compression["int8"] = {"quality_gate": q.to_json(), "bytes": {"fp32": (tmp_out / "model.onnx").stat().st_size,
                                                                  "int8": path.stat().st_size}}
    if q.passed:
        result.int8_path = result.onnx_path.parent / "model.int8.onnx"
        sizes = compression["int8"]["bytes"]
        result.notes.append(f"model.int8.onnx: {_mib(sizes['int8'])} against {_mib(sizes['fp32'])} in float32; {q.summary()}")
    else:
        path.unlink()
        result.notes.append(f"no INT8 copy written (the float32 model is kept): {q.summary()}")


def _metrics(result: ExportResult) -> dict[str, float]:
    """Compression figures as MLflow metrics (``export/int8/<task>/auc_drop``, ...)."""
    out: dict[str, float] = {}
    for what, q in (("int8", result.int8_quality), ("pruned", result.prune_quality)):
        if q is None:
            continue
        out[f"export/{what}/passed"] = float(q.passed)
        for task, m in q.tasks.items():
            out |= {f"export/{what}/{task}/{k}": float(v) for k, v in m.items()}
    for precision, b in result.cost.get("bytes", {}).items():
        out[f"export/bytes/{precision}"] = float(b["total"])
    if result.cost:
        out["export/flops_per_row"] = float(result.cost["flops_per_row"]["total"])
    return out
