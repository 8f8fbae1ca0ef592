"""``data.source: files``: someone else's CSV logs mapped onto the raw tables, through every job."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from polars.testing import assert_frame_equal

from recsys_moe.config import (
    ConfigError,
    ImpressionFiles,
    ModelConfig,
    TasksConfig,
    config_from_dict,
    load_config,
)
from recsys_moe.data.files import impressions_to_raw, read_files
from recsys_moe.data.raw import load_raw, read_synthetic
from recsys_moe.data.schema import RawDataError
from recsys_moe.data.synthetic import generate
from recsys_moe.export.onnx_export import export_onnx
from recsys_moe.features import fit, transform
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import build_model
from tests.data.foreign_feed import foreign_impressions, write_foreign_feed
from tests.features.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def feeds(tmp_path_factory):
    """(synthetic config, files config) over the same small feed."""
    tmp = tmp_path_factory.mktemp("files")
    cfg = small_config(tmp, f"experiment.work_dir={tmp / 'work'}")
    generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    files = write_foreign_feed(cfg.data.raw_dir, tmp / "theirs")
    their = config_from_dict({**cfg.to_dict(), "data": {**cfg.data.model_dump(mode="json"), "source": "files", "files": files}})
    return cfg, their


def test_mapped_csv_tables_equal_the_synthetic_raw_tables(feeds):
    cfg, their = feeds
    ours, mapped = read_synthetic(cfg.data.raw_dir), load_raw(their.data)
    want = ours.impressions.collect().sort("impression_id")
    got = mapped.impressions.collect().sort("impression_id").select(want.columns)
    assert_frame_equal(got, want, check_dtypes=False)
    assert got.schema["timestamp"] == want.schema["timestamp"]
    assert_frame_equal(mapped.items.select(ours.items.columns), ours.items, check_dtypes=False)
    assert mapped.items.schema["tags"] == pl.List(pl.Int64)
    assert_frame_equal(mapped.users.select(ours.users.columns), ours.users, check_dtypes=False, abs_tol=1e-5)


def test_mapped_feed_transforms_to_the_same_model_ready_rows(feeds, tmp_path):
    cfg, their = feeds
    ours, mapped = read_synthetic(cfg.data.raw_dir), load_raw(their.data)
    spec_ours, spec_theirs = fit(ours, cfg), fit(mapped, their)
    for name, table in spec_ours.tables.items():  # same vocabularies (the statistics differ in the
        assert list(spec_theirs.tables[name].vocab) == list(table.vocab)  # 10th digit: CSV text vs float32)
    transform(ours, spec_ours, cfg.split, tmp_path / "ours")
    transform(mapped, spec_theirs, their.split, tmp_path / "theirs")
    for split in ("train", "test"):
        a, b = (pl.read_parquet(tmp_path / side / split / "*.parquet") for side in ("ours", "theirs"))
        assert_frame_equal(b, a, abs_tol=1e-5)


def test_mapping_errors_name_the_file_and_column(feeds, tmp_path):
    cfg, their = feeds
    files = their.data.files
    bad = files.model_copy(update={"users": files.users.model_copy(update={"columns": {"user_id": "user"}})})
    with pytest.raises(RawDataError, match=r"users.csv \(data.files.users\), column 'user': mapped to 'user_id'.*columns present"):
        read_files(bad)
    (tmp_path / "items.csv").write_text("vid;cat;creator_id;dur_ms;tag_str\n1;2;3;1000;4|x\n2;2;3;1000;5\n")
    bad = files.model_copy(update={"items": files.items.model_copy(update={"path": str(tmp_path / "items.csv")})})
    with pytest.raises(RawDataError, match=r"items.csv \(data.files.items\), column 'tag_str': tags must be integer ids.*\(1 row"):
        read_files(bad)
    none = files.model_copy(update={"users": files.users.model_copy(update={"path": str(tmp_path / "nope/*.csv")})})
    with pytest.raises(FileNotFoundError, match=r"data.files.users.path: no files match"):
        read_files(none)
    with pytest.raises(ConfigError, match=r"data.files: required when data.source is files"):
        load_config(None, ["data.source=files"])
    with pytest.raises(ConfigError, match=r"data.files.impressions.timestamp_unit"):
        load_config(None, ["data.source=files", "data.files.impressions={path: x, timestamp_unit: days}",
                           "data.files.users={path: u}", "data.files.items={path: i}"])


def test_timestamps_in_units_strings_and_zones():
    seconds = ImpressionFiles(path="-", timestamp_unit="s", time_zone="Asia/Shanghai")
    rows = impressions_to_raw(pl.DataFrame({"timestamp": [1650816000]}), seconds, "t")  # 2022-04-24 16:00 UTC
    assert rows["timestamp"].dtype.time_zone == "Asia/Shanghai"
    assert rows["timestamp"].dt.date().item() == dt.date(2022, 4, 25)  # Beijing's calendar day
    text = ImpressionFiles(path="-", time_zone="America/New_York")
    got = impressions_to_raw(pl.DataFrame({"timestamp": ["2024-01-01T23:30:00", "2024-01-02T04:30:00Z", "garbage"]}), text, "t")
    utc = got["timestamp"].dt.convert_time_zone("UTC").to_list()
    assert utc[0] == dt.datetime(2024, 1, 2, 4, 30, tzinfo=dt.UTC)  # wall clock in New York
    assert utc[1] == dt.datetime(2024, 1, 2, 4, 30, tzinfo=dt.UTC)  # an explicit offset wins
    assert utc[2] is None  # validation counts and names unparseable timestamps


@pytest.mark.slow
def test_the_example_config_runs_fit_transform_train_and_score_on_a_foreign_csv_feed(feeds, tmp_path):
    """configs/own_data.yaml (the README's example) with only its paths and days changed."""
    _, their = feeds
    work = tmp_path / "work"
    files = their.data.files
    cfg = load_config(ROOT / "configs/own_data.yaml", [
        f"data.files.impressions.path={files.impressions.path}", f"data.files.users.path={files.users.path}",
        f"data.files.items.path={files.items.path}", f"experiment.work_dir={work}",
        *(f"split.{name}={{start: {w.start}, end: {w.end}}}" for name, w in their.split.windows().items()),
    ])
    cfg_path = tmp_path / "theirs.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "recsys_moe.cli", *args, "-c", str(cfg_path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    cli("features", "fit")
    cli("features", "transform")
    cli("train", "--set", "training.max_epochs=1", "--set", "tracking.enabled=false")
    assert (work / "train" / cfg.model.kind / "model").is_dir()
    # score candidates written in the feed's own shape: the mapping applies to them too
    raw_rows = pl.read_parquet(Path(their.data.raw_dir) / "impressions/date=2024-01-04/*.parquet")
    candidates = tmp_path / "candidates.parquet"
    foreign_impressions(raw_rows).drop("clicked", "play_ms").write_parquet(candidates)
    torch.manual_seed(0)
    spec_dir = work / "features" / "spec"

    spec = FeatureSpec.load(spec_dir)
    onnx = tmp_path / "export" / "model.onnx"
    onnx.parent.mkdir()
    export_onnx(build_model(ModelConfig(), TasksConfig(), spec).eval(), spec, onnx,
                pq.read_table(work / "features/data/validation"))
    spec.save(onnx.parent / "feature_spec")
    done = cli("score", "--model", str(onnx), "--input", str(candidates), "--output", str(tmp_path / "scores"))
    assert "history from" in done.stderr
    scores = pl.read_parquet(tmp_path / "scores" / "*.parquet")
    assert scores["impression_id"].to_list() == raw_rows["impression_id"].to_list()
    assert scores["timestamp"].to_list() == raw_rows["timestamp"].to_list()
    assert np.isfinite(scores["probs_ctr"].to_numpy()).all() and scores["probs_ctr"].std() > 0


def test_a_hive_partitioned_parquet_folder_reads_its_keys_as_columns(feeds, tmp_path):
    cfg, their = feeds
    imps = read_synthetic(cfg.data.raw_dir).impressions.collect()
    days = imps["timestamp"].dt.date()
    for day in days.unique().sort():
        folder = tmp_path / "logs" / f"day={day}"
        folder.mkdir(parents=True)
        foreign_impressions(imps.filter(days == day)).write_parquet(folder / "part-0.parquet")
    files = their.data.files
    hive = files.model_copy(update={"impressions": files.impressions.model_copy(update={"path": str(tmp_path / "logs")})})
    got = read_files(hive).impressions.collect()
    assert got.height == imps.height
    assert (got["day"] == got["timestamp"].dt.date()).all()  # the folder's key, as a column
