"""Attribute features mapped once per user/item row equal mapping every joined impression."""

from dataclasses import replace

import polars as pl

from recsys_moe.features import fit
from recsys_moe.features.enrich import Replay, initial_state, joined_columns_only
from recsys_moe.features.entities import EntityAttributes
from recsys_moe.features.mapper import FeatureMapper


def test_entity_attributes_equal_joined_mapping(small):
    cfg, raw = small
    spec = fit(raw, cfg)
    users, items = raw.users, raw.items
    # users and items missing from their tables, null attributes, and values the vocabulary lacks
    users = users.filter(pl.col("user_id") % 9 != 0).with_columns(
        pl.when(pl.col("user_id") % 4 == 0).then(None).otherwise(pl.col("gender")).alias("gender"),
        pl.when(pl.col("user_id") % 5 == 0).then(None).otherwise(pl.col("account_age_days")).alias("account_age_days"),
    )
    items = items.filter(pl.col("item_id") % 7 != 0).with_columns(
        pl.when(pl.col("item_id") % 3 == 0).then(pl.col("creator_id") + 10**6).otherwise(pl.col("creator_id")).alias("creator_id"),
        pl.when(pl.col("item_id") % 11 == 0).then(None).otherwise(pl.col("tags")).alias("tags"),
    )
    raw = joined_columns_only(replace(raw, users=users, items=items), spec.features)
    mapper = FeatureMapper(spec)
    entities = EntityAttributes(mapper, raw.users, raw.items)
    assert {"gender", "account_age", "creator_id", "tags", "category", "duration"} <= entities.features
    assert not entities.features & {"user_id", "item_id", "hour", "hist_click_items", "user_ctr"}

    def replay(joins: bool):
        state = initial_state(raw, cfg.features.history.max_len, cfg.features.history.long_watch_s)
        return Replay(raw, state, 3000, joins=joins).days()

    chunks = 0
    for (_, joined), (_, bare) in zip(replay(True), replay(False), strict=True):
        assert "gender" in joined.columns and "gender" not in bare.columns
        want, want_counts = mapper.apply(joined)
        got, got_counts = mapper.apply(bare, entities)
        assert got.columns == want.columns
        assert got.equals(want)
        assert got_counts == want_counts
        chunks += 1
    assert chunks > 4 and want_counts["creator_id:oov"] > 0 and want_counts["gender:null"] > 0
