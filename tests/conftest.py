"""Shared fixtures. Data in ../shared/data is read in place and never copied into the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUAIRAND_DIR = (ROOT.parent / "shared" / "data" / "kuairand").resolve()


@pytest.fixture(scope="session")
def kuairand_dir() -> Path:
    if not (KUAIRAND_DIR / "log_standard_4_25_to_5_04_pure.csv.gz").is_file():
        pytest.skip(f"KuaiRand data not found at {KUAIRAND_DIR}")
    return KUAIRAND_DIR
