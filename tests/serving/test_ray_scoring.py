"""Batch scoring on a real local Ray instance (``ray.init(num_cpus=2)``, started here): the same
scores as the local job, one row per input row after a killed run, the folder rules kept."""

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
import yaml

from recsys_moe.pipelines.batch_scoring import run as score
from recsys_moe.serving.ray_scoring import read_rows, row_ranges
from recsys_moe.serving.scoring import ScoringError
from tests.conftest import export_random_model

pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")

ROOT = Path(__file__).resolve().parents[2]
RAY = ["scoring.ray.num_cpus=0.5"]  # two pools of one actor on 2 CPUs leave Ray Data room to schedule
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def exported(small_features, tmp_path_factory):
    cfg, spec = small_features
    _, onnx_path = export_random_model(cfg, spec, tmp_path_factory.mktemp("export"), seed=5)
    ray_cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={
        "ray": cfg.scoring.ray.model_copy(update={"num_cpus": 0.5})})})
    return ray_cfg, onnx_path


def _impressions(cfg) -> Path:
    return cfg.data.raw_dir / "impressions"


def test_row_ranges_cut_every_file_and_read_back_the_same_rows(exported, tmp_path):
    cfg, _ = exported
    files = sorted(_impressions(cfg).glob("*/*.parquet"))
    parts = row_ranges(files, 300)
    for f in files[:3]:
        mine = [p for p in parts if p.file == str(f)]
        want = pq.read_table(f)
        assert [p.start for p in mine] == list(range(0, want.num_rows, 300)) and mine[-1].stop == want.num_rows
        got = pl.concat([pl.from_arrow(read_rows(f, p.start, p.stop)) for p in mine])
        assert got.equals(pl.from_arrow(want))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    # several row groups: a range across their boundary
    multi = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(files[0]), multi, row_group_size=97)
    assert pl.from_arrow(read_rows(multi, 50, 250)).equals(pl.from_arrow(pq.read_table(files[0]).slice(50, 200)))


def test_ray_scores_equal_the_local_jobs(exported, local_ray, tmp_path):
    cfg, onnx_path = exported
    local = score(cfg, str(onnx_path), _impressions(cfg), tmp_path / "local", batch_rows=700)
    on_ray = score(cfg, str(onnx_path), _impressions(cfg), tmp_path / "ray", batch_rows=700, engine="ray")
    assert on_ray.rows == local.rows and on_ray.parts >= local.parts and on_ray.provider.startswith("CPUExecutionProvider on Ray")
    want = pl.read_parquet(tmp_path / "local" / "*.parquet").sort("impression_id")
    got = pl.read_parquet(tmp_path / "ray" / "*.parquet").sort("impression_id")
    assert got.columns == want.columns and got.height == want.height == got["impression_id"].n_unique()
    assert got.drop("probs_ctr", "pred_watch_time", "score").equals(want.drop("probs_ctr", "pred_watch_time", "score"))
    for c in ("probs_ctr", "pred_watch_time", "score"):
        diff = (got[c] - want[c]).abs() / want[c].abs().clip(lower_bound=1.0)
        assert diff.max() <= 1e-6, c
    manifest = json.loads((tmp_path / "ray" / "MANIFEST.json").read_text())
    assert manifest["complete"] and manifest["rows"] == want.height
    # a rerun finds every part done; the local job's folder is another output (its parts are cut another way)
    again = score(cfg, str(onnx_path), _impressions(cfg), tmp_path / "ray", batch_rows=700, engine="ray")
    assert again.parts == 0 and again.skipped_parts == on_ray.parts
    with pytest.raises(ScoringError, match="another input, model or history state"):
        score(cfg, str(onnx_path), _impressions(cfg), tmp_path / "local", batch_rows=700, engine="ray")


def test_a_killed_ray_job_rerun_gives_one_row_per_input_row(exported, tmp_path):
    """The CLI with its own Ray instance, killed (driver and Ray's processes) after some parts."""
    cfg, onnx_path = exported
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "recsys_moe.cli", "score", "-c", str(cfg_path), "--model", str(onnx_path), "--input",
            str(_impressions(cfg)), "--output", str(out), "--batch-rows", "200", "--engine", "ray",
            *[x for s in RAY for x in ("--set", s)]]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    manifest = out / "MANIFEST.json"
    while proc.poll() is None and time.time() < deadline:
        if manifest.is_file() and len(json.loads(manifest.read_text() or "{}").get("parts", {})) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    assert proc.wait(timeout=60) == -signal.SIGKILL, f"the job ended before it could be killed: {proc.stderr.read()[-2000:]}"
    assert not json.loads(manifest.read_text())["complete"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already done" in done.stderr and "on Ray" in done.stderr
    got = pl.read_parquet(out / "*.parquet")
    want = pl.read_parquet(_impressions(cfg) / "*/*.parquet")
    assert got.height == want.height and got["impression_id"].n_unique() == want.height
    assert set(got["impression_id"].to_list()) == set(want["impression_id"].to_list())
