"""The scheduled pipeline: features -> train -> export -> evaluate -> score -> promote.

``run_pipeline(cfg, as_of)`` runs every step for one as-of date. The split windows of the config
keep their lengths and move so that the test window ends on the as-of date (default: the config's
own test end). Everything lands in ``<pipeline dir>/<as-of>_<config hash>/`` (the run's
``work_dir``), with ``steps.json`` recording each step's status, seconds and outputs.

Order and why it differs from "register, then export": the registry holds the ONNX export (the
artifact scoring runs), so the export step, with its parity gate, registers the version; a model
that fails parity never becomes a version. Then:

* ``evaluate`` scores the test split with the new model and the current ``champion`` on the same
  rows, checks the quality gates, sets the ``challenger`` alias on the new version and decides:
  promote when every gate passes and the new model beats the champion on
  ``pipeline.promotion.metric`` by more than ``pipeline.promotion.margin`` (no champion: promote).
* ``score`` scores the candidates with the model that will be champion after this run.
* ``promote`` moves the ``champion`` alias last, so a failure anywhere leaves it where it was.

A rerun skips finished steps (``force`` redoes them); training resumes from its last checkpoint;
registering is skipped when the training run already has a model version. One run at a time per
pipeline directory (an OS file lock).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.run_state import StepLog, exclusive, now
from recsys_moe import tracking
from recsys_moe.config import Config

log = logging.getLogger(__name__)
STEPS = ("features_fit", "features_transform", "train", "export", "evaluate", "score", "promote")
CHAMPION, CHALLENGER = "champion", "challenger"


class PipelineError(RuntimeError):
    """A step failed; ``step`` names it. The champion alias is untouched."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {message}")
        self.step = step


@dataclass
class PipelineResult:
    run_dir: Path
    key: str
    as_of: dt.date
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def output(self, step: str, name: str, default: Any = None) -> Any:
        return self.steps.get(step, {}).get("outputs", {}).get(name, default)


def pipeline_dir(cfg: Config) -> Path:
    return Path(cfg.pipeline.output_dir or cfg.experiment.work_dir / "pipeline")


def run_config(cfg: Config, as_of: dt.date | None = None) -> tuple[Config, str, Path]:
    """(config of this run, run key, run folder): windows moved to end on ``as_of``."""
    as_of = as_of or cfg.split.test.end
    shift = as_of - cfg.split.test.end
    windows = {name: w.model_copy(update={"start": w.start + shift, "end": w.end + shift}) for name, w in cfg.split.windows().items()}
    key = f"{as_of.isoformat()}_{cfg.content_hash()}"
    run_dir = pipeline_dir(cfg) / key
    run_cfg = cfg.model_copy(update={
        "split": cfg.split.model_copy(update=windows),
        "experiment": cfg.experiment.model_copy(update={"work_dir": run_dir}),
    })
    return run_cfg, key, run_dir


class _Run:
    """The steps of one run; each returns the outputs recorded in ``steps.json``."""

    def __init__(self, cfg: Config, run_dir: Path, steps: StepLog, force: bool, progress: bool, say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.log, self.force, self.progress, self.say = cfg, run_dir, steps, force, progress, say
        self.client = tracking.client(cfg)
        self.name = tracking.registered_model_name(cfg)

    def _raw(self):
        from recsys_moe.data.raw import load_raw

        return load_raw(self.cfg.data)

    def features_fit(self) -> dict[str, Any]:
        from recsys_moe.features import fit

        spec = fit(self._raw(), self.cfg)
        spec.save(self.run_dir / "features" / "spec")
        return {"spec_hash": spec.content_hash, "train_rows": spec.rows_fitted}

    def features_transform(self) -> dict[str, Any]:
        from recsys_moe.features import FeatureSpec, transform

        spec = FeatureSpec.load(self.run_dir / "features" / "spec")
        summary = transform(
            self._raw(), spec, self.cfg.split, self.run_dir / "features" / "data", overwrite=True,
            chunk_rows=self.cfg.features.chunk_rows,
        )
        return {"rows_in": summary.rows_in, "rows_out": summary.rows_out}

    def train(self) -> dict[str, Any]:
        from recsys_moe.training.train import train

        r = train(self.cfg, resume=not self.force, progress=self.progress)
        return {"model_dir": str(r.model_dir), "training_run_id": r.run_id, "best_checkpoint": r.best_checkpoint,
                "epochs": r.epochs, "resumed": r.resumed, "test": r.test}

    def _champion(self) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, CHAMPION).version)
        except Exception:  # MLflow raises untyped errors for an unknown model or alias
            return None

    def export(self) -> dict[str, Any]:
        from recsys_moe.export.job import run_export

        run_id = self.log.outputs("train")["training_run_id"]
        model_dir = self.log.outputs("train")["model_dir"]
        out = self.run_dir / "export" / self.cfg.model.kind
        existing = [v for v in self.client.search_model_versions(f"name='{self.name}'") if v.run_id == run_id]
        if existing and (out / "model.onnx").is_file() and not self.force:
            version = str(max(int(v.version) for v in existing))
            self.say(f"training run {run_id} is already registered as version {version}")
            return {"onnx": str(out / "model.onnx"), "version": version, "name": self.name}
        result = run_export(self.cfg, model_dir=model_dir, output=out, register=True)
        return {"onnx": str(result.onnx_path), "version": result.registered_version, "name": self.name,
                "parity_max_abs_diff": result.parity.max_abs_diff}

    def evaluate(self) -> dict[str, Any]:
        from pipelines.evaluation import evaluate

        version = self.log.outputs("export")["version"]
        champion = self._champion()
        compare = [f"models:/{self.name}@{CHAMPION}"] if champion and champion != version else []
        res = evaluate(self.cfg, self.log.outputs("train")["model_dir"], compare=compare, split="test",
                       output=self.run_dir / "evaluate" / "test")
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        promo = self.cfg.pipeline.promotion
        value = res.headline.get(promo.metric)
        decision, reason = True, "no champion yet"
        if res.failed_gates:
            decision, reason = False, "quality gates failed: " + "; ".join(res.failed_gates)
        elif compare:
            comp = res.metrics["comparisons"][0]
            theirs = comp["deltas"].get(promo.metric, {}).get("other")
            gain = None if value is None or theirs is None else (value - theirs if promo.higher_is_better else theirs - value)
            ci = comp["ci"].get(promo.metric)
            if gain is None:
                decision, reason = False, f"{promo.metric} is missing for one of the models"
            elif gain <= promo.margin:
                decision, reason = False, f"{promo.metric} {value:.4f} does not beat the champion's {theirs:.4f} by more than {promo.margin:g}"
            elif promo.require_significant and not (ci and ci["significant"]):
                decision, reason = False, f"{promo.metric} gain {gain:+.4f} is not significant (bootstrap interval includes 0)"
            else:
                decision, reason = True, f"{promo.metric} {value:.4f} beats the champion's {theirs:.4f} by {gain:+.4f}"
        return {"report": str(res.output / "report.html"), "metric": promo.metric, "value": value, "failed_gates": res.failed_gates,
                "champion_before": champion, "promote": decision, "reason": reason, "evaluation_run_id": res.run_id}

    def score(self) -> dict[str, Any]:
        from pipelines.batch_scoring import score

        ev = self.log.outputs("evaluate")
        version = self.log.outputs("export")["version"] if ev["promote"] else ev["champion_before"]
        if version is None:
            self.say("no champion to score with (the first model failed its gates); scoring skipped")
            return {"version": None, "rows": 0}
        candidates = self.cfg.pipeline.candidates or str(self._candidates())
        summary = score(self.cfg, f"models:/{self.name}/{version}", candidates, self.run_dir / "scores",
                        state_dir=self.run_dir / "features" / "data" / "state", overwrite=self.force)
        for note in summary.notes:
            self.say(f"score: {note}")
        return {"version": version, "rows": summary.rows, "output": str(summary.output), "provider": summary.provider}

    def _candidates(self) -> Path:
        """The as-of day's impressions in raw shape (what a daily candidate set looks like)."""
        import polars as pl

        from recsys_moe.atomic import replacing, write_parquet

        day = self.cfg.split.test.end
        path = self.run_dir / "candidates" / f"{day.isoformat()}.parquet"
        if not path.is_file():
            frame = self._raw().impressions.filter(pl.col("timestamp").dt.date() == day).collect()
            if frame.height == 0:
                raise ValueError(f"no impressions on {day} in the configured source to score")
            with replacing(path) as tmp:
                write_parquet(frame, tmp)
        return path

    def promote(self) -> dict[str, Any]:
        ev = self.log.outputs("evaluate")
        version = self.log.outputs("export")["version"]
        if not ev["promote"]:
            return {"champion": ev["champion_before"], "promoted": False, "reason": ev["reason"]}
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.client.set_model_version_tag(self.name, version, "promoted_at", now())
        if ev["champion_before"]:
            self.client.set_model_version_tag(self.name, version, "replaced_version", ev["champion_before"])
        return {"champion": version, "promoted": True, "reason": ev["reason"]}


def run_pipeline(cfg: Config, as_of: dt.date | None = None, force: bool = False, only: str | None = None,
                 progress: bool = False, say: Callable[[str], None] = log.info) -> PipelineResult:
    """Run (or resume) the pipeline for ``as_of``; raises :class:`PipelineError` naming the step
    that failed, or :class:`pipelines.run_state.PipelineBusy` when another run holds the lock."""
    if not cfg.tracking.enabled:
        raise PipelineError("setup", "the pipeline registers and promotes models in MLflow; set tracking.enabled: true")
    if only is not None and only not in STEPS:
        raise PipelineError("setup", f"unknown step {only!r}; steps are {list(STEPS)}")
    run_cfg, key, run_dir = run_config(cfg, as_of)
    result = PipelineResult(run_dir, key, run_cfg.split.test.end)
    with exclusive(pipeline_dir(cfg) / f"{cfg.experiment.name}.lock"):
        steps = StepLog(run_dir / "steps.json", {"key": key, "as_of": result.as_of.isoformat(), "config_hash": cfg.content_hash()})
        run = _Run(run_cfg, run_dir, steps, force, progress, say)
        result.mlflow_run_id = steps.data.get("mlflow_run_id") or _start_mlflow_run(run_cfg, key, result.as_of)
        steps.data["mlflow_run_id"] = result.mlflow_run_id
        steps.save()
        todo = [only] if only else list(STEPS)
        if only:
            missing = [s for s in STEPS[: STEPS.index(only)] if not steps.done(s)]
            if missing:
                raise PipelineError(only, f"needs the earlier steps {missing} first")
        try:
            for step in todo:
                if steps.done(step) and not force:
                    result.skipped.append(step)
                    continue
                say(f"{step}: running")
                attempts = steps.steps.get(step, {}).get("attempts", 0) + 1
                steps.set(step, status="running", started=now(), error=None, attempts=attempts)
                start = time.perf_counter()
                try:
                    outputs = getattr(run, step)()
                except Exception as exc:
                    seconds = time.perf_counter() - start
                    steps.set(step, status="failed", seconds=seconds, error=f"{type(exc).__name__}: {exc}")
                    _log_step(run.client, result.mlflow_run_id, step, "failed", seconds)
                    raise PipelineError(step, f"{type(exc).__name__}: {exc}") from exc
                seconds = time.perf_counter() - start
                steps.set(step, status="done", seconds=seconds, finished=now(), outputs=outputs)
                _log_step(run.client, result.mlflow_run_id, step, "done", seconds)
                say(f"{step}: done in {seconds:.1f}s")
                result.ran.append(step)
        finally:
            result.steps = steps.steps
            failed = any(s.get("status") == "failed" for s in steps.steps.values())
            finished = all(steps.done(s) for s in STEPS)
            if failed or finished:
                run.client.set_terminated(result.mlflow_run_id, "FAILED" if failed else "FINISHED")
        if steps.done("promote"):
            _summarise(run.client, result)
    return result


def _start_mlflow_run(cfg: Config, key: str, as_of: dt.date) -> str:
    return tracking.start_run(cfg, tags={"job": "pipeline", "pipeline_key": key, "as_of": as_of.isoformat(),
                                         "config_hash": cfg.content_hash(), "git_commit": tracking.git_commit()},
                              run_name=f"pipeline-{as_of.isoformat()}")


def _log_step(c: Any, run_id: str, step: str, status: str, seconds: float) -> None:
    c.set_tag(run_id, f"step.{step}.status", status)
    c.log_metric(run_id, f"step.{step}.seconds", seconds)


def _summarise(c: Any, result: PipelineResult) -> None:
    ev, promo = result.output("evaluate", "reason"), result.output("promote", "champion")
    c.set_tag(result.mlflow_run_id, "decision", f"{'promoted' if result.output('promote', 'promoted') else 'kept champion'}: {ev}")
    c.set_tag(result.mlflow_run_id, "model_version", str(result.output("export", "version")))
    c.set_tag(result.mlflow_run_id, "champion", str(promo))
