"""KuaiRand as released (Pure, 1K, 27K file names; standard and random logs) read into the same
raw tables as the shared cut. The miniatures are written by the tests in each layout."""

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_moe import storage
from recsys_moe.config import ConfigError, KuaiRandLog, load_config
from recsys_moe.data.kuairand import HISTORY_FILE, LOG_FILE, USER_FILE, VIDEO_FILE, read_kuairand
from recsys_moe.data.schema import RawDataError

BEIJING = dt.timezone(dt.timedelta(hours=8))
CUT = (dt.date(2022, 4, 25), dt.date(2022, 5, 4))


def _log(rng: np.random.Generator, n: int, first: dt.date, last: dt.date, is_rand: int) -> pl.DataFrame:
    start = int(dt.datetime.combine(first, dt.time(), BEIJING).timestamp() * 1000)
    end = int(dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), BEIJING).timestamp() * 1000)
    time_ms = np.sort(rng.integers(start, end, n))
    time_ms[5] = time_ms[4]  # a tie: kept in file order
    local = pl.Series(time_ms).cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone("Asia/Shanghai")
    return pl.DataFrame({
        "user_id": rng.integers(0, 40, n), "video_id": rng.integers(0, 60, n),
        "date": local.dt.strftime("%Y%m%d").cast(pl.Int64), "hourmin": local.dt.strftime("%H%M").cast(pl.Int64),
        "time_ms": time_ms, "is_click": rng.integers(0, 2, n), "is_like": rng.integers(0, 2, n),
        "is_follow": 0, "is_comment": 0, "is_forward": 0, "is_hate": 0, "long_view": rng.integers(0, 2, n),
        "play_time_ms": rng.integers(0, 60_000, n), "duration_ms": 30_000, "profile_stay_time": 0,
        "comment_stay_time": 0, "is_profile_enter": 0, "is_rand": is_rand, "tab": rng.integers(0, 5, n),
    })


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """(cut folder, official Pure folder, official 27K folder) over the same miniature."""
    rng = np.random.default_rng(7)
    tmp = tmp_path_factory.mktemp("kuairand")
    early = _log(rng, 300, dt.date(2022, 4, 8), dt.date(2022, 4, 21), 0)
    late = _log(rng, 600, dt.date(2022, 4, 22), dt.date(2022, 5, 8), 0)
    rand = _log(rng, 120, dt.date(2022, 4, 22), dt.date(2022, 5, 8), 1)
    users = pl.DataFrame({"user_id": np.arange(40), "user_active_degree": ["high_active"] * 40, "onehot_feat0": rng.integers(0, 3, 40)})
    videos = pl.DataFrame({"video_id": np.arange(60), "author_id": rng.integers(0, 9, 60), "video_type": "NORMAL",
                           "video_duration": rng.integers(5_000, 90_000, 60).astype(float),
                           "tag": [",".join(map(str, rng.integers(0, 20, int(k)))) if k else None for k in rng.integers(0, 3, 60)]})
    cut = tmp / "cut"
    cut.mkdir()
    days = pl.col("time_ms").cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone("Asia/Shanghai").dt.date()
    late.filter(days.is_between(*CUT)).write_csv(cut / LOG_FILE.removesuffix(".gz"))
    _gzip(cut / LOG_FILE.removesuffix(".gz"))
    users.write_csv(cut / USER_FILE.removesuffix(".gz"))
    _gzip(cut / USER_FILE.removesuffix(".gz"))
    videos.write_csv(cut / VIDEO_FILE)
    official = tmp / "KuaiRand-Pure" / "data"
    official.mkdir(parents=True)
    early.write_csv(official / "log_standard_4_08_to_4_21_pure.csv")
    late.write_csv(official / "log_standard_4_22_to_5_08_pure.csv")
    rand.write_csv(official / "log_random_4_22_to_5_08_pure.csv")
    users.write_csv(official / "user_features_pure.csv")
    videos.write_csv(official / "video_features_basic_pure.csv")
    pl.DataFrame({"video_id": np.arange(60), "show_cnt": 1}).write_csv(official / "video_features_statistic_pure.csv")
    big = tmp / "KuaiRand-27K" / "data"  # 27K ships its logs and videos in parts
    big.mkdir(parents=True)
    early.write_csv(big / "log_standard_4_08_to_4_21_27k_part1.csv")
    late[:250].write_csv(big / "log_standard_4_22_to_5_08_27k_part1.csv")
    late[250:].write_csv(big / "log_standard_4_22_to_5_08_27k_part2.csv")
    rand.write_csv(big / "log_random_4_22_to_5_08_27k.csv")
    users.write_csv(big / "user_features_27k.csv")
    videos[:30].write_csv(big / "video_features_basic_27k_part1.csv")
    videos[30:].write_csv(big / "video_features_basic_27k_part2.csv")
    return cut, official.parent, big.parent


def _gzip(path: Path) -> None:
    import gzip

    with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


def _same(a, b) -> None:
    assert_frame_equal(a.impressions.collect(), b.impressions.collect())
    assert_frame_equal(a.users, b.users)
    assert_frame_equal(a.items, b.items)


def test_the_official_files_give_the_cuts_raw_tables(layouts):
    cut, pure, big = layouts
    want = read_kuairand(cut)
    window = [KuaiRandLog(kind="standard", start=CUT[0], end=CUT[1])]
    _same(read_kuairand(pure, logs=window), want)  # the variant's folder or its data/ folder
    _same(read_kuairand(pure / "data", layout="official", logs=window), want)
    _same(read_kuairand(big, variant="27k", logs=window), want)
    want.validate()
    assert want.impressions.collect()["is_rand"].sum() == 0


def test_the_random_log_can_be_the_test_window(layouts):
    _, pure, _ = layouts
    logs = [KuaiRandLog(kind="standard", end=dt.date(2022, 5, 4)), KuaiRandLog(kind="random", start=dt.date(2022, 5, 5))]
    raw = read_kuairand(pure, logs=logs)
    raw.validate()
    imp = raw.impressions.collect()
    day = imp["timestamp"].dt.date()
    assert str(day.min()) == "2022-04-08" and str(day.max()) == "2022-05-08"
    assert (imp.filter(day >= dt.date(2022, 5, 5))["is_rand"] == 1).all()
    assert (imp.filter(day <= dt.date(2022, 5, 4))["is_rand"] == 0).all()
    assert imp["timestamp"].is_sorted() and imp["impression_id"].to_list() == list(range(imp.height))
    assert raw.history is None  # the earlier days are in the log: the replay builds the history
    both = read_kuairand(pure, logs=[KuaiRandLog(kind="standard"), KuaiRandLog(kind="random")]).impressions.collect()
    assert both.height == 300 + 600 + 120 and both["is_rand"].sum() == 120
    assert both["timestamp"].is_sorted()  # the two logs interleave in time order


def test_wrong_layout_or_log_is_refused_clearly(layouts, tmp_path):
    cut, pure, _ = layouts
    with pytest.raises(RawDataError, match="the shared cut has only the standard log"):
        read_kuairand(cut, logs=[KuaiRandLog(kind="random")])
    with pytest.raises(FileNotFoundError, match="layout is cut, but the files here are the official layout"):
        read_kuairand(pure, layout="cut")
    with pytest.raises(FileNotFoundError, match="official KuaiRand-1k files"):
        read_kuairand(pure, variant="1k")
    shutil.copytree(pure, tmp_path / "no-users")
    (tmp_path / "no-users/data/user_features_pure.csv").unlink()
    with pytest.raises(FileNotFoundError, match="user_features_pure.csv"):
        read_kuairand(tmp_path / "no-users")
    with pytest.raises(ConfigError, match="data.kuairand.logs"):
        load_config(None, ["data.kuairand.logs=[{kind: standard}, {kind: standard}]"])


@pytest.mark.kuairand
def test_the_shared_cut_rewritten_in_the_official_layout_reads_the_same(kuairand_dir, tmp_path):
    """The real cut's log saved under the official file name (all its days lie in 04-22..05-08)."""
    official = tmp_path / "data"
    official.mkdir()
    pl.read_csv(kuairand_dir / LOG_FILE, infer_schema_length=10_000).write_csv(official / "log_standard_4_22_to_5_08_pure.csv")
    shutil.copy(kuairand_dir / VIDEO_FILE, official / "video_features_basic_pure.csv")
    pl.read_csv(kuairand_dir / USER_FILE, infer_schema_length=10_000).write_csv(official / "user_features_pure.csv")
    want = read_kuairand(kuairand_dir)
    got = read_kuairand(tmp_path)
    _same(got, want)
    assert want.history is not None and (kuairand_dir / HISTORY_FILE).is_file() and got.history is None


@pytest.mark.kuairand
def test_the_shared_cut_reads_the_same_from_a_bucket(kuairand_dir, s3_bucket):
    for name in (LOG_FILE, USER_FILE, VIDEO_FILE, HISTORY_FILE):
        storage.upload(kuairand_dir / name, f"{s3_bucket}/kuairand-cut/{name}")
    got, want = read_kuairand(f"{s3_bucket}/kuairand-cut"), read_kuairand(kuairand_dir)
    _same(got, want)
    assert_frame_equal(got.history, want.history)
    assert got.inputs["users"] == [f"{s3_bucket}/kuairand-cut/{USER_FILE}"]
