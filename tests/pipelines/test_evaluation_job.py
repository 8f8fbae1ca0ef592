"""The evaluation job end to end on a trained model: checkpoint, model folder and ONNX export give
the same metrics; reports are written and self-contained; MLflow holds the run; gates fail loudly;
a model with another FeatureSpec is evaluated on the same rows."""

import base64
import json
import re

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from recsys_moe import contract
from recsys_moe.cli import app
from recsys_moe.data.raw import read_synthetic
from recsys_moe.evaluation.evaluate import features_cache_dir
from recsys_moe.export.bundle import export_bundle
from recsys_moe.features import fit
from recsys_moe.models import build_model
from recsys_moe.pipelines.evaluation import EvaluationError
from recsys_moe.pipelines.evaluation import run as evaluate
from recsys_moe.training.artifacts import save_model
from recsys_moe.training.train import train
from tests.conftest import one_epoch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_features, tmp_path_factory):
    cfg, spec = small_features
    cfg = one_epoch(cfg)
    tmp = tmp_path_factory.mktemp("eval")
    result = train(cfg, output_dir=tmp / "run", progress=False, evaluate_test=True)
    export = export_bundle(cfg, model_dir=result.model_dir, output=tmp / "export", parity_rows=1000, register=False)
    return cfg, spec, result, export, tmp


def test_checkpoint_folder_and_onnx_give_the_same_metrics(trained, tmp_path):
    cfg, _, result, export, _ = trained
    got = {}
    for name, model in (("folder", result.model_dir), ("ckpt", result.best_checkpoint), ("onnx", export.onnx_path)):
        got[name] = evaluate(cfg, str(model), output=tmp_path / name, track=False).headline
    assert set(got["folder"]) == set(got["onnx"])
    for key, value in got["folder"].items():
        assert round(got["onnx"][key], 4) == round(value, 4), key
        assert round(got["ckpt"][key], 4) == round(value, 4), key
    # the job's AUC is the training job's test AUC (same rows, same model)
    assert got["folder"]["ctr/auc"] == pytest.approx(result.test["test/ctr/auc"], abs=1e-6)


def test_reports_are_written_self_contained_and_tracked(trained, tmp_path, mlflow_uri):
    cfg, _, result, export, _ = trained
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": True})})
    out = evaluate(cfg, str(result.model_dir), compare=[str(export.onnx_path)], output=tmp_path / "rep")
    metrics = json.loads((out.output / "metrics.json").read_text())
    assert metrics["primary"]["rows"] > 1000 and metrics["oracle"]["tasks"]["ctr"]["auc"] > 0.5
    assert metrics["gates"]["mean_weights"] and len(metrics["comparisons"]) == 1
    ci = metrics["comparisons"][0]["ci"]["ctr/auc"]
    assert abs(ci["delta"]) < 1e-6 and not ci["significant"]  # the export is the same model
    md = (out.output / "report.md").read_text()
    for link in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (out.output / link).is_file()
    assert {"plots/reliability_ctr.png", "plots/watch_watch_time.png", "plots/gates.png"} <= set(re.findall(r"\]\((plots/[^)]+)\)", md))
    html = (out.output / "report.html").read_text()
    images = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(images) == 3 and not re.search(r'(src|href)="(?!data:)', html)
    for src in images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    run = MlflowClient(mlflow_uri).get_run(out.run_id)
    assert run.data.tags["job"] == "evaluate" and run.data.tags["quality_gates"] == "passed"
    assert run.data.metrics["test/ctr/auc"] == pytest.approx(out.headline["ctr/auc"])
    listed = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(out.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.md", "evaluation/metrics.json"} <= listed


def test_onnx_score_exponents_must_match_the_config(trained, tmp_path):
    """The ONNX model was exported with the default exponents (1, 1): evaluating it under other
    exponents is refused, since its score would not be the one the config ranks by."""
    cfg, _, result, export, _ = trained
    other = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"score_exponents": {"ctr": 1.0, "watch_time": 0.5}})})
    with pytest.raises(EvaluationError, match="score is ctr=1,watch_time=1 but the config's evaluation.score_exponents give ctr=1,watch_time=0.5"):
        evaluate(other, str(export.onnx_path), output=tmp_path / "x", track=False)
    folder = evaluate(other, str(result.model_dir), output=tmp_path / "folder", track=False)  # torch: config's exponents
    assert folder.metrics["primary"]["ranking"]["score"] == "ctr^1 * watch_time^0.5"
    preds = pl.read_parquet(folder.output / "predictions.parquet")
    assert preds.columns == ["impression_id", "probs_ctr", "pred_watch_time", "score"]
    want = contract.ranking_score({"ctr": preds["probs_ctr"].to_numpy(), "watch_time": preds["pred_watch_time"].to_numpy()},
                                  {"ctr": 1.0, "watch_time": 0.5})
    np.testing.assert_allclose(preds["score"].to_numpy(), want, rtol=1e-6)


def test_failed_gate_exits_one_and_names_the_gate(trained, tmp_path, monkeypatch):
    cfg, _, result, _, tmp = trained
    cfg_file = tmp_path / "gated.yaml"
    cfg_file.write_text(json.dumps(cfg.to_dict() | {"evaluation": {"gates": [{"metric": "ctr/auc", "min": 0.99},
                                                                               {"metric": "ctr/ece", "max": 0.5}]}}))
    monkeypatch.setenv("COLUMNS", "200")
    run = CliRunner().invoke(app, ["evaluate", "-c", str(cfg_file), "-m", str(result.model_dir),
                                   "-o", str(tmp_path / "g"), "--no-track"])
    assert run.exit_code == 1, run.output
    assert "quality gate failed: ctr/auc" in run.output and "below the minimum 0.99" in run.output
    assert "ctr/ece" not in run.output.split("quality gate failed")[1]  # the passing gate is not listed
    assert json.loads((tmp_path / "g/metrics.json").read_text())["quality_gates"]["failed"]


def test_model_with_another_spec_is_scored_on_the_same_rows(trained, tmp_path):
    cfg, spec, result, _, _ = trained
    shorter = cfg.model_copy(update={"split": cfg.split.model_copy(update={
        "train": cfg.split.train.model_copy(update={"start": cfg.split.train.end})})})
    other_spec = fit(read_synthetic(cfg.data.raw_dir), shorter)
    assert other_spec.content_hash != spec.content_hash
    other = save_model(tmp_path / "other", build_model(cfg.model, cfg.tasks, other_spec), cfg.model, cfg.tasks, other_spec)
    out = evaluate(cfg, str(result.model_dir), compare=[str(other)], output=tmp_path / "cmp", track=False)
    assert any(other_spec.content_hash in n for n in out.notes)
    comp = out.metrics["comparisons"][0]
    assert comp["ci"]["ctr/auc"]["delta"] == pytest.approx(out.headline["ctr/auc"] - comp["metrics"]["tasks"]["ctr"]["auc"])
    cached = features_cache_dir(cfg, other_spec)
    assert json.loads((cached / "MANIFEST.json").read_text())["spec_hash"] == other_spec.content_hash


def test_unknown_model_and_nan_predictions_are_clear_errors(trained, tmp_path, monkeypatch):
    cfg, _, result, _, _ = trained
    with pytest.raises(EvaluationError, match="not a model folder"):
        evaluate(cfg, str(tmp_path / "nothing"), track=False)
    from recsys_moe.evaluation import predict
    from recsys_moe.metrics.functions import MetricError

    real = predict.TorchPredictor.predict

    def poisoned(self, table):
        out = real(self, table)
        out.tasks["ctr"][::7] = np.nan
        return out

    monkeypatch.setattr(predict.TorchPredictor, "predict", poisoned)
    with pytest.raises(MetricError, match="NaN"):
        evaluate(cfg, str(result.model_dir), output=tmp_path / "nan", track=False)
    assert not (tmp_path / "nan").exists()
