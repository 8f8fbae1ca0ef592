"""The metric vocabulary: every metric a job reports, the task kind it applies to and which way
is better.

One spelling everywhere: a task's metric is ``<task>/<metric>`` (``ctr/auc``,
``watch_time/spearman``), the ranking metrics are ``ranking/ndcg_at_<k>``, the training loss is
``loss`` and gate diagnostics are ``gate/...``. Training logs them under ``val/`` and ``test/``;
the validation monitor (``tasks.monitor``), the quality gates (``evaluation.gates``), the
promotion rule (``pipeline.promotion.metric``), MLflow and the reports all use these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from recsys_moe.contract import BINARY, WATCH_TIME


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str
    """The task kind it is computed for."""
    higher_is_better: bool | None
    """None: neither direction is better (a ratio whose target is 1)."""
    in_validation: bool
    """Computed by training's validation loop (so it can be ``tasks.monitor``) as well as by evaluation."""
    description: str


TASK_METRICS: tuple[MetricDef, ...] = (
    MetricDef("auc", BINARY, True, True, "ROC AUC of the click probability"),
    MetricDef("gauc", BINARY, True, False, "per-user AUC, weighted by the user's impressions"),
    MetricDef("logloss", BINARY, False, True, "binary cross-entropy of the probability"),
    MetricDef("ne", BINARY, False, False, "normalised entropy: logloss over the entropy of the base rate"),
    MetricDef("calibration", BINARY, None, True, "mean predicted over observed rate (1 is calibrated)"),
    MetricDef("ece", BINARY, False, True, "expected calibration error over probability bins"),
    MetricDef("rmse_log1p", WATCH_TIME, False, True, "RMSE of log1p(seconds)"),
    MetricDef("mae_log1p", WATCH_TIME, False, False, "mean absolute error of log1p(seconds)"),
    MetricDef("spearman", WATCH_TIME, True, True, "Spearman rank correlation with the observed seconds"),
    MetricDef("xauc", WATCH_TIME, True, False, "share of same-user pairs ordered as their watch times (XAUC)"),
    MetricDef("calibration", WATCH_TIME, None, True, "mean predicted over mean observed seconds (1 is calibrated)"),
)
_BY_NAME = {m.name: m for m in TASK_METRICS}
LOSS = "loss"
RANKING = "ranking"
GATE = "gate"
SPLIT_PREFIXES = ("val/", "test/")


def key(task: str, metric: str) -> str:
    return f"{task}/{metric}"


def ndcg_key(k: int) -> str:
    return f"{RANKING}/ndcg_at_{k}"


def task_metric_keys(kinds: Mapping[str, str], validation_only: bool = False) -> list[str]:
    """``<task>/<metric>`` for every metric of each task's kind (``kinds``: task -> kind)."""
    return [key(t, m.name) for t, kind in kinds.items() for m in TASK_METRICS
            if m.kind == kind and (m.in_validation or not validation_only)]


def validation_keys(kinds: Mapping[str, str]) -> list[str]:
    """What training's validation computes: ``loss`` and each task's validation metrics."""
    return [LOSS, *task_metric_keys(kinds, validation_only=True)]


def evaluation_keys(kinds: Mapping[str, str], ndcg_k: Iterable[int]) -> list[str]:
    """What evaluation reports as headline metrics (what quality gates and promotion may name)."""
    return [*task_metric_keys(kinds), *(ndcg_key(k) for k in ndcg_k)]


def higher_is_better(name: str) -> bool | None:
    """Direction of a metric key (with or without a ``val/``/``test/`` prefix); None when
    neither direction is better or the key is not in the vocabulary."""
    for prefix in SPLIT_PREFIXES:
        name = name.removeprefix(prefix)
    if name == LOSS:
        return False
    if name.startswith(f"{RANKING}/ndcg_at_"):
        return True
    metric = _BY_NAME.get(name.rpartition("/")[2])
    return None if metric is None else metric.higher_is_better


def mode(name: str) -> str:
    """``max`` or ``min`` for Lightning's monitors; an error for a metric with no direction."""
    better = higher_is_better(name)
    if better is None:
        raise ValueError(f"metric {name!r} has no better direction to optimise")
    return "max" if better else "min"


def unknown_metric_message(name: str, allowed: list[str], where: str) -> str:
    """The error for a name outside ``allowed``, pointing old ``auc_ctr`` spellings to ``ctr/auc``."""
    hint = ""
    metric, sep, task = name.partition("_")
    for candidate in (f"{task}/{metric}", f"{task}/{metric}_log1p"):
        if sep and candidate in allowed:
            hint = f" (metrics are now named <task>/<metric>: did you mean {candidate!r}?)"
            break
    return f"{where}: unknown metric {name!r}{hint}; choose one of {allowed}"
