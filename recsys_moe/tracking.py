"""MLflow helpers: where the store is, one run per training, params/tags/artifacts.

The store is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.tracking_uri`` from the config,
else ``sqlite:///mlflow.db`` in the current (project) directory. MLflow 3 refuses plain file
stores, and ``mlflow.pytorch.log_model`` defaults to the pt2 format, so models are logged as a
``state_dict`` file plus the JSON needed to rebuild them (and as ONNX by the export job).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from recsys_moe.config import Config

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARAM_MAX_CHARS = 6000  # MLflow's limit on one parameter value


def tracking_uri(cfg: Config) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.tracking_uri or DEFAULT_TRACKING_URI


def use(cfg: Config) -> None:
    """Point MLflow's fluent API at the store, with its artifact progress bars off (the jobs
    report their own progress; set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true`` to have them)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri(cfg))


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store live beside its database file (``<db dir>/mlruns/``),
    not in whatever directory the process started in (MLflow's default ``./mlruns``)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.resolve().parent / "mlruns" / experiment).as_uri()


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment_name or cfg.experiment.name


def registered_model_name(cfg: Config) -> str:
    return cfg.tracking.registered_model_name or f"recsys-moe-{cfg.experiment.name}"


def client(cfg: Config):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=tracking_uri(cfg))


def flat_params(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys; each feature definition is one param
    ``features.feature.<name>`` holding its JSON."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)

    data = cfg.to_dict()
    features = data["features"].pop("features")
    walk("", data)
    for f in features:
        out[f"features.feature.{f['name']}"] = json.dumps(f, sort_keys=True)
    return {k: v[:PARAM_MAX_CHARS] for k, v in out.items()}


def git_commit(root: str | Path = ".") -> str:
    """The checkout's commit, with ``-dirty`` when it has local changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def experiment_id(cfg: Config) -> str:
    """The id of the configured experiment, created on first use."""
    c = client(cfg)
    name = experiment_name(cfg)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location(tracking_uri(cfg), name))


def start_run(cfg: Config, tags: dict[str, str], run_name: str | None = None) -> str:
    """Create a run in the experiment (created if needed), log the config as params; return its id."""
    from mlflow.entities import Param, RunTag

    c = client(cfg)
    run = c.create_run(experiment_id(cfg), run_name=run_name, tags=tags)
    params = [Param(k, v) for k, v in flat_params(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run.info.run_id, params=params[i: i + 100])
    c.log_batch(run.info.run_id, tags=[RunTag("mlflow.source.git.commit", tags.get("git_commit", "unknown"))])
    return run.info.run_id


def log_artifacts(cfg: Config, run_id: str, files: dict[str, Path]) -> None:
    """``files``: artifact folder -> local file or directory."""
    c = client(cfg)
    for folder, path in files.items():
        if Path(path).is_dir():
            c.log_artifacts(run_id, str(path), folder)
        else:
            c.log_artifact(run_id, str(path), folder)
