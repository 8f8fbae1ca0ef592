import polars as pl
import pytest

from recsys_moe.config import load_config
from recsys_moe.data.kuairand import read_kuairand
from recsys_moe.features import fit, transform
from tests.conftest import ROOT

pytestmark = pytest.mark.kuairand


def test_kuairand_features_with_seeded_history(kuairand_dir, tmp_path):
    cfg = load_config(ROOT / "configs/kuairand.yaml", [f"data.kuairand.path={kuairand_dir}"])
    raw = read_kuairand(kuairand_dir)
    spec = fit(raw, cfg)
    summary = transform(raw, spec, cfg.split, tmp_path / "f")
    assert summary.rows_out["validation"] > 10_000 and summary.rows_out["test"] > 20_000
    train = pl.read_parquet(tmp_path / "f" / "train" / "*.parquet")
    first_day = train.filter(pl.col("timestamp").dt.date() == cfg.split.train.start)
    # the prior history file seeds the lists from the very first day
    assert (first_day["hist_click_items"].list.len() > 0).mean() > 0.9
    assert train["click"].mean() == pytest.approx(0.44, abs=0.02)
