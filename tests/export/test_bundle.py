"""Export job on a trained model: ONNX + spec folder, MLflow registration, loadable version."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from recsys_moe.export.bundle import export_bundle
from recsys_moe.export.onnx_export import read_metadata
from recsys_moe.features.spec import FeatureSpec, restore_spec_dir
from recsys_moe.registry import RegistryError, resolve
from recsys_moe.training.train import train

pytestmark = pytest.mark.slow


def test_export_trained_model_registers_a_version(small_features, mlflow_uri, tmp_path):
    cfg, spec = small_features
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_epochs": 1})})
    trained = train(cfg, output_dir=tmp_path / "run", progress=False, evaluate_test=False)
    result = export_bundle(cfg, model_dir=trained.model_dir, output=tmp_path / "export", parity_rows=2000)
    assert result.parity.passed and result.parity.rows == 2000
    assert FeatureSpec.load(result.spec_dir).content_hash == spec.content_hash
    assert read_metadata(result.onnx_path)["trained_run_id"] == trained.run_id
    assert result.run_id == trained.run_id and result.registered_version == "1"

    client = MlflowClient(mlflow_uri)
    version = client.get_model_version(result.registered_name, "1")
    assert version.tags["spec_hash"] == spec.content_hash
    assert client.get_run(trained.run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(mlflow_uri)
    loaded = mlflow.onnx.load_model(f"models:/{result.registered_name}/1")
    assert [o.name for o in loaded.graph.output] == ["probs_ctr", "pred_watch_time", "score"]
    local = mlflow.artifacts.download_artifacts(f"models:/{result.registered_name}/1", dst_path=str(tmp_path / "dl"))
    restored = restore_spec_dir(f"{local}/extra_files", tmp_path / "spec")
    assert FeatureSpec.load(restored).content_hash == spec.content_hash

    again = export_bundle(cfg, model_dir=trained.model_dir, output=tmp_path / "export", parity_rows=500, int8=True)
    assert again.registered_version == "2" and again.int8_path is not None
    # a registered version's INT8 copy and cost travel with it; a precision it lacks is refused
    got = resolve(cfg, f"models:/{result.registered_name}/2", tmp_path / "cache", precision="int8")
    assert got.onnx_path.name == "model.int8.onnx" and read_metadata(got.onnx_path)["precision"] == "int8"
    assert json.loads(got.cost_path.read_text())["bytes"]["int8"]["total"] < json.loads(got.cost_path.read_text())["bytes"]["fp32"]["total"]
    assert resolve(cfg, f"models:/{result.registered_name}/2", tmp_path / "cache2").onnx_path.name == "model.onnx"
    with pytest.raises(RegistryError, match="has no fp16 copy"):
        resolve(cfg, f"models:/{result.registered_name}/2", tmp_path / "cache3", precision="fp16")
    metrics = client.get_run(trained.run_id).data.metrics
    assert metrics["export/int8/passed"] == 1.0 and "export/int8/ctr/auc_drop" in metrics
