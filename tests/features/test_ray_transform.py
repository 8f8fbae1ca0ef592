"""The feature transform on a real local Ray instance (``ray.init(num_cpus=2)``, started here)
equals the local transform: every split row for row, and the saved history state."""

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_moe.config import load_config
from recsys_moe.data.raw import load_raw
from recsys_moe.data.synthetic import generate
from recsys_moe.features import fit, transform
from recsys_moe.features.ray_transform import transform_on_ray
from tests.conftest import ROOT

pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _split(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted(folder.glob("*.parquet"))])


def assert_same_output(local: Path, on_ray: Path) -> None:
    """Every split row for row (floats to 1e-9 relative: watch-time sums are added in another
    order), the state's tables and its metadata."""
    for split in ("train", "validation", "test"):
        want, got = _split(local / split), _split(on_ray / split)
        assert got.height == want.height > 0, split
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    for table in ("user_hist", "user_counts", "item_counts"):
        assert_frame_equal(pl.read_parquet(on_ray / "state" / f"{table}.parquet"), pl.read_parquet(local / "state" / f"{table}.parquet"),
                           check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    assert json.loads((on_ray / "state/state.json").read_text()) == json.loads((local / "state/state.json").read_text())
    want, got = json.loads((local / "MANIFEST.json").read_text()), json.loads((on_ray / "MANIFEST.json").read_text())
    for key in ("spec_hash", "rows_in", "rows_out", "features"):  # features: null and OOV rates from the same counts
        assert got[key] == want[key], key


def test_the_1m_synthetic_log(local_ray, tmp_path):
    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"data.raw_dir={tmp_path / 'raw'}", f"experiment.work_dir={tmp_path / 'work'}"])
    assert cfg.data.synthetic.num_impressions == 1_000_000
    generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    transform(raw, spec, cfg.split, tmp_path / "local")
    days = []
    summary = transform_on_ray(cfg, spec, tmp_path / "ray", partitions=3, on_day=lambda day, rows: days.append(day))
    assert summary.rows_out == json.loads((tmp_path / "local/MANIFEST.json").read_text())["rows_out"]
    assert len(days) == cfg.data.synthetic.num_days  # progress: every replayed day once
    assert_same_output(tmp_path / "local", tmp_path / "ray")
    assert not (tmp_path / "ray" / "_sides").exists()  # the scratch columns are gone


@pytest.mark.kuairand
def test_kuairand(local_ray, kuairand_dir, tmp_path):
    cfg = load_config(ROOT / "configs/kuairand.yaml", [f"data.kuairand.path={kuairand_dir}"])
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    transform(raw, spec, cfg.split, tmp_path / "local")
    transform_on_ray(cfg, spec, tmp_path / "ray", partitions=2)
    assert_same_output(tmp_path / "local", tmp_path / "ray")
