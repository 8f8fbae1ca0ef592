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
    whole, _ = add_point_in_time(frame, HistoryState.empty(5, 20.0))
    state = HistoryState.empty(5, 20.0)
    parts = []
    for lo, hi in ((0, 120), (120, 300), (300, 500)):
        # cut between distinct timestamps so no tie straddles two chunks
        out, state = add_point_in_time(frame[lo:hi], state)
        parts.append(out)
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
    out, state = add_point_in_time(frame, state)
    assert out["hist_click_items"].to_list() == [[9, 8], [50, 9]]
    assert out["hist_long_watch_items"].to_list() == [[], [50]]
    assert out["user_impressions"].to_list() == [0.0, 1.0]
    assert out["user_ctr"].to_list() == [None, 1.0]
    with pytest.raises(ValueError, match="time order"):
        add_point_in_time(frame, state)


def test_state_roundtrip(tmp_path, rng):
    _, state = add_point_in_time(_frame(rng, 100, 0), HistoryState.empty(3, 10.0))
    state.save(tmp_path / "s")
    back = HistoryState.load(tmp_path / "s")
    assert back.user_hist.equals(state.user_hist) and back.item_counts.equals(state.item_counts)
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
    _, state = add_point_in_time(past, HistoryState.empty(3, 10.0))
    now = pl.DataFrame({
        "user_id": [1, 2, 4, 1], "item_id": [10, 12, 10, 99], "timestamp": [t0 + dt.timedelta(hours=1)] * 4,
        "click": [0, 1, 0, 1], "watch_time_s": [0.0, 3.0, 4.0, 50.0],
    })
    replayed, _ = add_point_in_time(now, state)
    frozen = point_in_time_from_state(now, state)
    assert frozen.equals(replayed)
    assert frozen["hist_click_items"].to_list()[0] == [13, 10]  # newest first
    assert frozen["user_ctr"].to_list()[2] is None  # unseen user: no rate, not 0
