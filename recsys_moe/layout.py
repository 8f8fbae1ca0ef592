"""The work-dir layout: every path a job writes under ``experiment.work_dir``, in one place.

```
<work_dir>/
  features/spec/                    FeatureSpec               (features fit)
  features/data/{train,validation,test}/part-*.parquet, state/, MANIFEST.json   (features transform)
  train/<model kind>/               checkpoints, model/ ...   (train)
  export/<model kind>/              model.onnx, feature_spec/ (export)
  evaluate/<split>/                 report, metrics.json      (evaluate)
  evaluate/features/<spec>-<split>/ rows transformed with another model's spec (evaluate)
  scores/                           part-*.parquet, MANIFEST.json   (score)
  tune/<study>/                     optuna.db, features/<hash>/, trials/<n>/, best.yaml  (tune)
  pipeline/<as-of>_<config hash>/   one pipeline run: a work dir of its own (same layout) plus
                                    steps.json and candidates/
```

The CLI's defaults, the jobs and the pipeline all take their paths from :class:`WorkDir`, so a
standalone command finds what the pipeline wrote: :meth:`WorkDir.find_state` looks in the
standalone transform's folder and in every pipeline run's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from recsys_moe.config import Config

MANIFEST = "MANIFEST.json"
STATE = "state"


@dataclass(frozen=True)
class StateFound:
    """A saved history state and where it came from."""

    path: Path
    last_ts_ms: int | None
    origin: str
    """``features transform`` or ``pipeline run <key>``."""


@dataclass(frozen=True)
class WorkDir:
    root: Path
    pipeline_root: Path
    """Where pipeline runs go (``pipeline.output_dir``, default ``<root>/pipeline``)."""

    @classmethod
    def of(cls, cfg: Config) -> WorkDir:
        root = Path(cfg.experiment.work_dir)
        return cls(root, Path(cfg.pipeline.output_dir or root / "pipeline"))

    # features
    @property
    def spec_dir(self) -> Path:
        return self.root / "features" / "spec"

    @property
    def features_dir(self) -> Path:
        return self.root / "features" / "data"

    def split_dir(self, split: str) -> Path:
        return self.features_dir / split

    @property
    def state_dir(self) -> Path:
        return self.features_dir / STATE

    # training and export
    def train_dir(self, model_kind: str) -> Path:
        return self.root / "train" / model_kind

    def model_dir(self, model_kind: str) -> Path:
        return self.train_dir(model_kind) / "model"

    def export_dir(self, model_kind: str) -> Path:
        return self.root / "export" / model_kind

    # tuning
    def tune_dir(self, study: str) -> Path:
        return self.root / "tune" / study

    # evaluation and scoring
    def evaluate_dir(self, split: str) -> Path:
        return self.root / "evaluate" / split

    def evaluate_features_dir(self, cfg: Config, spec_hash: str) -> Path:
        """Rows transformed with another spec (``spec_hash``) for this config's split windows."""
        windows = hashlib.sha256(json.dumps(cfg.split.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
        return self.root / "evaluate" / "features" / f"{spec_hash}-{windows}"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    # pipeline runs
    @staticmethod
    def run_key(as_of: dt.date, config_hash: str) -> str:
        return f"{as_of.isoformat()}_{config_hash}"

    def pipeline_run(self, key: str) -> WorkDir:
        """The work dir of one pipeline run (its runs, if any, would nest below it)."""
        root = self.pipeline_root / key
        return WorkDir(root, root / "pipeline")

    def lock_file(self, experiment: str) -> Path:
        return self.pipeline_root / f"{experiment}.lock"

    @property
    def steps_file(self) -> Path:
        return self.root / "steps.json"

    def pipeline_runs(self) -> list[WorkDir]:
        """Every pipeline run folder below this work dir, oldest as-of first."""
        if not self.pipeline_root.is_dir():
            return []
        runs = [p for p in self.pipeline_root.iterdir() if p.is_dir() and (p / "steps.json").is_file()]
        return [self.pipeline_run(p.name) for p in sorted(runs, key=lambda p: p.name)]

    def find_state(self, spec_hash: str) -> StateFound | None:
        """The newest saved history state written by a transform with FeatureSpec ``spec_hash``:
        the standalone ``features transform`` output or any pipeline run's, whichever state
        reaches the latest event. None when no transform with that spec saved one."""
        found: list[StateFound] = []
        for where, origin in [(self, "features transform"), *((r, f"pipeline run {r.root.name}") for r in self.pipeline_runs())]:
            state = where.state_dir
            if _manifest_spec_hash(where.features_dir) == spec_hash and (state / "state.json").is_file():
                found.append(StateFound(state, _last_ts(state), origin))
        if not found:
            return None
        return max(found, key=lambda s: (s.last_ts_ms or -1, (s.path / "state.json").stat().st_mtime_ns))


def _manifest_spec_hash(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / MANIFEST).read_text()).get("spec_hash")
    except (OSError, ValueError):
        return None


def _last_ts(state: Path) -> int | None:
    try:
        return json.loads((state / "state.json").read_text()).get("last_ts_ms")
    except (OSError, ValueError):
        return None
