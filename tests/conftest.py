"""Shared fixtures. Data in ../shared/data is read in place and never copied into the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


DDP_FEED = ("data.synthetic.num_impressions=60000", "data.synthetic.num_users=1000", "data.synthetic.num_items=600",
            "training.batch_size=256", "training.accelerator=cpu", "training.num_threads=1")
"""The feed the multi-process training tests share: enough rows for AUC to mean something."""


def feed_config_file(tmp: Path, name: str, *extra: str):
    """:func:`build_small_features` on the multi-process tests' feed plus ``extra``; the config is
    also written to ``tmp/<name>.yaml`` for the CLI. Returns (config, spec, path)."""
    cfg, spec = build_small_features(tmp, *DDP_FEED, *extra)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return cfg, spec, path


def export_random_model(cfg, spec, out: Path, seed: int):
    """The default model with seeded random weights, exported to ``out/model.onnx`` with its spec."""
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.config import ModelConfig, TasksConfig
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.models import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(), TasksConfig(), spec).eval()
    export_onnx(model, spec, out / "model.onnx", pq.read_table(cfg.experiment.work_dir / "features/data/validation"))
    spec.save(out / "feature_spec")
    return model, out / "model.onnx"


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


@pytest.fixture(scope="module")
def local_ray():
    """A real Ray instance on this machine for one test module (2 CPUs: the CI machine's)."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


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
