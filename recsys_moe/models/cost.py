"""What a model costs to serve: bytes of each part in each precision, and FLOPs per row.

In a recommender the embedding tables dominate the bytes (one 50M-item x 64 table is 12.8 GB
in float32), and the dense layers dominate the FLOPs. The export writes :func:`model_cost` to
``cost.json`` beside the model (and to MLflow); the evaluation report shows it; the README's
sizing table comes from :func:`table_bytes` through ``benchmarks/bench_sizing.py``. (Here, in the
models layer, so that evaluation and export both read it.)

Precisions are the export's own files: ``fp32`` (``model.onnx``), ``fp16`` (``model.fp16.onnx``:
every weight in float16) and ``int8`` (``model.int8.onnx``: row-wise INT8 tables at least 16
wide; narrower tables and the dense layers kept in float32). FLOPs count two per multiply-add of the dense layers (gates, experts, towers,
dot interactions); a lookup is a copy, counted in bytes read, not in FLOPs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recsys_moe.models.mmoe import MMoEBody
from recsys_moe.models.multitask import MultiTaskModel
from recsys_moe.models.ple import PLEBody

PRECISIONS = ("fp32", "fp16", "int8")
INT8_ROW_OVERHEAD = 4
"""Bytes a row-wise INT8 row adds to its ``dim`` bytes: its float32 scale (the format of
:mod:`recsys_moe.export.quantize`)."""
INT8_MIN_DIM = 16
"""Narrower tables stay float32 in the INT8 copy (:mod:`recsys_moe.export.quantize`)."""


def int8_row_bytes(dim: int) -> int:
    return dim + INT8_ROW_OVERHEAD


def table_bytes(rows: int, dim: int, precision: str) -> int:
    """One embedding table's bytes in ``precision`` (INT8: a byte per value plus a float32 scale
    per row, the export's default; a per-table scale saves the 4 bytes a row)."""
    if precision == "int8" and dim >= INT8_MIN_DIM:
        return rows * int8_row_bytes(dim)
    if precision == "int8":
        return rows * dim * 4
    return rows * dim * (4 if precision == "fp32" else 2)


def dense_bytes(params: int, precision: str) -> int:
    """Dense weights' bytes: float16 in the fp16 copy, float32 otherwise."""
    return params * (2 if precision == "fp16" else 4)


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def model_cost(model: MultiTaskModel) -> dict[str, Any]:
    """Bytes per part and precision, and FLOPs per row, of ``model`` as the export serves it."""
    # the position tower's tables are for training only: serving adds its unknown-slot constant
    tables = {name: tuple(w.shape) for name, w in model.table_weights().items() if not name.startswith("position/")}
    body = model.body
    parts: dict[str, int] = {}
    flops: dict[str, int] = {}
    if isinstance(body, MMoEBody):
        parts["experts"] = _params(body.experts)
        parts["gates"] = _params(body.gates)
        per_expert = sum(w.shape[1] * w.shape[2] for w in body.experts.weights)
        runs = body.num_experts
        if body.sparse:  # each row runs the experts its tasks chose: at most tasks x top_k
            runs = min(body.num_experts, body.num_tasks * body.top_k)
        flops["experts"] = 2 * per_expert * runs
        flops["gates"] = 2 * _linear_macs(body.gates.logits)
        if body.gates.task_weight is not None:
            flops["gates"] += 2 * body.gates.task_weight.numel()
    elif isinstance(body, PLEBody):
        parts["experts"] = sum(_params(layer.experts) for layer in body.layers)
        parts["gates"] = _params(body) - parts["experts"]
        flops["experts"] = 2 * sum(layer.num_experts * sum(w.shape[1] * w.shape[2] for w in layer.experts.weights)
                                   for layer in body.layers)
        flops["gates"] = 2 * parts["gates"]  # one multiply-add per gate weight (biases are few)
    else:
        parts["body"] = _params(body)
        flops["body"] = 2 * _linear_macs(body)
    parts["towers"] = _params(model.towers)
    flops["towers"] = 2 * _linear_macs(model.towers)
    if model.interaction is not None:
        flops["interaction"] = 2 * sum(model.interaction.pair_macs())
    if model.task_interaction is not None:
        flops["interaction"] = flops.get("interaction", 0) + 2 * len(model.task_embeddings) * sum(model.task_interaction.pair_macs())
    dense_total = sum(parts.values())
    by_precision: dict[str, dict[str, int]] = {}
    for p in PRECISIONS:
        b = {f"table/{n}": table_bytes(r, d, p) for n, (r, d) in tables.items()}
        b |= {part: dense_bytes(n, p) for part, n in parts.items()}
        b["total"] = sum(b.values())
        by_precision[p] = b
    return {
        "tables": {n: {"rows": r, "dim": d} for n, (r, d) in tables.items()},
        "dense_params": {**parts, "total": dense_total},
        "bytes": by_precision,
        "flops_per_row": {**flops, "total": sum(flops.values())},
        "experts_run_per_row": (min(body.num_experts, body.num_tasks * body.top_k) if body.sparse else body.num_experts)
        if isinstance(body, MMoEBody) else None,
    }
