"""Raw logs, model-ready data, the history state and scores on an object store: the jobs run
against a local S3-compatible server (moto's server mode, a real HTTP endpoint; the clients are
the real pyarrow and Polars ones)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from polars.testing import assert_frame_equal

from recsys_moe import storage
from recsys_moe.config import ModelConfig, TasksConfig, config_from_dict
from recsys_moe.data.synthetic import generate
from recsys_moe.export.onnx_export import export_onnx
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import build_model
from tests.data.foreign_feed import foreign_impressions, write_foreign_feed
from tests.features.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cli(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "recsys_moe.cli", *args, "-c", str(cfg_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def on_s3(s3_bucket, tmp_path_factory):
    """A foreign-shaped feed uploaded as Parquet; its config file; spec fitted from the bucket."""
    tmp = tmp_path_factory.mktemp("s3")
    local = small_config(tmp, f"experiment.work_dir={tmp / 'work'}")
    generate(local.data.synthetic, local.experiment.seed, local.data.raw_dir)
    files = write_foreign_feed(local.data.raw_dir, f"{s3_bucket}/feed", fmt="parquet")
    assert files["impressions"]["path"].startswith("s3://")
    cfg = config_from_dict({**local.to_dict(), "data": {**local.data.model_dump(mode="json"), "source": "files", "files": files}})
    cfg_path = tmp / "s3.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    _cli(cfg_path, "features", "fit")
    return cfg, cfg_path, tmp


def test_transform_writes_to_the_bucket_what_it_writes_locally(on_s3, s3_bucket):
    cfg, cfg_path, tmp = on_s3
    out = f"{s3_bucket}/model-ready"
    _cli(cfg_path, "features", "transform", "-o", out)
    _cli(cfg_path, "features", "transform", "-o", str(tmp / "local"))
    manifest = json.loads(storage.read_text(f"{out}/MANIFEST.json"))
    assert manifest["rows_out"] == json.loads((tmp / "local/MANIFEST.json").read_text())["rows_out"]
    for split in ("train", "validation", "test"):
        assert_frame_equal(pl.read_parquet(f"{out}/{split}/*.parquet"), pl.read_parquet(tmp / "local" / split / "*.parquet"))
    assert storage.is_file(f"{out}/state/state.json")
    again = subprocess.run([sys.executable, "-m", "recsys_moe.cli", "features", "transform", "-c", str(cfg_path), "-o", out],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    # training reads the model-ready rows from the bucket
    _cli(cfg_path, "train", "--data", out, "--set", "training.max_epochs=1", "--set", "tracking.enabled=false",
         "--set", f"experiment.work_dir={tmp / 'train-work'}", "--spec", str(cfg.experiment.work_dir / "features/spec"))
    assert (tmp / "train-work/train" / cfg.model.kind / "model").is_dir()


def test_a_killed_scoring_run_on_the_bucket_resumes_with_one_row_per_input_row(on_s3, s3_bucket):
    cfg, cfg_path, tmp = on_s3
    state = f"{s3_bucket}/model-ready/state"
    if not storage.is_file(f"{state}/state.json"):  # when run alone
        _cli(cfg_path, "features", "transform", "-o", f"{s3_bucket}/model-ready")
    spec = FeatureSpec.load(cfg.experiment.work_dir / "features/spec")
    torch.manual_seed(0)
    onnx = tmp / "export" / "model.onnx"
    onnx.parent.mkdir(exist_ok=True)
    validation = storage.expand(f"{s3_bucket}/model-ready/validation", (".parquet",))[0]
    export_onnx(build_model(ModelConfig(), TasksConfig(), spec).eval(), spec, onnx, pq.read_table(storage.open_input(validation)))
    spec.save(onnx.parent / "feature_spec")
    raw_rows = pl.read_parquet(Path(cfg.data.raw_dir) / "impressions/*/*.parquet")
    days = raw_rows["timestamp"].dt.date()
    for i, day in enumerate(days.unique().sort()):
        storage.write_parquet(foreign_impressions(raw_rows.filter(days == day)), f"{s3_bucket}/candidates/part-{i}.parquet")
    out = f"{s3_bucket}/scores"
    args = [sys.executable, "-m", "recsys_moe.cli", "score", "-c", str(cfg_path), "--model", str(onnx),
            "--input", f"{s3_bucket}/candidates/*.parquet", "--output", out, "--state", state, "--batch-rows", "200"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300

    def finished_parts() -> int:
        try:
            return len(json.loads(storage.read_text(f"{out}/MANIFEST.json"))["parts"])
        except (OSError, ValueError):
            return 0

    while proc.poll() is None and time.time() < deadline and finished_parts() < 5:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the job finished before it could be killed"
    assert not json.loads(storage.read_text(f"{out}/MANIFEST.json"))["complete"]
    done = _cli(cfg_path, *args[3:])
    assert "already done" in done.stderr
    manifest = json.loads(storage.read_text(f"{out}/MANIFEST.json"))
    assert manifest["complete"] and manifest["rows"] == raw_rows.height
    got = pl.read_parquet(storage.expand(out, (".parquet",)))
    assert got.height == raw_rows.height and got["impression_id"].n_unique() == raw_rows.height
    assert set(got["impression_id"].to_list()) == set(raw_rows["impression_id"].to_list())
