"""Batch scoring job: same predictions as torch, one row per input row after a SIGKILL, refusals,
the state found without --state, an empty state, corrupt input, the score evaluation ranks by."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.data.raw import load_raw
from recsys_moe.export.onnx_export import export_onnx
from recsys_moe.features.enrich import enrich_candidates
from recsys_moe.features.mapper import FeatureMapper
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.models import build_model
from recsys_moe.pipelines.batch_scoring import run as score
from recsys_moe.serving import scoring
from recsys_moe.serving.scoring import ScoringError
from recsys_moe.training.batches import ColumnarSplit
from tests.conftest import export_random_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(small_features, tmp_path_factory):
    cfg, spec = small_features
    model, onnx_path = export_random_model(cfg, spec, tmp_path_factory.mktemp("export"), seed=3)
    return cfg, spec, model, onnx_path


def candidates(cfg) -> Path:
    return cfg.data.raw_dir / "impressions" / "date=2024-01-04"


@pytest.mark.parametrize("slice_rows", [None, 300])
def test_scores_equal_torch_on_the_same_raw_rows(exported, tmp_path, monkeypatch, slice_rows):
    cfg, spec, model, onnx_path = exported
    if slice_rows:  # parts of 1000 rows prepared and scored as slices of 300, 300, 300 and 100
        monkeypatch.setattr(scoring, "SLICE_ROWS", slice_rows)
    summary = score(cfg, str(onnx_path), candidates(cfg), tmp_path / "out", batch_rows=1000)
    raw_rows = pl.read_parquet(candidates(cfg))
    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert summary.rows == got.height == raw_rows.height and summary.provider == "CPUExecutionProvider"
    # the candidates' day is inside the transformed log, so the state has seen later events
    # (the state ends at the log's last event: the candidates' last timestamp)
    before = raw_rows.filter(pl.col("timestamp") < pl.col("timestamp").max()).height
    assert summary.rows_before_state == before > 0 and "earlier than the history state" in summary.notes[-1]
    assert got["impression_id"].to_list() == raw_rows["impression_id"].to_list()
    manifest = json.loads((tmp_path / "out/MANIFEST.json").read_text())
    assert manifest["complete"] and sum(manifest["parts"].values()) == raw_rows.height

    state_dir = cfg.experiment.work_dir / "features/data/state"
    assert summary.state_source == f"{state_dir} (features transform)"  # found without --state
    ref, _ = _torch_reference(spec, model, cfg, raw_rows, HistoryState.load(state_dir))
    np.testing.assert_allclose(got["probs_ctr"].to_numpy(), ref["probs_ctr"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["pred_watch_time"].to_numpy(), ref["pred_watch_time"].numpy(), rtol=1e-5, atol=1e-5)


def test_killed_job_resumes_with_one_row_per_input_row(exported, tmp_path):
    cfg, _, _, onnx_path = exported
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "recsys_moe.cli", "score", "-c", str(cfg_path), "--model", str(onnx_path),
            "--input", str(cfg.data.raw_dir / "impressions"), "--output", str(out), "--batch-rows", "200"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 5:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the job finished before it could be killed"
    assert not json.loads((out / "MANIFEST.json").read_text())["complete"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr
    got = pl.read_parquet(out / "*.parquet")
    want = pl.read_parquet(cfg.data.raw_dir / "impressions/*/*.parquet")
    assert got.height == want.height and got["impression_id"].n_unique() == want.height
    assert set(got["impression_id"].to_list()) == set(want["impression_id"].to_list())


def test_another_model_at_the_same_path_is_not_resumed(exported, tmp_path):
    """Finished parts are reused only by the same model bytes: a model re-exported to the same
    path (or a moved alias) is refused without --overwrite and rescored with it."""
    cfg, spec, _, onnx_path = exported
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(onnx_path.read_bytes())
    spec.save(path.parent / "feature_spec")
    score(cfg, str(path), candidates(cfg), tmp_path / "out", batch_rows=1000)
    first = pl.read_parquet(tmp_path / "out" / "*.parquet")["probs_ctr"]
    torch.manual_seed(11)
    export_onnx(build_model(ModelConfig(), TasksConfig(), spec).eval(), spec, path, pq.read_table(cfg.experiment.work_dir / "features/data/validation"))
    with pytest.raises(ScoringError, match="another input, model or history state"):
        score(cfg, str(path), candidates(cfg), tmp_path / "out", batch_rows=1000)
    summary = score(cfg, str(path), candidates(cfg), tmp_path / "out", batch_rows=1000, overwrite=True)
    second = pl.read_parquet(tmp_path / "out" / "*.parquet")["probs_ctr"]
    assert summary.skipped_parts == 0 and summary.rows == first.len() == second.len()
    assert not np.allclose(first.to_numpy(), second.to_numpy())


def test_no_note_for_candidates_after_the_state(exported, tmp_path):
    cfg, _, _, onnx_path = exported
    later = pl.read_parquet(candidates(cfg)).with_columns(pl.col("timestamp") + pl.duration(days=30))
    later.write_parquet(tmp_path / "tomorrow.parquet")
    summary = score(cfg, str(onnx_path), tmp_path / "tomorrow.parquet", tmp_path / "out")
    assert summary.rows == later.height and summary.rows_before_state == 0 and summary.notes == []


def test_model_exported_with_another_spec_is_refused(exported, tmp_path):
    cfg, spec, _, onnx_path = exported
    other = tmp_path / "m"
    other.mkdir()
    (other / "model.onnx").write_bytes(onnx_path.read_bytes())
    changed = type(spec)(**{**spec.__dict__, "rows_fitted": spec.rows_fitted + 1})  # a different, valid spec
    changed.save(other / "feature_spec")
    with pytest.raises(ScoringError, match="exported with FeatureSpec"):
        score(cfg, str(other / "model.onnx"), candidates(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_column_empty_input_and_no_input(exported, tmp_path):
    cfg, _, _, onnx_path = exported
    pl.read_parquet(candidates(cfg)).drop("item_id").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ScoringError, match=r"bad.parquet: column\(s\) \['item_id'\] missing"):
        score(cfg, str(onnx_path), tmp_path / "bad.parquet", tmp_path / "out")
    both = tmp_path / "both"  # a directory input: every file is checked, not only the first
    both.mkdir()
    pl.read_parquet(candidates(cfg)).write_parquet(both / "a.parquet")
    pl.read_parquet(candidates(cfg)).drop("timestamp").write_parquet(both / "b.parquet")
    with pytest.raises(ScoringError, match=r"b.parquet: column\(s\) \['timestamp'\] missing"):
        score(cfg, str(onnx_path), both, tmp_path / "out1")
    for key, stats in (("user_id", True), ("timestamp", False)):  # with and without Parquet statistics
        rows = pl.read_parquet(candidates(cfg))
        rows.with_columns(pl.when(pl.int_range(pl.len()) % 100 == 5).then(None).otherwise(pl.col(key)).alias(key)).write_parquet(
            tmp_path / f"null_{key}.parquet", statistics=stats)
        with pytest.raises(ScoringError, match=rf"null_{key}.parquet: column '{key}' has {len(range(5, rows.height, 100))} null value"):
            score(cfg, str(onnx_path), tmp_path / f"null_{key}.parquet", tmp_path / "out_null")
    assert not (tmp_path / "out_null").exists()
    pl.read_parquet(candidates(cfg)).head(0).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ScoringError, match="no rows"):
        score(cfg, str(onnx_path), tmp_path / "empty.parquet", tmp_path / "out2")
    with pytest.raises(ScoringError, match="no Parquet input"):
        score(cfg, str(onnx_path), tmp_path / "nothing-here", tmp_path / "out3")


def _cli_score(cfg, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    return subprocess.run([sys.executable, "-m", "recsys_moe.cli", "score", "-c", str(cfg_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def _torch_reference(spec, model, cfg, raw_rows: pl.DataFrame, state: HistoryState) -> tuple[dict, pl.DataFrame]:
    enriched = enrich_candidates(raw_rows, load_raw(cfg.data), state)
    feats = FeatureMapper(spec).features(enriched)[0].to_arrow()
    batch = ColumnarSplit(spec, feats, "reference", label_columns=()).batch(torch.arange(feats.num_rows))
    with torch.no_grad():
        return model(batch.sparse, batch.dense), enriched


def test_an_empty_state_or_none_at_all_gives_zero_counters(exported, tmp_path):
    """A source with no prior history and no transform yet: zero counters, empty lists, no crash."""
    cfg, spec, model, onnx_path = exported
    hist = spec.features.history
    empty = tmp_path / "empty_state"
    HistoryState.empty(hist.max_len, hist.long_watch_s).save(empty)
    given = _cli_score(cfg, tmp_path, "--model", str(onnx_path), "--input", str(candidates(cfg)), "-o", str(tmp_path / "a"),
                       "--state", str(empty))
    assert given.returncode == 0, given.stderr
    bare = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"work_dir": tmp_path / "new_work"})})
    found = _cli_score(bare, tmp_path, "--model", str(onnx_path), "--input", str(candidates(cfg)), "-o", str(tmp_path / "b"))
    assert found.returncode == 0, found.stderr
    assert "no saved history state" in " ".join(found.stderr.split())
    a, b = pl.read_parquet(tmp_path / "a/*.parquet"), pl.read_parquet(tmp_path / "b/*.parquet")
    ref, enriched = _torch_reference(spec, model, cfg, pl.read_parquet(candidates(cfg)), HistoryState.load(empty))
    assert (enriched["user_impressions"] == 0).all() and (enriched["item_impressions"] == 0).all()
    assert enriched["user_ctr"].null_count() == enriched.height and enriched["hist_click_items"].list.len().sum() == 0
    np.testing.assert_allclose(a["probs_ctr"].to_numpy(), ref["probs_ctr"].numpy(), atol=1e-5)
    assert a.drop("model_version").equals(b.drop("model_version"))


def test_corrupt_or_truncated_input_exits_2_naming_the_file(exported, tmp_path):
    cfg, _, _, onnx_path = exported
    good = next(candidates(cfg).glob("*.parquet")).read_bytes()
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all" * 10)
    (tmp_path / "truncated.parquet").write_bytes(good[: len(good) // 2])
    for name in ("garbage.parquet", "truncated.parquet"):
        out = _cli_score(cfg, tmp_path, "--model", str(onnx_path), "--input", str(tmp_path / name), "-o", str(tmp_path / "out"))
        said = " ".join(out.stderr.split())
        assert out.returncode == 2, said
        assert f"{tmp_path / name}: not a readable Parquet file" in said and "Traceback" not in said
    assert not (tmp_path / "out").exists()


def test_written_score_is_the_score_evaluation_ranks_by(small_features, tmp_path):
    """Non-default exponents, and candidates whose features are exactly the test split's: every row
    of the scored day shares one timestamp (rows sharing a timestamp never see each other), and
    scoring reads the state as of the day before, so both jobs feed the model the same inputs."""
    from recsys_moe.config import SplitConfig
    from recsys_moe.data.raw import read_synthetic
    from recsys_moe.features import fit, transform
    from recsys_moe.layout import WorkDir
    from recsys_moe.pipelines.evaluation import run as evaluate
    from tests.features.conftest import small_config

    base, _ = small_features
    raw_dir = tmp_path / "raw"
    shutil.copytree(base.data.raw_dir, raw_dir)
    day = raw_dir / "impressions" / "date=2024-01-04"
    for f in day.glob("*.parquet"):
        rows = pl.read_parquet(f)
        rows.with_columns(pl.col("timestamp").dt.truncate("1d") + pl.duration(hours=12)).write_parquet(f)
    cfg = small_config(tmp_path, f"data.raw_dir={raw_dir}", f"experiment.work_dir={tmp_path / 'work'}",
                       "evaluation.score_exponents={ctr: 2.0, watch_time: 0.5}", "tracking.enabled=false")
    layout, raw = WorkDir.of(cfg), read_synthetic(raw_dir)
    spec = fit(raw, cfg)
    transform(raw, spec, cfg.split, layout.features_dir)
    before = SplitConfig.model_validate({"train": {"start": "2024-01-01", "end": "2024-01-01"},
                                         "validation": {"start": "2024-01-02", "end": "2024-01-02"},
                                         "test": {"start": "2024-01-03", "end": "2024-01-03"}})
    transform(raw, spec, before, tmp_path / "as_of_day_3")
    torch.manual_seed(5)
    onnx_path = tmp_path / "m" / "model.onnx"
    export_onnx(build_model(ModelConfig(), TasksConfig(), spec).eval(), spec, onnx_path,
                pq.read_table(layout.split_dir("validation")), score_exponents={"ctr": 2.0, "watch_time": 0.5})
    spec.save(onnx_path.parent / "feature_spec")

    scored = score(cfg, str(onnx_path), day, tmp_path / "scores", state_dir=tmp_path / "as_of_day_3" / "state")
    assert scored.notes == [] and scored.rows_before_state == 0
    evaluated = evaluate(cfg, str(onnx_path), split="test", output=tmp_path / "eval", track=False)
    written = pl.read_parquet(tmp_path / "scores/*.parquet")
    ranked = pl.read_parquet(evaluated.output / "predictions.parquet")
    both = written.join(ranked, on="impression_id", suffix="_eval")
    assert both.height == written.height == ranked.height > 0
    np.testing.assert_allclose(both["score"].to_numpy(), both["score_eval"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(both["probs_ctr"].to_numpy(), both["probs_ctr_eval"].to_numpy(), rtol=1e-5)
    assert not np.allclose(written["score"], written["probs_ctr"] * written["pred_watch_time"], rtol=1e-3)
