import polars as pl
import pytest

from recsys_moe.data.kuairand import map_log, map_videos, read_kuairand
from recsys_moe.data.schema import RawDataError

pytestmark = pytest.mark.kuairand


@pytest.fixture(scope="module")
def raw(kuairand_dir):
    tables = read_kuairand(kuairand_dir)
    tables.validate()
    return tables


def test_log_maps_onto_raw_shape(raw):
    imp = raw.impressions.collect()
    assert imp.height == 171_671
    assert imp["click"].mean() == pytest.approx(0.44, abs=0.01)
    assert (imp["watch_time_s"] == 0).mean() == pytest.approx(0.10, abs=0.01)
    assert imp["timestamp"].is_sorted()
    # Calendar days in Beijing time cover the documented window.
    days = imp["timestamp"].dt.date()
    assert str(days.max()) == "2022-05-04"
    assert imp["impression_id"].is_unique().all()


def test_items_and_users(raw):
    assert raw.items.height == 7_583 and raw.users.height == 27_285
    assert raw.items.schema["tags"] == pl.List(pl.Int64)
    tagged = raw.items.filter(pl.col("tags").list.len() > 0)
    assert tagged.height > 0.9 * raw.items.height
    assert (tagged["category"] == tagged["tags"].list.first()).all()
    assert raw.history is not None and raw.history["user_id"].is_unique().all()


def test_bad_kuairand_columns_are_named():
    log = pl.DataFrame({"user_id": [1], "video_id": [2], "time_ms": [0], "is_click": [1], "tab": [1]})
    with pytest.raises(RawDataError, match=r"log.csv, column 'play_time_ms': required column"):
        map_log(log, "log.csv")
    videos = pl.DataFrame({"video_id": [1], "author_id": [1], "video_duration": ["long"], "tag": ["1"]})
    with pytest.raises(RawDataError, match=r"videos.csv, column 'video_duration': expected float"):
        map_videos(videos, "videos.csv")


def test_tag_parsing_handles_empty_and_bad_entries():
    videos = pl.DataFrame(
        {"video_id": [1, 2, 3], "author_id": [1, 1, 1], "video_duration": [1000.0, 2000.0, 3000.0], "tag": ["3,7", None, "x,5"]}
    )
    items = map_videos(videos, "v.csv")
    assert items["tags"].to_list() == [[3, 7], [], [5]]
    assert items["category"].to_list() == [3, -1, 5]
    assert items["duration_s"].to_list() == [1.0, 2.0, 3.0]
