"""Shared fixtures. Data in ../shared/data is read in place and never copied into the repo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_moe.data.raw import read_synthetic
from recsys_moe.data.synthetic import generate
from recsys_moe.features import fit, transform
from tests.features.conftest import small_config

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
    """A local S3-compatible server (moto's server mode on 127.0.0.1, a real HTTP endpoint), with
    the usual AWS variables pointing at it for this process and every job it starts; yields an
    empty bucket's ``s3://`` URI. Stopped at the end of the session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="recsys-test")
        yield "s3://recsys-test"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=10)
