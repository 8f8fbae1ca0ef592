"""``recsys-moe tune``: hyperparameter search with Optuna (Akiba et al., KDD 2019).

Each trial samples settings (:mod:`recsys_moe.tuning.space`), trains them with the ordinary
training job on the train split and is scored on the validation split only: the test days are
never read, so they stay a fair estimate for the config the study picks. A trial reports its
validation metric after every epoch; Optuna's median pruner stops a trial whose metric falls
under the median of earlier trials at the same epoch. TPE (Bergstra et al., NeurIPS 2011)
samples the next trial from the finished ones.

Study folder ``<work_dir>/tune/<study>/``::

    optuna.db               the Optuna study (SQLite): run `tune` again to add trials
    features/<hash>/        FeatureSpec and model-ready data per distinct feature definition
    trials/<number>/        each trial's training folder (model/, metrics; checkpoints removed)
    confirm/, confirm.json  the best trials retrained with more seeds (``--confirm K``)
    best.yaml               the base config with the best trial's settings (or ``--output``)

MLflow: one parent run for the study and one nested run per trial (``mlflow.parentRunId``), so
the UI shows the trials under the study with their configs and curves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from recsys_moe import tracking
from recsys_moe.atomic import replacing
from recsys_moe.config import Config, apply_overrides, config_from_dict
from recsys_moe.layout import MANIFEST, WorkDir
from recsys_moe.metrics import names as metric_names
from recsys_moe.training.train import TrainError, TrainResult, train
from recsys_moe.tuning.space import overrides_to_strings, suggest

log = logging.getLogger(__name__)


class TuneError(RuntimeError):
    """The study cannot start or produced no result (the message says why and what to do)."""


@dataclass
class TuneResult:
    study_name: str
    study_dir: Path
    metric: str
    direction: str
    best_value: float
    best_trial: int
    best_overrides: dict[str, Any]
    config_path: Path
    counts: dict[str, int]
    """Trials of the whole study by state (``COMPLETE``, ``PRUNED``, ``FAIL``)."""
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    """The best completed trials, best first: number, value, kind, epochs."""
    mlflow_run_id: str | None = None


class PruneOnValidation(L.Callback):
    """Reports the validation metric to the Optuna trial after every epoch and stops training
    (gracefully: the run still saves its best checkpoint) when the pruner says so."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned_after: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_after = epoch
            trainer.should_stop = True


class FeatureCache:
    """FeatureSpec and model-ready data per feature definition (a trial that scales the
    embedding dims needs a spec of its own; the rows are the same)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._raw = None

    def paths(self, cfg: Config) -> tuple[Path, Path]:
        """``(spec_dir, data_dir)`` for ``cfg.features``, fitted and transformed on first use."""
        from recsys_moe.data.raw import load_raw
        from recsys_moe.features import fit, transform

        folder = self.root / cfg.features.content_hash()
        if not (folder / "data" / MANIFEST).is_file():
            if self._raw is None:
                log.info("reading the %s source once for the study", cfg.data.source)
                self._raw = load_raw(cfg.data)
            log.info("fitting and transforming features %s", folder.name)
            with replacing(folder) as tmp:
                spec = fit(self._raw, cfg)
                spec.save(tmp / "spec")
                transform(self._raw, spec, cfg.split, tmp / "data")
        return folder / "spec", folder / "data"


def write_config(raw_base: dict[str, Any], overrides: dict[str, Any], path: Path, header: str) -> Path:
    """``raw_base`` (a config file's mapping) with ``overrides`` set, validated, written to
    ``path`` atomically under a comment ``header``."""
    raw = apply_overrides(raw_base, overrides_to_strings(overrides))
    config_from_dict(raw, str(path))
    with replacing(path) as tmp:
        comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        tmp.write_text(comment + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=120))
    return path


def study_identity(cfg: Config) -> str:
    """Hash of what a trial's result depends on: the config less the tuning settings that only
    steer the search (sampler and pruner start-up, confirmation seeds, the study's name)."""
    data = cfg.to_dict()
    for key in ("startup_trials", "pruning_warmup_epochs", "confirm_seeds", "study_name"):
        data["tuning"].pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _trial_summary(t: Any, values: list[float]) -> dict[str, Any]:
    return {"number": t.number, "value": t.value, "kind": t.params.get("model.kind"), "epochs": t.user_attrs.get("epochs"),
            "seeds": values, "mean": statistics.mean(values), "params": dict(t.params)}


def tune(
    cfg: Config,
    raw_base: dict[str, Any],
    trials: int | None,
    timeout: float | None = None,
    output: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    confirm: int = 0,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    on_confirm: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run (or continue) the study for ``cfg``; write the best settings over ``raw_base`` (the
    config file's mapping with any ``--set`` overrides) to ``output`` (default
    ``<study>/best.yaml``). With ``confirm`` K > 0 the K best trials are trained again with
    ``tuning.confirm_seeds - 1`` more seeds (validation only; kept in ``confirm.json``) and the
    best mean wins: one seed's validation AUC moves by about as much as the top trials differ.
    ``on_trial`` and ``on_confirm`` get each finished run's summary."""
    import optuna

    if trials is None and timeout is None:
        raise TuneError("give --trials, --timeout or both: a study needs a limit (--trials 0 only confirms and writes)")
    tuning = cfg.tuning
    metric = tuning.metric or cfg.tasks.monitor
    direction = "maximize" if metric_names.higher_is_better(metric) else "minimize"
    name = tuning.study_name or cfg.experiment.name
    root = WorkDir.of(cfg).tune_dir(name)
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{root / 'optuna.db'}", study_name=name, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.experiment.seed, n_startup_trials=tuning.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tuning.startup_trials, n_warmup_steps=tuning.pruning_warmup_epochs),
    )
    base_hash = study_identity(cfg)
    if study.user_attrs.get("base_config_hash", base_hash) != base_hash or study.direction.name.lower() != direction:
        raise TuneError(f"{root} holds a study of another base config or metric; pass --fresh to start it over, "
                        "or set tuning.study_name for a new one")
    study.set_user_attr("base_config_hash", base_hash)
    study.set_user_attr("metric", metric)

    parent = study.user_attrs.get("mlflow_run_id")
    if cfg.tracking.enabled and parent is None:
        parent = tracking.start_run(cfg, tags={"git_commit": tracking.git_commit(), "config_hash": base_hash,
                                               "optuna_study": name, "job": "tune"}, run_name=f"{name}-tune")
        study.set_user_attr("mlflow_run_id", parent)
    cache = FeatureCache(root / "features")
    base = cfg.to_dict()

    def run(overrides: dict[str, Any], number: int, out: Path, callbacks: list[L.Callback], seed: int | None = None) -> TrainResult:
        """Train one trial's settings (with another seed for a confirmation run) on validation only."""
        settings = overrides_to_strings(overrides) + ([f"experiment.seed={seed}"] if seed is not None else [])
        trial_cfg = config_from_dict(apply_overrides(base, settings), f"trial {number}")
        spec_dir, data_dir = cache.paths(trial_cfg)
        tags = {"mlflow.parentRunId": parent, "optuna_study": name, "optuna_trial": str(number)} if parent else None
        if tags and seed is not None:
            tags["confirm_seed"] = str(seed)
        result = train(trial_cfg, spec_dir, data_dir, out, resume=False, progress=False, evaluate_test=False,
                       callbacks=callbacks, run_tags=tags)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # model/ keeps the best weights
        return result

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest(trial, cfg)
        pruning = PruneOnValidation(trial, f"val/{metric}")
        result = run(overrides, trial.number, root / "trials" / f"{trial.number:04d}", [pruning])
        value = result.validation[f"val/{metric}"]
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("validation", {k: v for k, v in result.validation.items() if not k.startswith("val/gate/")})
        if parent:
            tracking.client(cfg).log_metric(parent, f"trial/{metric}", value, step=trial.number)
        if on_trial:
            on_trial({"number": trial.number, "metric": metric, "value": value, "kind": overrides["model.kind"],
                      "epochs": result.epochs, "pruned": pruning.pruned_after is not None})
        if pruning.pruned_after is not None:
            raise optuna.TrialPruned(f"stopped after epoch {pruning.pruned_after}: under the median of earlier trials")
        return value

    if trials != 0:
        study.optimize(objective, n_trials=trials, timeout=timeout, show_progress_bar=progress, catch=(TrainError,))

    states = optuna.trial.TrialState
    done = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in (states.COMPLETE, states.PRUNED, states.FAIL)}
    if not done:
        raise TuneError(f"no trial of study {name!r} completed ({counts}); see the log above, or allow more trials")
    maximize = direction == "maximize"
    ranked = sorted(done, key=lambda t: t.value, reverse=maximize)

    # Confirmation: the best trials again with more seeds, on validation; the best mean wins.
    confirmed_path = root / "confirm.json"
    confirmed: dict[str, dict[str, float]] = json.loads(confirmed_path.read_text()) if confirmed_path.is_file() else {}
    extra_seeds = [cfg.experiment.seed + i for i in range(1, tuning.confirm_seeds)]
    for t in ranked[:confirm]:
        for seed in extra_seeds:
            if str(seed) in confirmed.get(str(t.number), {}):
                continue
            r = run(t.user_attrs["overrides"], t.number, root / "confirm" / f"{t.number:04d}-seed{seed}", [], seed)
            confirmed.setdefault(str(t.number), {})[str(seed)] = r.validation[f"val/{metric}"]
            with replacing(confirmed_path) as tmp:
                tmp.write_text(json.dumps(confirmed, indent=2))
            if on_confirm:
                on_confirm({"number": t.number, "seed": seed, "value": confirmed[str(t.number)][str(seed)]})

    def seeds_of(t: Any) -> list[float]:
        return [t.value, *confirmed.get(str(t.number), {}).values()]

    pool = ranked[:confirm] if confirm else ranked[:1]
    best = sorted(pool, key=lambda t: statistics.mean(seeds_of(t)), reverse=maximize)[0]
    best_value = statistics.mean(seeds_of(best))
    n_seeds = len(seeds_of(best))
    path = Path(output or root / "best.yaml")
    chosen = (f"the best mean over {n_seeds} seeds among the top {len(pool)} trials" if n_seeds > 1 else
              f"the best of {counts['COMPLETE']} completed trials")
    header = (f"Tuned by `recsys-moe tune` (Optuna TPE + median pruning), study {name!r} in {root}:\n"
              f"{counts['COMPLETE']} completed trials ({counts['PRUNED']} pruned); trial {best.number} is {chosen}, "
              f"validation {metric} = {best_value:.5f}" + (f" (seeds {cfg.experiment.seed}, {', '.join(map(str, extra_seeds))})" if n_seeds > 1 else "")
              + ".\n"
              f"Split windows: train {cfg.split.train.start}..{cfg.split.train.end}, "
              f"validation {cfg.split.validation.start}..{cfg.split.validation.end} (the test days were not read).\n")
    write_config(raw_base, best.user_attrs["overrides"], path, header)
    if parent:
        c = tracking.client(cfg)
        c.log_metric(parent, f"best/{metric}", best_value)
        c.set_tag(parent, "best_trial", str(best.number))
        c.log_artifact(parent, str(path), "best_config")
        c.set_terminated(parent, "FINISHED")
    return TuneResult(
        study_name=name, study_dir=root, metric=metric, direction=direction, best_value=best_value, best_trial=best.number,
        best_overrides=best.user_attrs["overrides"], config_path=path, counts=counts,
        leaderboard=[_trial_summary(t, seeds_of(t)) for t in ranked[:max(5, confirm)]], mlflow_run_id=parent,
    )
