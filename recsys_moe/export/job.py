"""The export job: model folder (or MLflow run) -> parity-checked ONNX + FeatureSpec, registered.

Output folder (default ``<work_dir>/export/<model.kind>``)::

    model.onnx      the twin, with metadata (FeatureSpec hash, model version, outputs, opset)
    model.fp16.onnx with --fp16: a float16 copy for GPU serving, parity-checked within 2e-3
    feature_spec/   the FeatureSpec the model expects (the scoring job refuses any other)
    parity.json     the parity report

With tracking on, the ONNX model is logged with ``mlflow.onnx.log_model`` into the training run
(or a new run) and registered as a new version of ``tracking.registered_model_name``; the
FeatureSpec files travel in the model's ``extra_files``, flattened (see
:func:`recsys_moe.features.spec.flat_spec_files` and :func:`~recsys_moe.features.spec.restore_spec_dir`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe import tracking
from recsys_moe.atomic import replacing
from recsys_moe.config import Config
from recsys_moe.export.onnx_export import ParityReport, export_fp16, export_onnx
from recsys_moe.features.spec import flat_spec_files
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


def download_model_dir(cfg: Config, run_id: str, dest: Path) -> Path:
    """Fetch the ``model`` artifact folder of a training run."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(dest)))


def run_export(cfg: Config, model_dir: str | Path | None = None, run_id: str | None = None, output: str | Path | None = None,
               rows: str | Path | None = None, parity_rows: int = 10_000, register: bool = True, fp16: bool = False) -> ExportResult:
    out = Path(output or cfg.experiment.work_dir / "export" / cfg.model.kind)
    with tempfile.TemporaryDirectory() as tmp_name:
        if run_id is not None:
            model_dir = download_model_dir(cfg, run_id, Path(tmp_name))
        model_dir = Path(model_dir or cfg.experiment.work_dir / "train" / cfg.model.kind / "model")
        model, spec, meta = load_model(model_dir)
        run_id = run_id or meta.get("mlflow_run_id")
        table = read_rows(rows or cfg.experiment.work_dir / "features" / "data" / "test", parity_rows)
        version_hint = {"model_kind": meta["kind"], "trained_run_id": str(run_id or ""), "model_spec_hash": meta["spec_hash"]}
        with replacing(out) as tmp_out:
            tmp_out.mkdir()
            _, report = export_onnx(model, spec, tmp_out / "model.onnx", table, metadata=version_hint)
            spec.save(tmp_out / "feature_spec")
            (tmp_out / "parity.json").write_text(json.dumps(report.__dict__, indent=2))
            report16 = None
            if fp16:
                _, report16 = export_fp16(model, spec, tmp_out / "model.onnx", tmp_out / "model.fp16.onnx", table)
                (tmp_out / "parity_fp16.json").write_text(json.dumps(report16.__dict__, indent=2))
    result = ExportResult(out / "model.onnx", out / "feature_spec", report, spec_hash=spec.content_hash, run_id=run_id,
                          fp16_path=out / "model.fp16.onnx" if fp16 else None, fp16_parity=report16)
    if register and cfg.tracking.enabled:
        _register(cfg, result)
    return result


def _register(cfg: Config, result: ExportResult) -> None:
    import mlflow
    import onnx

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    name = tracking.registered_model_name(cfg)
    spec_files = [str(f) for f in flat_spec_files(result.spec_dir)]
    client = tracking.client(cfg)
    if result.run_id is None:
        result.run_id = client.create_run(tracking.experiment_id(cfg), run_name=f"{cfg.experiment.name}-export").info.run_id
    with mlflow.start_run(run_id=result.run_id):  # reopens the training run; ends FINISHED
        info = mlflow.onnx.log_model(
            onnx.load(str(result.onnx_path)), name="onnx", registered_model_name=name, extra_files=spec_files,
            save_as_external_data=False, metadata={"spec_hash": result.spec_hash},
        )
        mlflow.log_dict(result.parity.__dict__, "export/parity.json")
    result.registered_name = name
    result.registered_version = str(info.registered_model_version)
    client.set_model_version_tag(name, result.registered_version, "spec_hash", result.spec_hash)
