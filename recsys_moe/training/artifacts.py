"""A trained model as a self-contained folder: weights, how to rebuild it, and its FeatureSpec.

```
model/
  model.json       model + tasks config, FeatureSpec hash, format version
  state_dict.pt    torch.save(model.state_dict()); loaded with weights_only=True
  feature_spec/    the FeatureSpec the model was trained with
```
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from recsys_moe.atomic import replacing
from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.features.spec import FeatureSpec, SpecError
from recsys_moe.models import MultiTaskModel, build_model

FORMAT_VERSION = 1
CALIBRATION_BUFFERS = ("calibration_scale", "calibration_shift")


class ModelLoadError(ValueError):
    """A model folder is missing, unreadable or does not fit its FeatureSpec."""


def save_model(directory: str | Path, model: MultiTaskModel, model_cfg: ModelConfig, tasks_cfg: TasksConfig,
               spec: FeatureSpec, extra: dict[str, Any] | None = None) -> Path:
    """Write the folder under a temporary name, then rename it over any old one."""
    directory = Path(directory)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "tasks": tasks_cfg.model_dump(mode="json"),
        "model": model_cfg.model_dump(mode="json"),
        "spec_hash": spec.content_hash,
        "features_hash": spec.features_hash,
        "task_outputs": {t.name: t.prediction_name for t in model.tasks},
        **(extra or {}),
    }
    with replacing(directory) as tmp:
        tmp.mkdir()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "state_dict.pt")
        spec.save(tmp / "feature_spec")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_model(directory: str | Path) -> tuple[MultiTaskModel, FeatureSpec, dict[str, Any]]:
    """Rebuild a saved model in eval mode; returns ``(model, spec, meta)``."""
    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.is_file():
        raise ModelLoadError(f"{directory}: not a model folder (model.json missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{meta_path}: format version {meta.get('format_version')} is not supported")
    try:
        spec = FeatureSpec.load(directory / "feature_spec")
    except SpecError as exc:
        raise ModelLoadError(str(exc)) from exc
    if spec.content_hash != meta["spec_hash"]:
        raise ModelLoadError(f"{directory}: FeatureSpec hash {spec.content_hash} differs from the model's {meta['spec_hash']}")
    model = build_model(ModelConfig.model_validate(meta["model"]), TasksConfig.model_validate(meta["tasks"]), spec)
    try:
        state = torch.load(directory / "state_dict.pt", map_location="cpu", weights_only=True)
        # folders saved before calibration existed have no calibration buffers: identity
        for name in CALIBRATION_BUFFERS:
            state.setdefault(name, getattr(model, name))
        model.load_state_dict(state)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{directory / 'state_dict.pt'}: cannot load weights ({exc})") from exc
    return model.eval(), spec, meta
