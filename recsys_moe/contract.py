"""The serving contract: every name and rule that training, export, evaluation and scoring share.

One home for the facts that must agree across jobs, so none of them spells them on its own:

- the model-ready Parquet's key and label columns (written by the feature transform, read by
  training and evaluation), and the raw columns a scoring input must have;
- the task kinds, each task's output names (``logits_<t>``/``probs_<t>`` for a binary task,
  ``pred_<t>`` in seconds for watch time) and the label each kind learns from;
- the ONNX model's input names and its ``score`` output;
- the ranking score ``prod_t prediction_t ** exponent_t`` with its exponents, which the export
  writes into the ONNX graph and its metadata, and which scoring and evaluation check against the
  config (:func:`check_exponents`), so evaluation never ranks by a score scoring does not write.

Imports only numpy: the torch-free scoring runtime uses it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

# Model-ready rows: keys first, then one column per feature, then the labels.
IMPRESSION_ID = "impression_id"
TIMESTAMP = "timestamp"
RAW_USER_ID = "raw_user_id"
RAW_ITEM_ID = "raw_item_id"
META_COLUMNS = (IMPRESSION_ID, TIMESTAMP, RAW_USER_ID, RAW_ITEM_ID)

BINARY = "binary"
WATCH_TIME = "watch_time"
TASK_KINDS = (BINARY, WATCH_TIME)
LABEL_OF_KIND = {BINARY: "click", WATCH_TIME: "watch_time_s"}
LABEL_COLUMNS = tuple(LABEL_OF_KIND.values())
RESERVED_COLUMNS = frozenset(META_COLUMNS + LABEL_COLUMNS)
"""Names a feature may not take: the transform writes these columns itself."""

# Raw candidates to score: these columns are required and must not be null.
SCORING_KEY_COLUMNS = ("user_id", "item_id", TIMESTAMP)

# The ONNX twin's inputs and the score output.
IDS_INPUT = "ids"
DENSE_INPUT = "dense"
LIST_INPUT_PREFIX = "list_"
SCORE = "score"
SCORE_FLOOR = 1e-12
"""Predictions are clipped to at least this before the power, so a zero never zeroes a row's
score for an exponent of 0 < a and never divides for a < 0."""

_PREDICTION_PREFIX = {BINARY: "probs_", WATCH_TIME: "pred_"}


class ContractError(ValueError):
    """A model, its metadata or a config breaks the serving contract; the message says how."""


def label_column(kind: str) -> str:
    """The model-ready column a task of ``kind`` learns from."""
    return LABEL_OF_KIND[kind]


def prediction_name(task: str, kind: str) -> str:
    """The output holding a task's prediction in user units: probability or seconds."""
    return f"{_PREDICTION_PREFIX[kind]}{task}"


def logits_name(task: str) -> str:
    return f"logits_{task}"


def list_input(feature: str) -> str:
    """The ONNX input of an id-list feature (``[B, max_len]`` int64 padded with -1)."""
    return f"{LIST_INPUT_PREFIX}{feature}"


def input_names(list_features: Iterable[str]) -> list[str]:
    """The ONNX twin's inputs in order: ids, one per id-list feature, dense."""
    return [IDS_INPUT, *(list_input(f) for f in list_features), DENSE_INPUT]


def task_of_output(name: str) -> tuple[str, str] | None:
    """``(task, kind)`` for a prediction output name, else None (``score``, logits, ...)."""
    for kind, prefix in _PREDICTION_PREFIX.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):], kind
    return None


def ranking_score(preds: Mapping[str, np.ndarray], exponents: Mapping[str, float]) -> np.ndarray:
    """``prod_t max(pred_t, SCORE_FLOOR) ** a_t`` over the tasks with a non-zero exponent
    (e.g. ``p_ctr * E[watch seconds]``); all ones when no exponent is set. The ONNX twin computes
    the same product inside the graph; both are held equal by a test."""
    n = next(iter(preds.values())).size
    score = np.ones(n, dtype=np.float64)
    for task, a in exponents.items():
        if a:
            if task not in preds:
                raise ContractError(f"the ranking score needs task {task!r}, which the predictions do not have ({sorted(preds)})")
            term = np.maximum(np.asarray(preds[task], dtype=np.float64), SCORE_FLOOR)
            score *= term if a == 1.0 else term**a
    return score


def format_exponents(exponents: Mapping[str, float]) -> str:
    """``ctr=1,watch_time=0.5``: how the exponents travel in ONNX metadata."""
    return ",".join(f"{t}={float(a):g}" for t, a in exponents.items())


def parse_exponents(text: str, where: str = "ONNX metadata") -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError(part)
            out[task] = float(value)
        except ValueError:
            raise ContractError(f"{where}: score_exponents entry {part!r} is not TASK=NUMBER") from None
    return out


def exponents_for(tasks: Iterable[str], configured: Mapping[str, float]) -> dict[str, float]:
    """Every task's exponent (0 for a task the config leaves out), in task order."""
    tasks = list(tasks)
    unknown = sorted(set(configured) - set(tasks))
    if unknown:
        raise ContractError(f"score exponents name unknown tasks {unknown}; the model's tasks are {tasks}")
    return {t: float(configured.get(t, 0.0)) for t in tasks}


def check_exponents(model_exponents: Mapping[str, float], configured: Mapping[str, float], model: str) -> None:
    """Refuse a model whose ``score`` uses other exponents than ``evaluation.score_exponents``."""
    tasks = list(model_exponents)
    want = exponents_for(tasks, configured)
    if any(abs(want[t] - model_exponents[t]) > 1e-12 for t in tasks):
        raise ContractError(
            f"{model}: the model's score is {format_exponents(model_exponents)} but the config's "
            f"evaluation.score_exponents give {format_exponents(want)}; re-export the model with this config "
            "(`recsys-moe export`) or set evaluation.score_exponents to the model's"
        )
