"""The README stays a user's page: short, links inside the repository only, and benchmark figures
generated from benchmarks/results/ rather than typed in."""

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 400


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(page: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        assert "://" not in target, f"{page.name}: {target} points outside the repository"
        if target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target} is not a file of the repository"


def test_benchmark_summary_is_generated_from_the_results():
    spec = importlib.util.spec_from_file_location("summary", ROOT / "benchmarks" / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    text = (ROOT / "README.md").read_text()
    assert summary.replace_block(text, summary.summary()) == text, "run: python benchmarks/summary.py --write README.md"


def test_detail_tables_in_the_docs_are_generated_from_the_results():
    spec = importlib.util.spec_from_file_location("summary", ROOT / "benchmarks" / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    text = summary.DETAILS.read_text()
    assert summary.replace_block(text, summary.details(), summary.DETAILS_START, summary.DETAILS_END) == text, \
        "run: python benchmarks/summary.py --write README.md"
