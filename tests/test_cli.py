"""The real `recsys-moe` console script, started as a user starts it."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "recsys_moe.cli"]


def run(*args, cwd=ROOT, max_file_bytes=None):
    """The CLI in a fresh process; ``max_file_bytes`` sets RLIMIT_FSIZE, a real write failure
    (EFBIG, as a full disk gives ENOSPC) for any file that grows past it."""
    limit = None if max_file_bytes is None else lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes,) * 2)
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
                          preexec_fn=limit)


def test_help_lists_subcommands():
    out = run("--help")
    assert out.returncode == 0
    for word in ("data", "info"):
        assert word in out.stdout


def test_info_json_reports_stack():
    out = run("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["torch"].startswith("2.13")
    assert info["torchrec"] == "1.8.0"
    assert "CPUExecutionProvider" in info["onnxruntime providers (built in)"]


def test_data_synth_writes_tables_and_refuses_to_clobber(tmp_path):
    out_dir = tmp_path / "raw"
    args = ["data", "synth", "--config", "configs/synthetic.yaml", "-o", str(out_dir),
            "--set", "data.synthetic.num_impressions=20000", "--set", "data.synthetic.num_users=500",
            "--set", "data.synthetic.num_items=300"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "wrote 20,000 impressions" in first.stderr
    assert pl.scan_parquet(str(out_dir / "impressions/*/*.parquet")).select(pl.len()).collect().item() == 20_000
    again = run(*args)
    assert again.returncode == 2 and "already exists" in again.stderr
    manifest = (out_dir / "MANIFEST.json").read_bytes()
    full = run(*args, "--overwrite", "--set", "experiment.seed=7", max_file_bytes=4096)
    said = " ".join(full.stderr.split())
    assert full.returncode == 2 and "could not write" in said and "too large" in said, said
    assert "Traceback" not in said
    assert (out_dir / "MANIFEST.json").read_bytes() == manifest and not list(tmp_path.glob(".raw.tmp-*"))


def test_bad_override_exits_2_naming_the_key():
    out = run("data", "synth", "--set", "data.synthetic.num_users=zero")
    assert out.returncode == 2
    assert "data.synthetic.num_users" in out.stderr
    assert "Traceback" not in out.stderr


def test_features_fit_and_transform_via_cli(tmp_path):
    small = ["--set", "data.synthetic.num_impressions=14000", "--set", "data.synthetic.num_users=500",
             "--set", "data.synthetic.num_items=300", "--set", f"data.raw_dir={tmp_path / 'raw'}",
             "--set", f"experiment.work_dir={tmp_path / 'work'}"]
    assert run("data", "synth", *small).returncode == 0
    fit = run("features", "fit", *small)
    assert fit.returncode == 0, fit.stderr
    assert (tmp_path / "work/features/spec/spec.json").is_file()
    out = run("features", "transform", *small)
    assert out.returncode == 0, out.stderr
    assert "OOV rate" in out.stdout and "hist_click_items" in out.stdout
    assert "rows out: train 10,000, validation 2,000, test 2,000" in out.stderr
    test = pl.read_parquet(tmp_path / "work/features/data/test/*.parquet")
    assert test.height == 2000
    # a spec fitted for other definitions is refused with a clear message
    other = run("features", "transform", *small, "--set", "features.history.max_len=3", "--overwrite")
    assert other.returncode == 2 and "other feature definitions" in other.stderr
