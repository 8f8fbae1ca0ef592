import datetime as dt

import numpy as np
import polars as pl
import pytest

from recsys_moe.features.pointintime import (
    HistoryState,
    add_point_in_time,
    before_sums,
    recent_before,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_before_sums_matches_brute_force_with_ties(rng):
    n = 400
    key = rng.integers(0, 7, n)
    ts = rng.integers(0, 30, n)  # many equal timestamps
    vals = rng.random((n, 2))
    got = before_sums(key, ts, vals)
    want = np.array([vals[(key == key[i]) & (ts < ts[i])].sum(axis=0) for i in range(n)])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_recent_before_matches_brute_force(rng):
    n = 300
    key = rng.integers(0, 5, n)
    ts = rng.permutation(n)  # distinct timestamps: "most recent" is well defined
    event = rng.random(n) < 0.4
    item = rng.integers(100, 200, n)
    got = recent_before(key, ts, event, item, 4).to_pylist()
    for i in range(n):
        mask = (key == key[i]) & (ts < ts[i]) & event
        order = np.argsort(-ts[mask])
        assert got[i] == item[mask][order][:4].tolist()


def _frame(rng, n, start_ms):
    ts = np.sort(rng.integers(start_ms, start_ms + 10_000, n))
    return pl.DataFrame({
        "user_id": rng.integers(0, 6, n), "item_id": rng.integers(0, 20, n),
        "timestamp": pl.Series(ts).cast(pl.Datetime("ms", "UTC")),
        "click": (rng.random(n) < 0.5).astype(np.int8), "watch_time_s": rng.exponential(20, n).astype(np.float32),
    })


def test_chunked_replay_equals_single_pass(rng):
    frame = _frame(rng, 500, 0)
    whole = add_point_in_time(frame, HistoryState.empty(5, 20.0))
    state = HistoryState.empty(5, 20.0)
    parts = []
    for lo, hi in ((0, 120), (120, 300), (300, 500)):
        # cut between distinct timestamps so no tie straddles two chunks
        parts.append(add_point_in_time(frame[lo:hi], state))
    ts = frame["timestamp"]
    assert ts[119] != ts[120] and ts[299] != ts[300]
    assert pl.concat(parts).equals(whole)


def test_prior_history_seeds_lists_newest_first():
    prior = pl.DataFrame({"user_id": [1], "click_items": [[7, 8, 9]], "long_watch_items": [[]]})
    state = HistoryState.empty(2, 20.0, prior)
    frame = pl.DataFrame({
        "user_id": [1, 1], "item_id": [50, 51],
        "timestamp": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, tzinfo=dt.UTC)],
        "click": [1, 0], "watch_time_s": [30.0, 0.0],
    })
    out = add_point_in_time(frame, state)
    assert out["hist_click_items"].to_list() == [[9, 8], [50, 9]]
    assert out["hist_long_watch_items"].to_list() == [[], [50]]
    assert out["user_impressions"].to_list() == [0.0, 1.0]
    assert out["user_ctr"].to_list() == [None, 1.0]
    with pytest.raises(ValueError, match="time order"):
        add_point_in_time(frame, state)


def test_state_roundtrip(tmp_path, rng):
    state = HistoryState.empty(3, 10.0)
    add_point_in_time(_frame(rng, 100, 0), state)
    state.save(tmp_path / "s")
    back = HistoryState.load(tmp_path / "s")
    assert back.user_hist.equals(state.user_hist)
    assert back.counts_frame("user").equals(state.counts_frame("user"))
    assert back.counts_frame("item").equals(state.counts_frame("item"))
    assert state.user_hist["hist_click_items"].list.len().sum() > 0
    assert back.last_ts_ms == state.last_ts_ms


def test_features_from_state_equal_replay_for_rows_sharing_one_timestamp():
    """Scoring reads history from the state only; for rows with one common timestamp the replay
    also sees nothing of the chunk itself, so both must agree column for column."""
    import datetime as dt

    import polars as pl

    from recsys_moe.features.pointintime import (
        HistoryState,
        add_point_in_time,
        point_in_time_from_state,
    )

    t0 = dt.datetime(2024, 1, 1)
    past = pl.DataFrame({
        "user_id": [1, 1, 2, 3, 1], "item_id": [10, 11, 10, 12, 13],
        "timestamp": [t0 + dt.timedelta(seconds=s) for s in (0, 1, 2, 3, 4)],
        "click": [1, 0, 1, 1, 1], "watch_time_s": [20.0, 0.0, 5.0, 30.0, 25.0],
    })
    state = HistoryState.empty(3, 10.0)
    add_point_in_time(past, state)
    now = pl.DataFrame({
        "user_id": [1, 2, 4, 1], "item_id": [10, 12, 10, 99], "timestamp": [t0 + dt.timedelta(hours=1)] * 4,
        "click": [0, 1, 0, 1], "watch_time_s": [0.0, 3.0, 4.0, 50.0],
    })
    frozen = point_in_time_from_state(now, state)
    replayed = add_point_in_time(now, state.copy())
    assert frozen.equals(replayed)
    assert frozen["hist_click_items"].to_list()[0] == [13, 10]  # newest first
    assert frozen["user_ctr"].to_list()[2] is None  # unseen user: no rate, not 0


def test_replay_with_prior_and_ties_matches_brute_force(rng):
    """Lists and counters from a chunked replay (with a seeded prior and many shared timestamps)
    against a per-row loop over every earlier row."""
    n, max_len = 600, 4
    frame = pl.DataFrame({
        "user_id": rng.integers(0, 9, n), "item_id": rng.integers(0, 30, n),
        "timestamp": pl.Series(np.sort(rng.integers(0, 150, n))).cast(pl.Datetime("ms", "UTC")),
        "click": (rng.random(n) < 0.4).astype(np.int8), "watch_time_s": rng.exponential(20, n).astype(np.float32),
    })
    prior = pl.DataFrame({"user_id": [2, 5], "click_items": [[101, 102, 103], [104]], "long_watch_items": [[105, 106], []]})
    state = HistoryState.empty(max_len, 20.0, prior)
    ts = frame["timestamp"].dt.epoch("ms").to_numpy()
    cuts = [0, *[int(np.searchsorted(ts, ts[i])) for i in (150, 333, 480)], n]
    out = pl.concat([add_point_in_time(frame[a:b], state) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    user, item, click = frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["click"].to_numpy()
    watch = frame["watch_time_s"].to_numpy()
    seeds = {2: ([103, 102, 101], [106, 105]), 5: ([104], [])}
    for i in range(n):
        earlier = np.flatnonzero((user == user[i]) & (ts < ts[i]))[::-1]  # newest first, later row first on ties
        seed_click, seed_long = seeds.get(int(user[i]), ([], []))
        want_click = ([int(item[j]) for j in earlier if click[j]] + seed_click)[:max_len]
        want_long = ([int(item[j]) for j in earlier if watch[j] >= 20.0] + seed_long)[:max_len]
        assert out["hist_click_items"][i].to_list() == want_click, i
        assert out["hist_long_watch_items"][i].to_list() == want_long, i
        item_earlier = (item == item[i]) & (ts < ts[i])
        assert out["item_impressions"][i] == item_earlier.sum()
        assert out["user_clicks"][i] == click[(user == user[i]) & (ts < ts[i])].sum()
        if item_earlier.any():
            assert out["item_watch_mean"][i] == pytest.approx(watch[item_earlier].astype(np.float64).mean(), rel=1e-9)
        else:
            assert out["item_watch_mean"][i] is None
    assert out["hist_click_items"].list.len().max() == max_len  # the cut was exercised
    # the state after the replay holds each user's newest lists, as a row after the last would see
    hist = state.user_hist.filter(pl.col("user_id") == 2)
    later = np.flatnonzero(user == 2)[::-1]
    assert hist["hist_click_items"][0].to_list() == ([int(item[j]) for j in later if click[j]] + seeds[2][0])[:max_len]


@pytest.mark.parametrize("high", [50, 70_000, 2**40])
def test_stable_order_equals_the_two_key_sort(rng, high):
    from recsys_moe.features.pointintime import stable_order

    key = rng.integers(0, high, 5_000)
    ts = np.sort(rng.integers(0, 300, 5_000))  # sorted, with ties: the radix path when keys < 2**32
    np.testing.assert_array_equal(stable_order(key, ts), np.lexsort((ts, key)))
    shuffled = rng.permutation(ts)  # unsorted time: the two-key sort itself
    np.testing.assert_array_equal(stable_order(key, shuffled), np.lexsort((shuffled, key)))
