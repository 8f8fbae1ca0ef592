import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from recsys_moe.config import SyntheticConfig
from recsys_moe.data.raw import read_synthetic
from recsys_moe.data.synthetic import generate

SMALL = dict(num_users=3000, num_items=2000, num_impressions=60_000, num_days=4, chunk_rows=10_000)


def _gen(tmp_path, name="raw", seed=0, **kw):
    cfg = SyntheticConfig(**{**SMALL, **kw})
    generate(cfg, seed, tmp_path / name)
    return read_synthetic(tmp_path / name)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """200k impressions: enough for rate checks within about +-0.005."""
    tmp = tmp_path_factory.mktemp("syn")
    raw = _gen(tmp, num_impressions=200_000, chunk_rows=50_000, num_users=10_000, num_items=5_000)
    joined = raw.impressions.join(raw.oracle, on="impression_id", maintain_order="left").collect()
    return raw, joined


def test_same_seed_same_data_different_seed_different(tmp_path):
    a = _gen(tmp_path, "a", seed=1)
    b = _gen(tmp_path, "b", seed=1)
    c = _gen(tmp_path, "c", seed=2)
    assert a.impressions.collect().equals(b.impressions.collect())
    assert a.items.equals(b.items) and a.users.equals(b.users)
    assert a.oracle.collect().equals(b.oracle.collect())
    assert not a.impressions.collect()["item_id"].equals(c.impressions.collect()["item_id"])


def test_rates_match_config(big):
    raw, df = big
    raw.validate()
    assert df.height == 200_000
    assert df["click"].mean() == pytest.approx(0.2, abs=0.01)
    assert (df["watch_time_s"] == 0).mean() == pytest.approx(0.35, abs=0.01)
    # Oracle expectations agree with realised labels.
    assert df["true_ctr"].mean() == pytest.approx(df["click"].mean(), abs=0.01)
    assert df["true_watch_time_s"].mean() == pytest.approx(df["watch_time_s"].mean(), rel=0.05)


def test_watch_time_is_heavy_tailed_and_oracle_is_informative(big):
    _, df = big
    w = df.filter(pl.col("watch_time_s") > 0)["watch_time_s"].to_numpy()
    assert np.quantile(w, 0.99) > 8 * np.median(w)
    oracle_auc = roc_auc_score(df["click"].to_numpy(), df["true_ctr"].to_numpy())
    assert 0.72 < oracle_auc < 0.95
    # Position bias: top slots are clicked more than bottom slots.
    by_pos = df.group_by("position").agg(pl.col("click").mean()).sort("position")["click"]
    assert by_pos[0] > by_pos[-1] + 0.05


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9, -0.5])
def test_task_correlation_matches_config(tmp_path, rho):
    raw = _gen(tmp_path, task_correlation=rho, num_impressions=40_000, num_users=4000, num_items=4000)
    o = raw.oracle.collect()
    r = np.corrcoef(o["click_affinity"].to_numpy(), o["watch_affinity"].to_numpy())[0, 1]
    assert r == pytest.approx(rho, abs=0.05)


def test_layout_is_daily_parts_with_bounded_size(tmp_path):
    raw_dir = tmp_path / "raw"
    generate(SyntheticConfig(**SMALL), 0, raw_dir)
    days = sorted(p.name for p in (raw_dir / "impressions").iterdir())
    assert days == [f"date=2024-01-0{d}" for d in range(1, 5)]
    for part in (raw_dir / "impressions").glob("*/*.parquet"):
        day = part.parent.name.removeprefix("date=")
        frame = pl.read_parquet(part)
        assert 0 < frame.height <= SMALL["chunk_rows"]
        assert (frame["timestamp"].dt.date().cast(pl.String) == day).all()
        assert frame["timestamp"].is_sorted()
    assert not list(tmp_path.glob(".raw.tmp-*"))


def test_existing_output_is_kept_unless_overwrite_and_failures_leave_nothing(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    out = tmp_path / "raw"
    generate(cfg, 0, out)
    before = pl.read_parquet(out / "items.parquet")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(cfg, 1, out)

    def boom(_n):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        generate(cfg, 1, out, overwrite=True, on_rows=boom)
    assert pl.read_parquet(out / "items.parquet").equals(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    generate(cfg, 1, out, overwrite=True)
    assert not pl.read_parquet(out / "items.parquet").equals(before)


def test_items_have_tag_lists_and_positive_durations(tmp_path):
    raw = _gen(tmp_path)
    assert raw.items.schema["tags"] == pl.List(pl.Int64)
    assert raw.items["tags"].list.len().min() >= 1
    assert raw.items["duration_s"].min() > 0
    assert set(raw.impressions.collect()["surface"].unique()) == {"feed", "follow", "search"}


@pytest.mark.parametrize("r", [0.0, 0.8])
def test_a_ranked_logging_policy_confounds_slot_and_relevance(tmp_path, r):
    raw = _gen(tmp_path, position_from_relevance=r, position_bias=0.8)
    df = raw.impressions.join(raw.oracle, on="impression_id", maintain_order="left").collect()
    pos = df["position"].to_numpy()
    shares = np.bincount(pos, minlength=10) / len(pos)
    assert np.allclose(shares, 0.1, atol=0.01)  # each slot holds the same share either way
    free = df["true_ctr_no_position"].to_numpy()
    true = df["true_ctr"].to_numpy()
    np.testing.assert_allclose(free[pos == 0], true[pos == 0], rtol=1e-5)  # the top slot has no penalty
    assert (free[pos > 0] > true[pos > 0]).all()
    logit = np.log(free / (1 - free))
    corr = np.corrcoef(logit, pos)[0, 1]
    if r == 0:
        assert abs(corr) < 0.02
    else:
        assert corr < -0.5, "better items should sit in earlier slots"
