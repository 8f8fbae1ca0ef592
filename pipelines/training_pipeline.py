"""The scheduled pipeline: features -> train -> export -> evaluate -> score -> promote.

``run_pipeline(cfg, as_of)`` runs every step for one as-of date. The split windows of the config
keep their lengths and move so that the test window ends on the as-of date (default: the config's
own test end). Everything lands in ``<pipeline dir>/<as-of>_<config hash>/``, a work dir of its
own (:class:`recsys_moe.layout.WorkDir`), with ``steps.json`` recording each step's status,
seconds and outputs.

Order and why it differs from "register, then export": the registry holds the ONNX export (the
artifact scoring runs), so the export step, with its parity gate, registers the version; a model
that fails parity never becomes a version. Then:

* ``evaluate`` scores the test split with the new model and the current ``champion`` on the same
  rows, checks the quality gates, sets the ``challenger`` alias on the new version and decides
  with :func:`recsys_moe.promotion.decide`;
* ``score`` scores the candidates with the model that will be champion after this run. The
  default candidates are the as-of day's (user, item) pairs as of the next day (their
  timestamps moved one day later, labels dropped): the daily job ranks tomorrow's feed with
  everything known today, so its features are point-in-time correct;
* ``promote`` moves the ``champion`` alias last, so a failure anywhere leaves it where it was.

Each step calls library functions (no job imports another). A rerun skips finished steps
(``force`` redoes them); training resumes from its last checkpoint; registering is skipped when
the training run already has a model version. One run at a time per pipeline directory (an OS
file lock).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_moe import contract, registry, tracking
from recsys_moe.config import Config
from recsys_moe.layout import WorkDir
from recsys_moe.pipelines.run_state import StepLog, exclusive, now

log = logging.getLogger(__name__)


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


def run_config(cfg: Config, as_of: dt.date | None = None) -> tuple[Config, str, Path]:
    """(config of this run, run key, run folder): windows moved to end on ``as_of``."""
    as_of = as_of or cfg.split.test.end
    shift = as_of - cfg.split.test.end
    windows = {name: w.model_copy(update={"start": w.start + shift, "end": w.end + shift}) for name, w in cfg.split.windows().items()}
    key = WorkDir.run_key(as_of, cfg.content_hash())
    run_dir = WorkDir.of(cfg).pipeline_run(key).root
    run_cfg = cfg.model_copy(update={
        "split": cfg.split.model_copy(update=windows),
        "experiment": cfg.experiment.model_copy(update={"work_dir": run_dir}),
    })
    return run_cfg, key, run_dir


class _Run:
    """The steps of one run; each returns the outputs recorded in ``steps.json``."""

    def __init__(self, cfg: Config, steps: StepLog, force: bool, progress: bool, say: Callable[[str], None]) -> None:
        self.cfg, self.log, self.force, self.progress, self.say = cfg, steps, force, progress, say
        self.layout = WorkDir.of(cfg)
        self.name = tracking.registered_model_name(cfg)

    def _raw(self):
        from recsys_moe.data.raw import load_raw

        return load_raw(self.cfg.data)

    def features_fit(self) -> dict[str, Any]:
        from recsys_moe.features import fit

        spec = fit(self._raw(), self.cfg)
        spec.save(self.layout.spec_dir)
        return {"spec_hash": spec.content_hash, "train_rows": spec.rows_fitted}

    def features_transform(self) -> dict[str, Any]:
        from recsys_moe.features import FeatureSpec, transform

        spec = FeatureSpec.load(self.layout.spec_dir)
        t = self.cfg.transform
        if t.engine == "ray":
            from recsys_moe.features.ray_transform import transform_on_ray

            self._raw()  # validated on load, as on the local path (Ray tasks read it again themselves)
            summary = transform_on_ray(self.cfg, spec, self.layout.features_dir, t.partitions, t.ray.address, t.ray.num_cpus,
                                       overwrite=True, chunk_rows=self.cfg.features.chunk_rows)
        else:
            summary = transform(self._raw(), spec, self.cfg.split, self.layout.features_dir, overwrite=True,
                                chunk_rows=self.cfg.features.chunk_rows)
        return {"rows_in": summary.rows_in, "rows_out": summary.rows_out}

    def train(self) -> dict[str, Any]:
        from recsys_moe.training.train import train

        r = train(self.cfg, resume=not self.force, progress=self.progress)
        return {"model_dir": str(r.model_dir), "training_run_id": r.run_id, "best_checkpoint": r.best_checkpoint,
                "epochs": r.epochs, "resumed": r.resumed, "test": r.test}

    def export(self) -> dict[str, Any]:
        from recsys_moe.export.bundle import export_bundle

        trained = self.log.outputs("train")
        out = self.layout.export_dir(self.cfg.model.kind)
        existing = registry.versions_of_run(self.cfg, trained["training_run_id"])
        if existing and (out / "model.onnx").is_file() and not self.force:
            self.say(f"training run {trained['training_run_id']} is already registered as version {existing[-1]}")
            return {"onnx": str(out / "model.onnx"), "version": existing[-1], "name": self.name}
        result = export_bundle(self.cfg, model_dir=trained["model_dir"], output=out, register=True)
        return {"onnx": str(result.onnx_path), "version": result.registered_version, "name": self.name,
                "parity_max_abs_diff": result.parity.max_abs_diff}

    def evaluate(self) -> dict[str, Any]:
        from recsys_moe.evaluation.evaluate import evaluate
        from recsys_moe.evaluation.tracking import log_evaluation
        from recsys_moe.promotion import decide

        version = self.log.outputs("export")["version"]
        champion = registry.alias_version(self.cfg, registry.CHAMPION)
        compare = [registry.alias_uri(self.name, registry.CHAMPION)] if champion and champion != version else []
        res = evaluate(self.cfg, self.log.outputs("train")["model_dir"], compare=compare, split="test",
                       output=self.layout.evaluate_dir("test"))
        log_evaluation(self.cfg, res)
        registry.set_alias(self.cfg, registry.CHALLENGER, version)
        rule = self.cfg.pipeline.promotion
        comparison = res.metrics["comparisons"][0] if compare else {}
        decision = decide(rule, res.headline.get(rule.metric), res.failed_gates,
                          champion_value=comparison.get("deltas", {}).get(rule.metric, {}).get("other"),
                          has_champion=bool(compare), interval=comparison.get("ci", {}).get(rule.metric))
        return {"report": str(res.output / "report.html"), "metric": rule.metric, "value": res.headline.get(rule.metric),
                "failed_gates": res.failed_gates, "champion_before": champion, "promote": decision.promote,
                "reason": decision.reason, "evaluation_run_id": res.run_id}

    def score(self) -> dict[str, Any]:
        from recsys_moe.serving.scoring import input_files, score

        if self.cfg.scoring.engine == "ray":
            from recsys_moe.serving.ray_scoring import score_on_ray as score

        ev = self.log.outputs("evaluate")
        version = self.log.outputs("export")["version"] if ev["promote"] else ev["champion_before"]
        if version is None:
            self.say("no champion to score with (the first model failed its gates); scoring skipped")
            return {"version": None, "rows": 0}
        files = input_files(self.cfg.pipeline.candidates or self._candidates())
        with tempfile.TemporaryDirectory() as cache:
            model = registry.resolve(self.cfg, registry.version_uri(self.name, version), Path(cache))
            summary = score(self.cfg, model, files, self.layout.scores_dir, self.layout.state_dir, overwrite=self.force,
                            state_origin=f"pipeline run {self.layout.root.name}")
        for note in summary.notes:
            self.say(f"score: {note}")
        return {"version": version, "rows": summary.rows, "output": str(summary.output), "provider": summary.provider,
                "candidates": [str(f) for f in files]}

    def _candidates(self) -> Path:
        """The as-of day's (user, item) pairs as of the next day, in raw shape without labels:
        what a daily candidate set for tomorrow looks like, scored with today's history."""
        import polars as pl

        from recsys_moe.atomic import replacing, write_parquet

        day = self.cfg.split.test.end
        path = self.layout.candidates_dir / f"{day + dt.timedelta(days=1)}.parquet"
        if not path.is_file():
            frame = (self._raw().impressions.filter(pl.col(contract.TIMESTAMP).dt.date() == day)
                     .drop(*contract.LABEL_COLUMNS, strict=False)
                     .with_columns(pl.col(contract.TIMESTAMP).dt.offset_by("1d")).collect())
            if frame.height == 0:
                raise ValueError(f"no impressions on {day} in the configured source to build candidates from")
            with replacing(path) as tmp:
                write_parquet(frame, tmp)
        return path

    def promote(self) -> dict[str, Any]:
        ev = self.log.outputs("evaluate")
        version = self.log.outputs("export")["version"]
        if not ev["promote"]:
            return {"champion": ev["champion_before"], "promoted": False, "reason": ev["reason"]}
        registry.promote(self.cfg, version, ev["champion_before"])
        return {"champion": version, "promoted": True, "reason": ev["reason"]}


STEPS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "features_fit": _Run.features_fit,
    "features_transform": _Run.features_transform,
    "train": _Run.train,
    "export": _Run.export,
    "evaluate": _Run.evaluate,
    "score": _Run.score,
    "promote": _Run.promote,
}
"""The steps in the order they run; each returns the outputs ``steps.json`` records."""


def run_pipeline(cfg: Config, as_of: dt.date | None = None, force: bool = False, only: str | None = None,
                 progress: bool = False, say: Callable[[str], None] = log.info) -> PipelineResult:
    """Run (or resume) the pipeline for ``as_of``; raises :class:`PipelineError` naming the step
    that failed, or :class:`recsys_moe.pipelines.run_state.PipelineBusy` when another run holds the lock."""
    if not cfg.tracking.enabled:
        raise PipelineError("setup", "the pipeline registers and promotes models in MLflow; set tracking.enabled: true")
    names = list(STEPS)
    if only is not None and only not in STEPS:
        raise PipelineError("setup", f"unknown step {only!r}; steps are {names}")
    run_cfg, key, run_dir = run_config(cfg, as_of)
    result = PipelineResult(run_dir, key, run_cfg.split.test.end)
    layout = WorkDir.of(run_cfg)
    client = tracking.client(cfg)
    with exclusive(WorkDir.of(cfg).lock_file(cfg.experiment.name)):
        steps = StepLog(layout.steps_file, {"key": key, "as_of": result.as_of.isoformat(), "config_hash": cfg.content_hash()})
        run = _Run(run_cfg, steps, force, progress, say)
        result.mlflow_run_id = steps.data.get("mlflow_run_id") or _start_mlflow_run(run_cfg, key, result.as_of)
        steps.data["mlflow_run_id"] = result.mlflow_run_id
        steps.save()
        todo = [only] if only else names
        if only:
            missing = [s for s in names[: names.index(only)] if not steps.done(s)]
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
                    outputs = STEPS[step](run)
                except Exception as exc:
                    seconds = time.perf_counter() - start
                    steps.set(step, status="failed", seconds=seconds, error=f"{type(exc).__name__}: {exc}")
                    _log_step(client, result.mlflow_run_id, step, "failed", seconds)
                    raise PipelineError(step, f"{type(exc).__name__}: {exc}") from exc
                seconds = time.perf_counter() - start
                steps.set(step, status="done", seconds=seconds, finished=now(), outputs=outputs)
                _log_step(client, result.mlflow_run_id, step, "done", seconds)
                say(f"{step}: done in {seconds:.1f}s{_describe(step, outputs)}")
                result.ran.append(step)
        finally:
            result.steps = steps.steps
            failed = any(s.get("status") == "failed" for s in steps.steps.values())
            finished = all(steps.done(s) for s in names)
            if failed or finished:
                client.set_terminated(result.mlflow_run_id, "FAILED" if failed else "FINISHED")
        if steps.done("promote"):
            _summarise(client, result)
    return result


def _describe(step: str, out: dict[str, Any]) -> str:
    """What a finished step did, in a few words for the run's log."""
    if step == "features_fit":
        return f": FeatureSpec {out['spec_hash']} from {out['train_rows']:,} train rows"
    if step == "features_transform":
        return f": {out['rows_in']:,} rows replayed; " + ", ".join(f"{k} {v:,}" for k, v in out["rows_out"].items())
    if step == "train":
        auc = {k: v for k, v in out["test"].items() if k.endswith("/auc")}
        return f": {out['epochs']} epochs" + "".join(f", {k} {v:.4f}" for k, v in auc.items())
    if step == "export":
        return f": registered as version {out['version']}"
    if step == "evaluate":
        value = "n/a" if out["value"] is None else f"{out['value']:.4f}"
        return f": {out['metric']} {value}; {'promote' if out['promote'] else 'keep the champion'} ({out['reason']})"
    if step == "score":
        return f": {out['rows']:,} rows with version {out['version']}" if out.get("version") else ""
    return ""


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
