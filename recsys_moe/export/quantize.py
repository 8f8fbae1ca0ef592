"""INT8 embedding tables: the serving copy ``model.int8.onnx`` of an export.

In a recommender the embedding tables are most of what a model costs to hold in memory, so they
are what INT8 must shrink. Values are stored as signed bytes, symmetric around 0 (embedding rows
centre on 0, and dequantising is then a single multiply), with one of two scale granularities:

- ``row`` (the default): each row has its own float32 scale ``max |value| / 127``, so a rare
  item's small row is not quantised on the scale of a popular item's large one (row-wise, as
  FBGEMM's and torchrec's INT8 tables are). A row of ``d`` values takes ``d + 4`` bytes.
  Lookup: Gather the bytes, Gather the scales, one per-row ``DequantizeLinear``.
- ``table``: one scale per table, ``d`` bytes per row. Lookup: Gather the bytes and a
  ``DequantizeLinear`` by a constant, almost as cheap as a float Gather; coarser for small rows.

The copy is made from the float32 ONNX export, not from torch: every Gather that reads a table is
rewritten with standard ONNX ops; inputs, outputs and every other node stay as they are. Tables
narrower than 16 values stay float32: they hold a few hundred context ids and weigh nothing. The
dense layers stay float32 too: ONNX Runtime's dynamic INT8 MatMul was slower on this model and
saved almost nothing; its fused ``GatherBlockQuantized`` kernel was slower than these standard
ops (the measurements are in docs/design.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

LEVELS = 127
MIN_DIM = 16
TABLE_MARK, TABLE_SUFFIX = ".tables.", ".weight"
MINUS_ONE = "int8_lookup.minus_one"
Granularity = Literal["row", "table"]


def quantize_rows(weight: np.ndarray, granularity: Granularity = "row") -> tuple[np.ndarray, np.ndarray]:
    """``[V, d]`` float -> (``[V, d]`` int8, scale: ``[V]`` per row or ``[]`` per table, float32)
    with ``value ~ byte * scale``, off by at most half a step (``scale``)."""
    w = np.asarray(weight, dtype=np.float32)
    scale = np.abs(w).max(axis=1 if granularity == "row" else None) / LEVELS
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero row (padding): any scale is exact
    q = np.clip(np.round(w / (scale[:, None] if granularity == "row" else scale)), -LEVELS, LEVELS).astype(np.int8)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * (scale[:, None] if scale.ndim else scale)


def _quantizable(init: onnx.TensorProto) -> bool:
    return (TABLE_MARK in init.name and init.name.endswith(TABLE_SUFFIX) and init.data_type == onnx.TensorProto.FLOAT
            and len(init.dims) == 2 and init.dims[1] >= MIN_DIM)


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Known shapes of the graph's tensors (ints, or names for symbolic dims)."""
    out = {}
    for v in [*model.graph.input, *model.graph.value_info]:
        out[v.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    return out


def _lookup(table: str, node: onnx.NodeProto, dim: int, ids_shape: list | None, granularity: Granularity) -> list[onnx.NodeProto]:
    """The nodes that replace ``Gather(table, ids)``."""
    ids, (out,) = node.input[1], node.output
    p = f"{node.name or out}_int8"
    if granularity == "table":  # one constant scale: dequantise the gathered bytes, any shape
        return [helper.make_node("Gather", [f"{table}.int8", ids], [f"{p}_bytes"], name=f"{p}_bytes", axis=0),
                helper.make_node("DequantizeLinear", [f"{p}_bytes", f"{table}.scale"], [out], name=f"{p}_dequantize")]
    # per row: DequantizeLinear takes a 1-D scale along one axis, so [B, L] ids are flattened first
    one_dim = ids_shape is not None and len(ids_shape) == 1
    flat = ids if one_dim else f"{p}_ids"
    lookup = [
        helper.make_node("Gather", [f"{table}.int8", flat], [f"{p}_bytes"], name=f"{p}_bytes", axis=0),
        helper.make_node("Gather", [f"{table}.scale", flat], [f"{p}_scales"], name=f"{p}_scales", axis=0),
        helper.make_node("DequantizeLinear", [f"{p}_bytes", f"{p}_scales"], [out if one_dim else f"{p}_rows"],
                         name=f"{p}_dequantize", axis=0),
    ]
    if one_dim:
        return lookup
    flatten = helper.make_node("Reshape", [ids, MINUS_ONE], [flat], name=f"{p}_flatten")
    if ids_shape is not None and all(isinstance(d, int) and d > 0 for d in ids_shape[1:]):
        shape = numpy_helper.from_array(np.array([-1, *ids_shape[1:], dim], np.int64), f"{p}_out_shape")
        return [helper.make_node("Constant", [], [f"{p}_out_shape"], name=f"{p}_out_shape", value=shape), flatten, *lookup,
                helper.make_node("Reshape", [f"{p}_rows", f"{p}_out_shape"], [out], name=f"{p}_reshape")]
    return [flatten, *lookup,  # [B, L] with L unknown: the output shape from the ids' shape at run time
            helper.make_node("Shape", [ids], [f"{p}_shape"], name=f"{p}_shape"),
            helper.make_node("Concat", [f"{p}_shape", f"{table}.dim"], [f"{p}_out_shape"], name=f"{p}_out_shape", axis=0),
            helper.make_node("Reshape", [f"{p}_rows", f"{p}_out_shape"], [out], name=f"{p}_reshape")]


def quantize_tables(model: onnx.ModelProto, granularity: Granularity = "row") -> dict[str, tuple[int, int]]:
    """Rewrite ``model`` in place: every embedding table at least 16 wide that Gather reads becomes
    INT8 with ``granularity`` scales. Returns the quantised tables' shapes."""
    graph = model.graph
    shapes = _shapes(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input:
            readers.setdefault(node.input[0], []).append(node)
    done: dict[str, tuple[int, int]] = {}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for init in list(graph.initializer):
        nodes = readers.get(init.name, [])
        if not nodes or not _quantizable(init) or any(helper.get_attribute_value(a) != 0 for n in nodes for a in n.attribute if a.name == "axis"):
            continue
        q, scale = quantize_rows(numpy_helper.to_array(init), granularity)
        v, d = q.shape
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}.int8"), numpy_helper.from_array(scale, f"{name}.scale"),
                                  numpy_helper.from_array(np.array([d], np.int64), f"{name}.dim")])
        for node in nodes:
            replaced[id(node)] = _lookup(name, node, d, shapes.get(node.input[1]), granularity)
        done[name.removesuffix(TABLE_SUFFIX)] = (v, d)
    if replaced:  # rebuilt in the same order, so the graph stays topologically sorted
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), MINUS_ONE))
        nodes = [m for n in graph.node for m in replaced.get(id(n), [n])]
        del graph.node[:]
        graph.node.extend(nodes)
    return done
