"""Embedding tables sharded by torchrec's DistributedModelParallel under torchrun: 2 processes on
CPU (gloo), tables placed table-wise, one table per rank each; the sharded checkpoint resumes in
one process and loads into two; the gathered model exports with ONNX parity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from recsys_moe.config import load_config
from recsys_moe.evaluation.predict import TorchPredictor
from recsys_moe.export.bundle import export_bundle
from recsys_moe.models import build_model
from recsys_moe.training.artifacts import load_model
from recsys_moe.training.sharding import checkpoint as sharded_ckpt
from recsys_moe.training.sharding.plan import table_sizes
from tests.conftest import feed_config_file

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feed(tmp_path_factory):
    return feed_config_file(tmp_path_factory.mktemp("sharded"), "sharded", "training.max_epochs=8", "training.early_stopping_patience=0",
                            "training.embedding_optimizer=adagrad", "training.sharding.mode=always",
                            "training.sharding.sharding_types=[table_wise]")


def _command(launcher: list[str], cfg_path: Path, out: Path) -> list[str]:
    return [*launcher, "-m", "recsys_moe.cli", "train", "-c", str(cfg_path), "-o", str(out), "--no-progress"]


def _history(uri: str, metric: str) -> list[float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]


def test_sharded_training_resumes_in_one_process_restores_into_two_and_exports(feed, tmp_path, mlflow_uri):
    cfg, spec, cfg_path = feed
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    # 1. two processes, each table on one rank; killed after the first sharded checkpoint
    proc = subprocess.Popen(_command(TORCHRUN, cfg_path, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not sharded_ckpt.is_sharded_checkpoint(last):
        time.sleep(0.02)
    plan = json.loads((out / "sharding_plan.json").read_text())
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, f"no worker process found: {proc.stderr.read()[-3000:] if proc.poll() is not None else ''}"
    os.kill(int(workers[-1]), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0, "the run finished before a worker could be killed"
    assert plan["world_size"] == 2 and {t["sharding_type"] for t in plan["tables"]} == {"table_wise"}
    assert all(len(t["ranks"]) == 1 for t in plan["tables"]) and {t["ranks"][0] for t in plan["tables"]} == {0, 1}
    assert sorted(t["table"] for t in plan["tables"]) == sorted(t.name for t in table_sizes(build_model(cfg.model, cfg.tasks, spec, "meta")))
    assert {p.name for p in last.glob("__*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}  # each rank wrote its shards

    # 2. the same command in one process: the 2-rank checkpoint resharded into one rank, training goes on
    done = subprocess.run(_command([sys.executable], cfg_path, out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "(resumed)" in done.stderr and "8 epochs" in done.stderr
    assert json.loads((out / "sharding_plan.json").read_text())["world_size"] == 1
    assert len(_history(mlflow_uri, "val/loss")) == 8  # one MLflow run across both launches
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["sharding/embeddings.0.ebc/item"].startswith("table_wise ranks [0]")  # the last launch's plan
    assert "sharding_plan/sharding_plan.json" in {a.path for a in client.list_artifacts(run.info.run_id, "sharding_plan")}
    train_loss = _history(mlflow_uri, "train/loss")
    assert sum(train_loss[-10:]) / 10 < sum(train_loss[:3]) / 3  # the loss fell

    # 3. the gathered model folder holds the best sharded checkpoint's weights; evaluation reads the checkpoint whole
    best = next((out / "checkpoints").glob("best-*.ckpt"))
    from_ckpt = TorchPredictor.load(best).model.state_dict()
    saved = load_model(out / "model")[0].state_dict()
    assert from_ckpt.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(from_ckpt[key], value, rtol=0, atol=0, msg=key)

    # 4. the checkpoint into two processes again, and fresh weights: sharded forward == unsharded
    worker = subprocess.run([*TORCHRUN, "-m", "tests.training.sharded_worker", str(cfg_path), str(cfg.experiment.work_dir / "features/spec"),
                             str(cfg.experiment.work_dir / "features/data"), str(best), str(tmp_path / "worker")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-4000:]
    ranks = [json.loads((tmp_path / "worker" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["fresh"] <= 1e-5 and r["restored"] <= 1e-5, r
        assert r["restored_vs_fresh"] > 1e-3, r  # the checkpoint's weights were loaded, not left fresh
    assert not set(ranks[0]["tables"]) & set(ranks[1]["tables"]) and ranks[0]["tables"] and ranks[1]["tables"]

    # 5. the gathered model exports to ONNX and passes the parity gate
    exported = export_bundle(load_config(cfg_path), model_dir=out / "model", output=tmp_path / "export", register=False)
    assert exported.parity is not None and exported.parity.passed, exported.parity

