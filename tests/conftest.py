"""Shared fixtures. Data in ../shared/data is read in place and never copied into the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_moe.data.raw import read_synthetic
from recsys_moe.data.synthetic import generate
from recsys_moe.features import fit, transform
from tests.features.conftest import small_config
from tests.s3server import local_s3

ROOT = Path(__file__).resolve().parents[1]
KUAIRAND_DIR = (ROOT.parent / "shared" / "data" / "kuairand").resolve()


@pytest.fixture(scope="session")
def kuairand_dir() -> Path:
    if not (KUAIRAND_DIR / "log_standard_4_25_to_5_04_pure.csv.gz").is_file():
        pytest.skip(f"KuaiRand data not found at {KUAIRAND_DIR}")
    return KUAIRAND_DIR


def build_small_features(tmp: Path, *extra: str):
    """A small synthetic feed generated, fitted and transformed under ``tmp`` (model-test input)."""
    cfg = small_config(tmp, f"experiment.work_dir={tmp / 'work'}", "training.max_epochs=2",
                       "training.batch_size=512", "training.log_every_n_steps=5", *extra)
    generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    raw = read_synthetic(cfg.data.raw_dir)
    spec = fit(raw, cfg)
    spec.save(cfg.experiment.work_dir / "features" / "spec")
    transform(raw, spec, cfg.split, cfg.experiment.work_dir / "features" / "data")
    return cfg, spec


def one_epoch(cfg, track: bool = False):
    """``cfg`` trained for one epoch, with MLflow tracking off unless ``track``."""
    update = {"training": cfg.training.model_copy(update={"max_epochs": 1})}
    if not track:
        update["tracking"] = cfg.tracking.model_copy(update={"enabled": False})
    return cfg.model_copy(update=update)


@pytest.fixture(scope="module")
def small_features(tmp_path_factory):
    """(config, FeatureSpec) with model-ready Parquet under ``<work_dir>/features``."""
    return build_small_features(tmp_path_factory.mktemp("train"))


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def s3_bucket():
    """An empty bucket on a local S3-compatible server (:func:`tests.s3server.local_s3`), with the
    AWS variables pointing at it for the whole session; yields its ``s3://`` URI."""
    with local_s3() as bucket:
        yield bucket
