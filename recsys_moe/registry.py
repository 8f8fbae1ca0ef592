"""The MLflow model registry: register an export, resolve a model reference, move aliases.

A registered version is the exported ONNX model (the artifact scoring runs) logged with
``mlflow.onnx.log_model`` into its training run, with the FeatureSpec's files in the model's
``extra_files`` (flattened: :func:`~recsys_moe.features.spec.flat_spec_files`). Aliases:
``champion`` (what scoring uses) and ``challenger`` (the latest evaluated candidate).

A model reference, wherever a job takes one, is ``models:/<name>@<alias>``,
``models:/<name>/<version>`` or the path of an exported ``model.onnx`` with ``feature_spec/``
beside it. Imports no torch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_moe import tracking
from recsys_moe.config import Config
from recsys_moe.features.spec import flat_spec_files, restore_spec_dir

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_URI_PREFIX = "models:/"


class RegistryError(ValueError):
    """A model reference cannot be resolved, or the registry refused a change."""


@dataclass(frozen=True)
class ResolvedModel:
    onnx_path: Path
    spec_dir: Path
    label: str
    """How the job names the model in its outputs: the reference as given."""
    cost_path: Path | None = None
    """The export's ``cost.json`` (bytes and FLOPs), when the bundle has one."""


PRECISIONS = ("fp32", "fp16", "int8")


def precision_file(precision: str) -> str:
    """The bundle's file name of each precision: ``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``."""
    if precision not in PRECISIONS:
        raise RegistryError(f"precision {precision!r}: choose one of {list(PRECISIONS)}")
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def resolve(cfg: Config, model: str, cache: Path, precision: str = "fp32") -> ResolvedModel:
    """A model reference -> the ONNX file (of ``precision``, for a registered version) and its
    FeatureSpec folder (registry models are downloaded under ``cache``). A file path is taken as
    it is: name ``model.int8.onnx`` to score the INT8 copy."""
    name = precision_file(precision)
    if model.startswith(MODEL_URI_PREFIX):
        import mlflow

        tracking.use(cfg)
        try:
            local = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(cache / "download")))
        except Exception as exc:  # MLflow raises several untyped errors for unknown names/aliases
            raise RegistryError(f"{model}: cannot fetch the model from MLflow at {tracking.tracking_uri(cfg)} ({exc})") from exc
        if not (local / "extra_files" / "spec.json").is_file() or not list(local.glob("*.onnx")):
            raise RegistryError(f"{model}: not an exported recsys-moe model (ONNX file or FeatureSpec missing)")
        onnx_path = sorted(local.glob("*.onnx"))[0] if precision == "fp32" else local / "extra_files" / name
        if not onnx_path.is_file():
            raise RegistryError(f"{model}: this version has no {precision} copy; export it with `recsys-moe export --{precision}`")
        cost = local / "extra_files" / "cost.json"
        return ResolvedModel(onnx_path, restore_spec_dir(local / "extra_files", cache / "feature_spec"), model,
                             cost if cost.is_file() else None)
    path = Path(model)
    if not path.is_file():
        raise RegistryError(f"{path}: ONNX model not found (give an exported model.onnx or a models:/ URI)")
    spec_dir = path.parent / "feature_spec"
    if not (spec_dir / "spec.json").is_file():
        raise RegistryError(f"{path}: no feature_spec/ beside the model; export it with `recsys-moe export`")
    cost = path.parent / "cost.json"
    return ResolvedModel(path, spec_dir, str(path), cost if cost.is_file() else None)


def version_uri(name: str, version: str) -> str:
    return f"{MODEL_URI_PREFIX}{name}/{version}"


def alias_uri(name: str, alias: str) -> str:
    return f"{MODEL_URI_PREFIX}{name}@{alias}"


def register(cfg: Config, onnx_path: Path, spec_dir: Path, spec_hash: str, run_id: str | None,
             logged: dict[str, Any] | None = None, extra_models: list[Path] | None = None,
             metrics: dict[str, float] | None = None) -> tuple[str, str, str]:
    """Log ``onnx_path`` (with its spec, and ``extra_models``: the fp16 and INT8 copies, cost.json) into
    ``run_id`` (a new run when None) and register it as a new version of
    ``tracking.registered_model_name``; ``logged`` dicts are stored beside it as JSON artifacts,
    ``metrics`` logged on the run. Returns (name, version, run id)."""
    import mlflow
    import onnx

    tracking.use(cfg)
    name = tracking.registered_model_name(cfg)
    client = tracking.client(cfg)
    if run_id is None:
        run_id = client.create_run(tracking.experiment_id(cfg), run_name=f"{cfg.experiment.name}-export").info.run_id
    with mlflow.start_run(run_id=run_id):  # reopens the training run; ends FINISHED
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)), name="onnx",
            extra_files=[str(f) for f in [*flat_spec_files(spec_dir), *(extra_models or [])]],
            save_as_external_data=False, metadata={"spec_hash": spec_hash},
        )
        for artifact, data in (logged or {}).items():
            mlflow.log_dict(data, artifact)
        if metrics:
            mlflow.log_metrics(metrics)
    # The client, not mlflow.register_model, so nothing is printed: the jobs report it themselves.
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{MODEL_URI_PREFIX}{info.model_id}", run_id=run_id,
                                          model_id=info.model_id, tags={"spec_hash": spec_hash})
    return name, str(version.version), run_id


def versions_of_run(cfg: Config, run_id: str) -> list[str]:
    """Versions registered from training run ``run_id``, oldest first."""
    name = tracking.registered_model_name(cfg)
    found = tracking.client(cfg).search_model_versions(f"name='{name}'")
    return sorted((str(v.version) for v in found if v.run_id == run_id), key=int)


def alias_version(cfg: Config, alias: str) -> str | None:
    """The version ``alias`` points at, or None (no such model or alias)."""
    try:
        return str(tracking.client(cfg).get_model_version_by_alias(tracking.registered_model_name(cfg), alias).version)
    except Exception:  # MLflow raises untyped errors for an unknown model or alias
        return None


def set_alias(cfg: Config, alias: str, version: str) -> None:
    tracking.client(cfg).set_registered_model_alias(tracking.registered_model_name(cfg), alias, version)


def promote(cfg: Config, version: str, replaced: str | None) -> None:
    """Point ``champion`` at ``version`` and tag when and what it replaced."""
    client, name = tracking.client(cfg), tracking.registered_model_name(cfg)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_at", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if replaced:
        client.set_model_version_tag(name, version, "replaced_version", replaced)


def download_training_model(cfg: Config, run_id: str, dest: Path) -> Path:
    """The ``model`` artifact folder (state_dict + spec) of a training run."""
    import mlflow

    tracking.use(cfg)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(dest)))
    except Exception as exc:  # untyped MLflow errors for an unknown run
        raise RegistryError(f"training run {run_id}: cannot fetch its model folder from MLflow ({exc})") from exc
