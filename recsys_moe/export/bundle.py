"""An export bundle: a trained model folder (or an MLflow training run) -> the folder scoring
reads, parity-checked, and optionally registered.

Bundle folder (default ``<work_dir>/export/<model.kind>``)::

    model.onnx      the twin, with metadata (FeatureSpec hash, score exponents, outputs, opset)
    model.fp16.onnx with fp16: a float16 copy for GPU serving, parity-checked within 2e-3
    feature_spec/   the FeatureSpec the model expects (the scoring job refuses any other)
    parity.json     the parity report

The ``score`` output uses the config's ``evaluation.score_exponents`` (the serving contract,
:mod:`recsys_moe.contract`). Registration is :func:`recsys_moe.registry.register`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe import contract, registry
from recsys_moe.atomic import replacing
from recsys_moe.config import Config
from recsys_moe.export.onnx_export import ExportError, ParityReport, export_fp16, export_onnx
from recsys_moe.layout import WorkDir
from recsys_moe.training.artifacts import load_model


@dataclass
class ExportResult:
    onnx_path: Path
    spec_dir: Path
    parity: ParityReport
    spec_hash: str
    registered_name: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    fp16_path: Path | None = None
    fp16_parity: ParityReport | None = None


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


def export_bundle(cfg: Config, model_dir: str | Path | None = None, run_id: str | None = None, output: str | Path | None = None,
                  rows: str | Path | None = None, parity_rows: int = 10_000, register: bool = True, fp16: bool = False) -> ExportResult:
    """Export, check and write the bundle; register it when ``register`` and tracking is on."""
    layout = WorkDir.of(cfg)
    out = Path(output or layout.export_dir(cfg.model.kind))
    with tempfile.TemporaryDirectory() as tmp_name:
        if run_id is not None:
            model_dir = registry.download_training_model(cfg, run_id, Path(tmp_name))
        model_dir = Path(model_dir or layout.model_dir(cfg.model.kind))
        model, spec, meta = load_model(model_dir)
        run_id = run_id or meta.get("mlflow_run_id")
        table = read_rows(rows or layout.split_dir("test"), parity_rows)
        try:
            exponents = contract.exponents_for(model.task_names, cfg.evaluation.score_exponents)
        except contract.ContractError as exc:
            raise ExportError(f"{model_dir}: {exc}") from exc
        version_hint = {"model_kind": meta["kind"], "trained_run_id": str(run_id or ""), "model_spec_hash": meta["spec_hash"]}
        with replacing(out) as tmp_out:
            tmp_out.mkdir()
            _, report = export_onnx(model, spec, tmp_out / "model.onnx", table, metadata=version_hint, score_exponents=exponents)
            spec.save(tmp_out / "feature_spec")
            (tmp_out / "parity.json").write_text(json.dumps(report.__dict__, indent=2))
            report16 = None
            if fp16:
                _, report16 = export_fp16(model, spec, tmp_out / "model.onnx", tmp_out / "model.fp16.onnx", table)
                (tmp_out / "parity_fp16.json").write_text(json.dumps(report16.__dict__, indent=2))
    result = ExportResult(out / "model.onnx", out / "feature_spec", report, spec_hash=spec.content_hash, run_id=run_id,
                          fp16_path=out / "model.fp16.onnx" if fp16 else None, fp16_parity=report16)
    if register and cfg.tracking.enabled:
        result.registered_name, result.registered_version, result.run_id = registry.register(
            cfg, result.onnx_path, result.spec_dir, spec.content_hash, run_id, logged={"export/parity.json": report.__dict__})
    return result
