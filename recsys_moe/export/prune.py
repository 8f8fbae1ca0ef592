"""Expert pruning: leave out of the served graph the experts that no task's gate uses.

After training, an MoE often routes (almost) nothing to some experts; every expert still costs
memory and, under dense dispatch, compute for every row. :func:`expert_usage` measures each
task's mean gate weight per expert on held-out rows; :func:`pruned_copy` removes the experts whose
weight is under a threshold for every task. The gates keep their logits for the remaining
experts only, so each task's softmax renormalises over them exactly: a pruned expert whose
weight was 0 changes nothing. The export accepts a pruned copy only through the same quality gate
as INT8 (:mod:`recsys_moe.export.bundle`).
"""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import MultiTaskModel
from recsys_moe.models.mmoe import MMoEBody
from recsys_moe.training.batches import ColumnarSplit
from recsys_moe.training.gate_diagnostics import GateAccumulator


class PruneError(ValueError):
    """The model cannot be pruned (not a mixture, or every expert would go)."""


def expert_usage(model: MultiTaskModel, spec: FeatureSpec, rows: pa.Table, batch_rows: int = 8192) -> np.ndarray:
    """``[T, E]`` mean gate weight of each expert for each task on ``rows`` (model-ready)."""
    if not isinstance(model.body, MMoEBody):
        raise PruneError(f"expert pruning applies to MMoE models, not {model.kind!r}")
    split = ColumnarSplit(spec, rows, "usage rows", ())
    acc = GateAccumulator()
    with torch.inference_mode():
        for start in range(0, split.num_rows, batch_rows):
            batch = split.batch(torch.arange(start, min(start + batch_rows, split.num_rows)))
            acc.update(model.eval()(batch.sparse, batch.dense)["gate_weights"])
    return acc.summary(model.task_names, 0.0).mean_weights


def experts_to_prune(usage: np.ndarray, threshold: float) -> list[int]:
    """Experts whose mean gate weight is under ``threshold`` for every task."""
    return [int(e) for e in np.flatnonzero((usage < threshold).all(axis=0))]


def _rows_of(linear: nn.Linear, rows: list[int]) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows))
    with torch.no_grad():
        out.weight.copy_(linear.weight[rows])
        out.bias.copy_(linear.bias[rows])
    return out


def pruned_copy(model: MultiTaskModel, drop: list[int]) -> MultiTaskModel:
    """A copy of ``model`` without the experts ``drop`` (their gate logits removed too)."""
    body = model.body
    if not isinstance(body, MMoEBody):
        raise PruneError(f"expert pruning applies to MMoE models, not {model.kind!r}")
    e = body.num_experts
    keep = [i for i in range(e) if i not in set(drop)]
    if not keep:
        raise PruneError("every expert is under the pruning threshold; nothing would be left to serve")
    out = copy.deepcopy(model)
    new = out.body
    new.experts = body.experts.subset(keep)
    gates = new.gates
    rows = [t * e + i for t in range(gates.num_tasks) for i in keep]  # the gate logits are [T, E] flat
    gates.logits = _rows_of(body.gates.logits, rows)
    if gates.noise is not None:
        gates.noise = _rows_of(body.gates.noise, rows)
    if gates.task_weight is not None:
        gates.task_weight = nn.Parameter(body.gates.task_weight.detach()[:, :, keep].clone())
    gates.num_experts = new.num_experts = len(keep)
    if gates.top_k is not None:
        gates.top_k = new.top_k = min(gates.top_k, len(keep))
    return out.eval()
