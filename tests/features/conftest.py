from pathlib import Path

import pytest

from recsys_moe.config import load_config
from recsys_moe.data.raw import read_synthetic
from recsys_moe.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.synthetic.num_users=400",
    "data.synthetic.num_items=300",
    "data.synthetic.num_impressions=16000",
    "data.synthetic.num_days=4",
    "split.train={start: 2024-01-01, end: 2024-01-02}",
    "split.validation={start: 2024-01-03, end: 2024-01-03}",
    "split.test={start: 2024-01-04, end: 2024-01-04}",
]


def small_config(tmp_path: Path, *extra: str):
    return load_config(ROOT / "configs/synthetic.yaml", [*SMALL, f"data.raw_dir={tmp_path / 'raw'}", *extra])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small synthetic feed on disk, its config and raw tables."""
    tmp = tmp_path_factory.mktemp("feat")
    cfg = small_config(tmp)
    generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    return cfg, read_synthetic(cfg.data.raw_dir)
