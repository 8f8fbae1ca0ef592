"""The work-dir layout: every job's paths, and the history state a standalone command finds."""

import json

from recsys_moe.config import load_config
from recsys_moe.layout import WorkDir
from tests.conftest import ROOT


def _transform_output(data_dir, spec_hash: str, last_ts_ms: int | None) -> None:
    """What `features transform` leaves that the layout reads: the manifest and the state's json."""
    (data_dir / "state").mkdir(parents=True)
    (data_dir / "MANIFEST.json").write_text(json.dumps({"spec_hash": spec_hash}))
    (data_dir / "state" / "state.json").write_text(json.dumps({"max_len": 20, "long_watch_s": 20.0, "last_ts_ms": last_ts_ms}))


def test_paths_and_pipeline_runs_share_one_layout(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"experiment.work_dir={tmp_path}"])
    w = WorkDir.of(cfg)
    assert w.state_dir == tmp_path / "features/data/state" and w.model_dir("mmoe") == tmp_path / "train/mmoe/model"
    run = w.pipeline_run("2024-01-14_abc")
    assert run.state_dir == tmp_path / "pipeline/2024-01-14_abc/features/data/state"
    assert run.steps_file == tmp_path / "pipeline/2024-01-14_abc/steps.json"
    moved = load_config(ROOT / "configs/synthetic.yaml", [f"experiment.work_dir={tmp_path}", f"pipeline.output_dir={tmp_path / 'p'}"])
    assert WorkDir.of(moved).pipeline_run("k").root == tmp_path / "p/k"


def test_find_state_takes_the_newest_state_of_the_models_spec(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"experiment.work_dir={tmp_path}"])
    w = WorkDir.of(cfg)
    assert w.find_state("spec-a") is None
    _transform_output(w.features_dir, "spec-a", 1_000)
    for key, spec, ts in (("2024-01-13_x", "spec-a", 2_000), ("2024-01-14_x", "spec-a", 3_000), ("2024-01-15_x", "spec-b", 9_000)):
        run = w.pipeline_run(key)
        _transform_output(run.features_dir, spec, ts)
        run.steps_file.write_text("{}")
    found = w.find_state("spec-a")
    assert found.path == w.pipeline_run("2024-01-14_x").state_dir and found.origin == "pipeline run 2024-01-14_x"
    assert w.find_state("spec-b").last_ts_ms == 9_000
    assert w.find_state("spec-c") is None
    (w.pipeline_run("2024-01-14_x").state_dir / "state.json").unlink()  # a half-written run is not used
    assert w.find_state("spec-a").origin == "pipeline run 2024-01-13_x"
