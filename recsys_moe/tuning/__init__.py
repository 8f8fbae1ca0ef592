"""Hyperparameter search: ``recsys-moe tune`` (Optuna study over the config, validation split only)."""

from recsys_moe.tuning.study import TuneError, TuneResult, tune

__all__ = ["TuneError", "TuneResult", "tune"]
