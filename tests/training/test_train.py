"""Real training runs: Lightning Trainer, MLflow on SQLite, checkpoints, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys_moe.metrics.functions import auc
from recsys_moe.training.artifacts import load_model
from recsys_moe.training.batches import ColumnarSplit
from recsys_moe.training.train import TrainError, train
from tests.conftest import build_small_features

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bigger_features(tmp_path_factory):
    """Enough rows (60k) for the model to show it learns."""
    return build_small_features(tmp_path_factory.mktemp("learn"), "data.synthetic.num_impressions=60000",
                                "data.synthetic.num_users=1000", "data.synthetic.num_items=500")


def test_training_beats_a_constant_and_is_tracked(bigger_features, mlflow_uri, tmp_path):
    cfg, spec = bigger_features
    result = train(cfg, output_dir=tmp_path / "run", progress=False)
    assert result.validation["val/ctr/auc"] > 0.65  # a constant predictor scores 0.5
    assert result.test["test/ctr/auc"] > 0.65
    assert result.validation["val/watch_time/spearman"] > 0.1
    assert result.global_step == 2 * -(-_train_rows(cfg) // 512)

    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.kind"] == "mmoe"
    assert json.loads(run.data.params["features.feature.user_id"])["table"] == "user"
    assert run.data.tags["feature_spec_hash"] == spec.content_hash
    assert run.data.tags["data_window_train"] == "2024-01-01..2024-01-02"
    assert run.data.tags["git_commit"]
    assert "val/ctr/auc" in run.data.metrics and "val/gate/ctr/expert0" in run.data.metrics
    client = MlflowClient(mlflow_uri)
    logged = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config", "model", "feature_spec", "metrics", "gates"} <= logged
    model_files = {Path(a.path).name for a in client.list_artifacts(result.run_id, "model")}
    assert {"state_dict.pt", "model.json"} <= model_files
    assert (tmp_path / "run/gate_heatmap.png").stat().st_size > 1000

    model, loaded_spec, meta = load_model(result.model_dir)
    assert loaded_spec.content_hash == spec.content_hash and meta["kind"] == "mmoe"
    state = torch.load(result.model_dir / "state_dict.pt", weights_only=True)
    assert any(k.startswith("embeddings.0.ebc") for k in state)
    assert "calibration/watch_time/shift" in run.data.metrics


def test_training_calibrates_on_validation_and_the_folder_keeps_it(bigger_features, tmp_path):
    """Platt scaling of the click logit and the expected-seconds shift, fitted on validation,
    make the mean predictions the observed means there, carried by the model folder, and leave
    the rankings as they were."""
    cfg, spec = bigger_features
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    result = train(cfg, output_dir=tmp_path / "run", progress=False, evaluate_test=False)
    v = result.validation
    assert v["val/watch_time/calibration"] == pytest.approx(1.0, abs=1e-3)
    assert v["val/ctr/calibration"] == pytest.approx(1.0, abs=0.01)  # Platt: mean p = base rate at the optimum
    model, _, meta = load_model(result.model_dir)
    assert set(meta["calibration"]) == {"ctr", "watch_time"}
    assert float(model.calibration_shift[1]) == pytest.approx(meta["calibration"]["watch_time"]["shift"])
    assert float(model.calibration_shift[1]) > 0.1 and float(model.calibration_scale[0]) != 1.0

    split = ColumnarSplit.read(cfg.experiment.work_dir / "features/data/validation", spec)
    batch = split.batch(torch.arange(split.num_rows))
    with torch.no_grad():
        model.eval()
        calibrated = model(batch.sparse, batch.dense)
        model.calibration_scale.fill_(1.0)
        model.calibration_shift.fill_(0.0)
        raw = model(batch.sparse, batch.dense)
    label = batch.labels["click"].numpy()
    assert auc(calibrated["probs_ctr"].numpy(), label) == pytest.approx(auc(raw["probs_ctr"].numpy(), label), abs=1e-6)
    assert calibrated["pred_watch_time"].mean() > 1.5 * raw["pred_watch_time"].mean()  # log1p_mse: the geometric mean was low


def test_other_config_in_the_same_folder_is_refused(small_features, mlflow_uri, tmp_path):
    cfg, _ = small_features
    train(cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_epochs": 1})}), output_dir=tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="another config"):
        train(cfg, output_dir=tmp_path / "run", progress=False)
    assert train(cfg, output_dir=tmp_path / "run", progress=False, resume=False).global_step > 0  # --fresh


def _train_rows(cfg) -> int:
    return json.loads((cfg.experiment.work_dir / "features/data/MANIFEST.json").read_text())["rows_out"]["train"]


def _cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recsys_moe.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_ends_with_the_same_steps(small_features, mlflow_uri, tmp_path):
    cfg, _ = small_features
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    raw = cfg.to_dict()
    raw["training"]["max_epochs"] = 6
    raw["training"]["early_stopping_patience"] = 0
    cfg_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    args = ("train", "--config", str(cfg_path), "--no-progress")

    # An uninterrupted run takes epochs x batches steps (checked against a real run above).
    want = 6 * -(-_train_rows(cfg) // cfg.training.batch_size)

    killed_dir = tmp_path / "killed"
    proc = _cli(*args, "--output", str(killed_dir), env=env)
    last = killed_dir / "checkpoints/last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    first = torch.load(last, weights_only=True)["global_step"]
    assert 0 < first < want
    run_id = json.loads((killed_dir / "train_state.json").read_text())["run_id"]

    again = _cli(*args, "--output", str(killed_dir), env=env)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "(resumed)" in out
    assert torch.load(last, weights_only=True)["global_step"] == want
    assert json.loads((killed_dir / "train_state.json").read_text())["run_id"] == run_id
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FINISHED"


def test_sparse_top_k_training_logs_drops_and_z_loss(small_features, mlflow_uri, tmp_path):
    """16 experts, top-2, sparse dispatch with a tight capacity: it trains, and the drop rate and
    the router z-loss reach MLflow."""
    cfg, _ = small_features
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"num_experts": 16, "gate": cfg.model.gate.model_copy(update={
            "top_k": 2, "capacity_factor": 0.5, "eval_capacity_factor": 0.5, "z_loss_weight": 1e-3})}),
        "training": cfg.training.model_copy(update={"max_epochs": 1}),
    })
    result = train(cfg, output_dir=tmp_path / "run", progress=False, evaluate_test=False)
    assert 0 < result.validation["val/gate/ctr/drop_rate"] < 1  # eval_capacity_factor 0.5: drops in validation too
    assert 0 < result.train_drop_rate["ctr"] < 1
    assert result.gates["task_drop_rate"][0] == pytest.approx(result.validation["val/gate/ctr/drop_rate"], abs=1e-6)
    metrics = MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert "val/gate/watch_time/expert15/drop_rate" in metrics and metrics["train/z_loss"] > 0
    assert metrics["train/gate/ctr/drop_rate"] == pytest.approx(result.train_drop_rate["ctr"])
