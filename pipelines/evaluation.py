"""The offline evaluation job (``recsys-moe evaluate``): a model reference (and others to compare)
in, a report, metrics, quality-gate verdicts and an MLflow run out.

The work is the library's: :func:`recsys_moe.evaluation.evaluate.evaluate` scores the split and
writes the reports, :func:`recsys_moe.evaluation.tracking.log_evaluation` logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from recsys_moe.config import Config
from recsys_moe.evaluation.evaluate import EvalResult, EvaluationError, evaluate
from recsys_moe.evaluation.tracking import log_evaluation

__all__ = ["EvaluationError", "run"]


def run(cfg: Config, model: str, compare: Sequence[str] = (), split: str | None = None, output: str | Path | None = None,
        data_dir: str | Path | None = None, track: bool = True, providers: str = "auto", precision: str = "fp32",
        on_step: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``model`` on ``split`` (default ``evaluation.split``) and log it to MLflow when
    ``track`` and tracking is enabled."""
    result = evaluate(cfg, model, compare, split=split, output=output, data_dir=data_dir, providers=providers,
                      precision=precision, on_step=on_step)
    if track and cfg.tracking.enabled:
        if on_step:
            on_step("logging to MLflow")
        log_evaluation(cfg, result)
    return result
