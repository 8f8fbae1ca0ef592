"""CandidateInputs (user and item features mapped once per job) equals mapping every row."""

import dataclasses

import numpy as np
import polars as pl
import pytest

from recsys_moe.data.raw import load_raw
from recsys_moe.features.enrich import enrich_candidates, joined_columns_only
from recsys_moe.features.mapper import FeatureMapper
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.serving.candidates import CandidateInputs
from recsys_moe.serving.inputs import onnx_inputs


@pytest.fixture(scope="module")
def scoring_world(small_features):
    """Candidates and tables with every case an entity can be in: known everywhere, missing from
    the users/items table but in the state, in the table but not the state, in neither, and with
    null attributes."""
    cfg, spec = small_features
    raw = joined_columns_only(load_raw(cfg.data), spec.features)
    state = HistoryState.load(cfg.experiment.work_dir / "features/data/state")
    rows = pl.read_parquet(cfg.data.raw_dir / "impressions" / "date=2024-01-04").head(1500)
    users, items = raw.users, raw.items
    max_user, max_item = int(users["user_id"].max()), int(items["item_id"].max())
    n = rows.height
    rows = rows.with_columns(
        # every 7th row an unseen user (hash bucket of its raw id, empty history), every 11th an unseen item
        pl.when(pl.int_range(n) % 7 == 0).then(pl.col("user_id") + max_user + 1).otherwise("user_id").alias("user_id"),
        pl.when(pl.int_range(n) % 11 == 0).then(pl.col("item_id") + max_item + 1).otherwise("item_id").alias("item_id"),
    )
    seen_users = rows["user_id"].unique().sort()
    dropped = seen_users.gather_every(5)  # in the state, not in the users table
    new_users = users.head(20).with_columns(pl.col("user_id") + 10 * max_user)  # in the table, not the state
    rows = pl.concat([rows, rows.head(20).with_columns(new_users["user_id"].cast(rows["user_id"].dtype))])
    users = pl.concat([users.filter(~pl.col("user_id").is_in(dropped.implode())), new_users])
    users = users.with_columns(pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.col("gender")).alias("gender"))
    items = items.filter(pl.col("item_id") % 13 != 0)
    return spec, dataclasses.replace(raw, users=users, items=items), state, rows


def test_candidate_inputs_equal_mapping_every_row(scoring_world):
    spec, raw, state, rows = scoring_world
    candidates = CandidateInputs(spec, raw, state)
    assert candidates.scope["user_id"] == candidates.scope["item_id"] == "row"
    assert candidates.scope["hist_click_items"] == candidates.scope["gender"] == "user"
    assert candidates.scope["category"] == candidates.scope["item_ctr"] == "item"
    mapper = FeatureMapper(spec)
    before = state.user_counts.imps.copy()
    for part in (rows, rows[100:900], rows[-30:]):
        want = onnx_inputs(mapper.features(enrich_candidates(part, raw, state))[0].to_arrow(), spec)
        got = candidates.inputs(part)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(state.user_counts.imps, before)  # the state is only read
    unknown = candidates.inputs(rows.filter(~pl.col("user_id").is_in(raw.users["user_id"].implode())))
    assert (unknown["list_hist_click_items"] == -1).any()
