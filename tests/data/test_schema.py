import datetime as dt

import polars as pl
import pytest

from recsys_moe.data.schema import (
    RawDataError,
    validate_impressions,
    validate_items,
    validate_users,
)


def impressions(**changes):
    base = {
        "impression_id": [0, 1, 2, 3],
        "user_id": [1, 1, 2, 3],
        "item_id": [10, 11, 10, 12],
        "timestamp": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 4,
        "position": [0, 1, 2, 3],
        "surface": ["feed"] * 4,
        "click": [0, 1, 0, 1],
        "watch_time_s": [0.0, 3.5, 1.0, 20.0],
    }
    base.update(changes)
    return pl.DataFrame({k: v for k, v in base.items() if v is not None})


def test_valid_tables_pass():
    validate_impressions(impressions(), "imp.parquet")
    validate_users(pl.DataFrame({"user_id": [1, 2, 3], "age": [1, 2, 3]}), "users.parquet")
    validate_items(pl.DataFrame({"item_id": [10, 11], "tags": [[1], [2, 3]]}), "items.parquet")


@pytest.mark.parametrize(
    ("changes", "column", "problem", "count"),
    [
        ({"click": None}, "click", "missing", None),
        ({"user_id": ["a", "b", "c", "d"]}, "user_id", "expected int, got String", None),
        ({"timestamp": [1, 2, 3, 4]}, "timestamp", "expected datetime", None),
        ({"watch_time_s": [0.0, -1.0, -2.0, 3.0]}, "watch_time_s", "negative watch time", 2),
        ({"watch_time_s": [0.0, float("nan"), 1.0, None]}, "watch_time_s", "null or NaN", 2),
        ({"click": [0, 2, 1, -1]}, "click", "outside {0, 1}", 2),
        ({"click": [0, None, 1, 1]}, "click", "outside {0, 1}", 1),
        ({"user_id": [1, None, 2, 3]}, "user_id", "null id", 1),
        ({"impression_id": [0, 0, 1, 1]}, "impression_id", "duplicate", 4),
        ({"position": [0, -1, 2, 3]}, "position", "negative position", 1),
    ],
)
def test_bad_impressions_name_file_column_and_count(changes, column, problem, count):
    with pytest.raises(RawDataError) as exc:
        validate_impressions(impressions(**changes), "logs/day1.parquet")
    msg = str(exc.value)
    assert msg.startswith("logs/day1.parquet, column ")
    assert exc.value.column == column
    assert problem in msg
    assert exc.value.count == count
    if count is not None:
        assert f"({count:,} row(s))" in msg


def test_duplicate_and_null_entity_ids():
    with pytest.raises(RawDataError, match=r"users.csv, column 'user_id': duplicate user_id values \(2 row"):
        validate_users(pl.DataFrame({"user_id": [1, 1, 2]}), "users.csv")
    with pytest.raises(RawDataError, match=r"items.csv, column 'item_id': null item_id \(1 row"):
        validate_items(pl.DataFrame({"item_id": [1, None, 2]}), "items.csv")
    with pytest.raises(RawDataError, match="'tags': expected list"):
        validate_items(pl.DataFrame({"item_id": [1], "tags": ["1,2"]}), "items.csv")
    with pytest.raises(RawDataError, match="negative duration"):
        validate_items(pl.DataFrame({"item_id": [1, 2], "duration_s": [1.0, -3.0]}), "items.csv")
