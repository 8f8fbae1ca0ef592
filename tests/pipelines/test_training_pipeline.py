"""The scheduled pipeline end to end on a small synthetic feed: promotion, a worse challenger kept
out, an idempotent rerun, a SIGKILL mid-run resumed, two concurrent runs, a failing step."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient

from recsys_moe.data.synthetic import generate
from recsys_moe.pipelines.training_pipeline import STEPS, PipelineError, run_config, run_pipeline
from tests.features.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
NAME = "recsys-moe-synthetic"


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    cfg = small_config(tmp)
    generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    return cfg.data.raw_dir


def _cfg(tmp: Path, raw_dir: Path, *extra: str):
    return small_config(raw_dir.parent, f"data.raw_dir={raw_dir}", f"experiment.work_dir={tmp / 'work'}",
                        "training.max_epochs=2", "training.batch_size=512", "evaluation.bootstrap_samples=50", *extra)


def _champion(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(NAME, "champion").version)
    except Exception:
        return None


def test_promote_then_keep_champion_then_do_nothing(raw_dir, tmp_path, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    cfg = _cfg(tmp_path, raw_dir)
    said: list[str] = []
    first = run_pipeline(cfg, say=said.append)
    assert first.ran == list(STEPS) and first.output("export", "version") == "1"
    assert first.output("promote", "promoted") and _champion(client) == "1"
    report = Path(first.output("evaluate", "report"))
    assert report.is_file() and "quality gates" not in first.output("evaluate", "reason")
    scores = pl.read_parquet(Path(first.output("score", "output")) / "*.parquet")
    day = pl.read_parquet(raw_dir / "impressions" / f"date={cfg.split.test.end}" / "*.parquet")
    assert scores.height == day.height and set(scores["impression_id"]) == set(day["impression_id"])
    assert (scores["model_version"] == f"models:/{NAME}/1").all()
    # the default candidates are the as-of day's pairs as of the next day: after the state, no note
    assert (scores["timestamp"].dt.date() == cfg.split.test.end + dt.timedelta(days=1)).all()
    assert not any("earlier than the history state" in line for line in said)

    # the same scoring run standalone, as a user would after the pipeline: no --state, no --output
    cfg_path = _write_cfg(cfg, tmp_path / "c.yaml")
    candidates = first.output("score", "candidates")[0]
    out = subprocess.run([sys.executable, "-m", "recsys_moe.cli", "score", "-c", str(cfg_path), "--model",
                          f"models:/{NAME}@champion", "--input", candidates], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    assert f"pipeline run {first.key}" in out.stderr and "note:" not in out.stderr
    standalone = pl.read_parquet(tmp_path / "work" / "scores" / "*.parquet")
    assert standalone.drop("model_version").equals(scores.drop("model_version"))

    worse = _cfg(tmp_path, raw_dir, "training.learning_rate=1e-7", "training.embedding_learning_rate=1e-7", "training.max_epochs=1")
    second = run_pipeline(worse)
    assert second.key != first.key and second.output("export", "version") == "2"
    assert not second.output("promote", "promoted") and "does not beat the champion" in second.output("evaluate", "reason")
    assert _champion(client) == "1" and str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    assert second.output("score", "version") == "1"  # candidates are scored with the champion
    tags = client.get_run(second.mlflow_run_id).data.tags
    assert tags["decision"].startswith("kept champion") and tags["step.evaluate.status"] == "done"

    third = run_pipeline(cfg)
    assert third.ran == [] and third.skipped == list(STEPS)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2 and _champion(client) == "1"


def _write_cfg(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _cli(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recsys_moe.cli", "pipeline", "run", "-c", str(cfg_path), *extra]


def test_a_run_killed_during_training_resumes(raw_dir, tmp_path, mlflow_uri):
    cfg = _cfg(tmp_path, raw_dir, "training.max_epochs=3")
    args = _cli(_write_cfg(cfg, tmp_path / "c.yaml"))
    _, _, run_dir = run_config(cfg)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        steps = json.loads((run_dir / "steps.json").read_text())["steps"] if (run_dir / "steps.json").is_file() else {}
        if steps.get("train", {}).get("status") == "running" and list(run_dir.glob("train/*/checkpoints/last.ckpt")):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the pipeline finished before it could be killed"
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    steps = json.loads((run_dir / "steps.json").read_text())["steps"]
    assert all(steps[s]["status"] == "done" for s in STEPS)
    assert steps["features_fit"]["attempts"] == steps["features_transform"]["attempts"] == 1  # skipped on the rerun
    assert steps["train"]["attempts"] == 2 and steps["train"]["outputs"]["resumed"] and steps["export"]["attempts"] == 1
    client = MlflowClient(mlflow_uri)
    run_id = steps["train"]["outputs"]["training_run_id"]
    assert len([v for v in client.search_model_versions(f"name='{NAME}'") if v.run_id == run_id]) == 1
    assert _champion(client) == "1"


def test_two_concurrent_runs_one_proceeds(raw_dir, tmp_path, mlflow_uri):
    cfg = _cfg(tmp_path, raw_dir, "training.max_epochs=1")
    args = _cli(_write_cfg(cfg, tmp_path / "c.yaml"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "COLUMNS": "200"}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owner = tmp_path / "work" / "pipeline" / "synthetic.owner"
    deadline = time.time() + 120
    while not owner.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    _, first_err = first.communicate(timeout=900)
    assert first.returncode == 0, first_err
    assert second.returncode == 3, second.stderr
    assert "another run of this pipeline holds" in second.stderr and "pid" in second.stderr
    assert len(MlflowClient(mlflow_uri).search_model_versions(f"name='{NAME}'")) == 1


def test_a_failing_step_is_named_and_leaves_the_champion_alone(raw_dir, tmp_path, mlflow_uri):
    cfg = _cfg(tmp_path, raw_dir, "training.max_epochs=1", f"pipeline.candidates={tmp_path / 'missing.parquet'}")
    with pytest.raises(PipelineError, match="step 'score' failed") as err:
        run_pipeline(cfg)
    assert err.value.step == "score"
    client = MlflowClient(mlflow_uri)
    assert _champion(client) is None  # evaluate chose to promote, but promotion comes after scoring
    _, _, run_dir = run_config(cfg)
    steps = json.loads((run_dir / "steps.json").read_text())
    assert steps["steps"]["score"]["status"] == "failed" and "no Parquet input" in steps["steps"]["score"]["error"]
    run = client.get_run(steps["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["step.score.status"] == "failed"
    with pytest.raises(PipelineError, match="needs the earlier steps"):
        run_pipeline(_cfg(tmp_path / "other", raw_dir), only="evaluate")


def test_airflow_dag_lists_the_pipeline_steps_in_order():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag", ROOT / "pipelines/schedule/airflow_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tuple(module.STEPS) == tuple(STEPS)
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Airflow is not installed: the DAG's graph is not built here")
    dag = module.build_dag()
    assert [t.task_id for t in dag.topological_sort()] == list(STEPS)


def test_the_pipeline_transforms_and_scores_on_ray_when_configured(raw_dir, tmp_path, mlflow_uri, local_ray):
    cfg = _cfg(tmp_path, raw_dir, "transform.engine=ray", "transform.partitions=2", "transform.ray.num_cpus=0.5",
               "scoring.engine=ray", "scoring.ray.num_cpus=0.5")
    run = run_pipeline(cfg)
    assert run.ran == list(STEPS)
    (path,) = Path(cfg.experiment.work_dir).glob("pipeline/*/features/data/MANIFEST.json")
    assert json.loads(path.read_text())["engine"] == "ray (2 partitions)"
    assert "on Ray" in run.output("score", "provider")
    scores = pl.read_parquet(Path(run.output("score", "output")) / "*.parquet")
    day = pl.read_parquet(raw_dir / "impressions" / f"date={cfg.split.test.end}" / "*.parquet")
    assert scores.height == day.height and set(scores["impression_id"]) == set(day["impression_id"])
