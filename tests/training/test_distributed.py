"""`recsys-moe train` under torchrun: 2 processes on CPU (gloo), streaming data, one run folder and
one MLflow run; every training row once per epoch across the ranks; a killed worker resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import polars as pl
import pytest
import yaml

from tests.conftest import feed_config_file

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feed(tmp_path_factory):
    cfg, _, path = feed_config_file(tmp_path_factory.mktemp("ddp"), "ddp", "training.data_mode=stream",
                                    "training.shuffle_buffer_rows=5000", "training.max_epochs=3")
    return cfg, path


def _train(launcher: list[str], cfg_path: Path, out: Path, *sets: str, popen: bool = False):
    args = [*launcher, "-m", "recsys_moe.cli", "train", "-c", str(cfg_path), "-o", str(out), "--no-progress",
            *[x for s in sets for x in ("--set", s)]]
    if popen:
        return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _runs(uri: str) -> list:
    """Every run in the store at ``uri`` (named explicitly: another test may have set mlflow's
    process-wide URI)."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _test_auc(out: Path) -> float:
    return yaml.safe_load((out / "test_metrics.json").read_text())["test/ctr/auc"]


def test_two_processes_see_every_row_once_per_epoch_and_match_one_process(feed, tmp_path, mlflow_uri):
    cfg, cfg_path = feed
    out = tmp_path / "ddp"
    done = _train(TORCHRUN, cfg_path, out, "training.audit_rows=true")
    assert "data stream" in done.stderr and done.stdout.count("best checkpoint") == 1  # rank 0 reports
    train_ids = pl.read_parquet(cfg.experiment.work_dir / "features/data/train/*.parquet")["impression_id"]
    share = train_ids.len() // 2
    for epoch in range(3):
        ranks = [pl.read_parquet(out / f"audit/epoch={epoch}/rank={r}.parquet")["impression_id"] for r in (0, 1)]
        assert [r.len() for r in ranks] == [share, share]  # equal shares: the same number of steps
        seen = pl.concat(ranks)
        assert seen.n_unique() == seen.len() == 2 * share  # no row twice
        assert seen.is_in(train_ids.implode()).all() and train_ids.len() - seen.len() == train_ids.len() % 2
    assert len(_runs(mlflow_uri)) == 1 and (out / "model").is_dir()
    # one process with the same effective batch (2 x 256)
    single = tmp_path / "single"
    _train([sys.executable], cfg_path, single, "training.batch_size=512", "tracking.enabled=false")
    assert abs(_test_auc(out) - _test_auc(single)) < 0.01
    assert _test_auc(out) > 0.6


def test_a_killed_worker_resumes_from_the_last_checkpoint(feed, tmp_path, mlflow_uri):
    _, cfg_path = feed
    out = tmp_path / "run"
    sets = ("training.max_epochs=8", "training.early_stopping_patience=0")
    proc = _train(TORCHRUN, cfg_path, out, *sets, popen=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (out / "checkpoints/last.ckpt").is_file():
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker process found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0, "the run finished before a worker could be killed"
    done = _train(TORCHRUN, cfg_path, out, *sets)
    assert "(resumed)" in done.stderr and "8 epochs" in done.stderr
    assert len(_runs(mlflow_uri)) == 1  # the same MLflow run continued
