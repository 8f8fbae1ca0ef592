"""The search space of ``recsys-moe tune``: what one Optuna trial samples, as config overrides.

A trial's parameters are Optuna's own (flat names and primitive values, so the study's SQLite
storage holds them); :func:`suggest` turns them into dotted config overrides, which
:func:`overrides_to_strings` writes in the ``--set`` syntax. Conditional parameters follow the
model kind: MMoE samples its expert count and gate temperature, PLE its shared and per-task
experts and levels.

Ranges are wide enough to hold the defaults and what the peers use (embeddings 8-32, experts
2-8 of 32-128 units, Adam 3e-4..1e-2) and narrow enough for a few dozen trials.
"""

from __future__ import annotations

import json
from typing import Any

from recsys_moe.config import Config

EXPERT_SHAPES: dict[str, list[int]] = {"64": [64], "128": [128], "128-64": [128, 64], "256-128": [256, 128]}
TOWER_SHAPES: dict[str, list[int]] = {"32": [32], "64": [64], "64-32": [64, 32]}
DIM_SCALES = (0.5, 1.0, 2.0)
STEM_CANDIDATES = 2
"""Task-specific tables are sampled among the widest tables (by dim, then config order): none,
each one alone, or all of them."""


def widest_tables(cfg: Config, n: int = STEM_CANDIDATES) -> list[str]:
    """The ``n`` widest embedding tables of ``cfg``'s features, widest first (ties: config order)."""
    dims: dict[str, int] = {}
    for f in cfg.features.features:
        if f.kind != "numeric":
            dims.setdefault(f.table_name, f.dim)
    order = list(dims)
    return sorted(order, key=lambda t: (-dims[t], order.index(t)))[:n]


def task_table_choices(cfg: Config) -> dict[str, list[str]]:
    """Named choices for ``model.task_tables`` (Optuna categoricals must be primitives)."""
    wide = widest_tables(cfg)
    choices: dict[str, list[str]] = {"none": []}
    choices |= {t: [t] for t in wide}
    if len(wide) > 1:
        choices["+".join(wide)] = wide
    return choices


def scaled_features(cfg: Config, scale: float) -> list[dict[str, Any]]:
    """``cfg``'s feature definitions with every id feature's dim times ``scale`` (at least 2,
    rounded to an even number; features sharing a table keep sharing one dim)."""
    out = []
    for f in cfg.features.features:
        d = f.model_dump(mode="json", exclude_defaults=True)
        if f.kind != "numeric":
            d["dim"] = max(2, 2 * round(f.dim * scale / 2))
        out.append(d)
    return out


def suggest(trial: Any, cfg: Config) -> dict[str, Any]:
    """Sample one trial's settings from ``trial`` (an ``optuna.Trial``); returns dotted config
    keys and their values, to apply over ``cfg``."""
    tuning = cfg.tuning
    o: dict[str, Any] = {}
    kind = trial.suggest_categorical("model.kind", tuning.model_kinds)
    o["model.kind"] = kind
    if kind == "mmoe":
        o["model.num_experts"] = trial.suggest_int("model.num_experts", 2, 8)
        o["model.gate.temperature"] = trial.suggest_float("model.gate.temperature", 0.5, 2.0, log=True)
    elif kind == "ple":
        o["model.ple.shared_experts"] = trial.suggest_int("model.ple.shared_experts", 1, 4)
        o["model.ple.task_experts"] = trial.suggest_int("model.ple.task_experts", 1, 3)
        o["model.ple.levels"] = trial.suggest_int("model.ple.levels", 1, 2)
        o["model.gate.temperature"] = trial.suggest_float("model.gate.temperature", 0.5, 2.0, log=True)
    if kind in ("mmoe", "ple"):
        o["model.expert_activation"] = trial.suggest_categorical("model.expert_activation", ["relu", "swish"])
        o["model.expert_norm"] = trial.suggest_categorical("model.expert_norm", ["none", "layer"])
    o["model.expert_hidden"] = EXPERT_SHAPES[trial.suggest_categorical("model.expert_hidden", list(EXPERT_SHAPES))]
    o["model.tower_hidden"] = TOWER_SHAPES[trial.suggest_categorical("model.tower_hidden", list(TOWER_SHAPES))]
    o["model.dropout"] = trial.suggest_float("model.dropout", 0.0, 0.3)
    if kind != "single_task":
        choices = task_table_choices(cfg)
        tables = choices[trial.suggest_categorical("model.task_tables", list(choices))]
        o["model.task_tables"] = tables
        if tables:
            o["model.task_tables_cross"] = trial.suggest_categorical("model.task_tables_cross", [False, True])
    o["model.embedding_init_std"] = trial.suggest_float("model.embedding_init_std", 0.01, 0.2, log=True)
    o["training.learning_rate"] = trial.suggest_float("training.learning_rate", 3e-4, 1e-2, log=True)
    o["training.weight_decay"] = trial.suggest_float("training.weight_decay", 1e-8, 1e-4, log=True)
    o["training.batch_size"] = trial.suggest_categorical("training.batch_size", [1024, 2048, 4096])
    o["training.embedding_optimizer"] = trial.suggest_categorical("training.embedding_optimizer", ["adagrad", "adam"])
    o["training.embedding_learning_rate"] = trial.suggest_float("training.embedding_learning_rate", 3e-3, 0.2, log=True)
    if tuning.embedding_dims:
        scale = trial.suggest_categorical("embedding_dim_scale", list(DIM_SCALES))
        if scale != 1.0:
            o["features.features"] = scaled_features(cfg, scale)
    if tuning.max_epochs is not None:
        o["training.max_epochs"] = tuning.max_epochs
    return o


def overrides_to_strings(overrides: dict[str, Any]) -> list[str]:
    """``{"a.b": v}`` -> ``["a.b=<v as JSON>"]``: the ``--set`` syntax (JSON is YAML)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
