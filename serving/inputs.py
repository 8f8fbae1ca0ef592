"""Model-ready Arrow rows -> the ONNX twin's inputs (numpy, vectorised, no torch)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys_moe.features.lookup import numpy_of
from recsys_moe.features.spec import FeatureSpec

PAD = -1


def padded_ids(col: pa.ChunkedArray | pa.Array, max_len: int) -> np.ndarray:
    """A list<int64> column as ``[rows, max_len]`` int64, padded with -1 (longer lists cut)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = numpy_of(arr.offsets).astype(np.int64, copy=False)
    values = numpy_of(arr.values).astype(np.int64, copy=False)
    n = len(arr)
    lens = np.diff(offsets)
    out = np.full(n * max_len, PAD, dtype=np.int64)
    if lens.max(initial=0) <= max_len:
        # The transform already cut lists to max_len: one scatter of the contiguous values, each
        # list shifted from its offset to the start of its row.
        shift = np.repeat(np.arange(n, dtype=np.int64) * max_len - offsets[:-1], lens)
        out[np.arange(offsets[0], offsets[-1]) + shift] = values[offsets[0]: offsets[-1]]
        return out.reshape(n, max_len)
    cut = np.minimum(lens, max_len)
    rows = np.repeat(np.arange(n), cut)
    pos = np.arange(cut.sum()) - np.repeat(np.cumsum(cut) - cut, cut)
    out[rows * max_len + pos] = values[offsets[:-1][rows] + pos]
    return out.reshape(n, max_len)


def onnx_inputs(table: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Inputs named as the twin's: ``ids``, ``list_<name>``, ``dense``."""
    n = table.num_rows
    ids = [numpy_of(table.column(f).combine_chunks()).astype(np.int64, copy=False) for f in spec.id_features]
    out = {"ids": np.stack(ids, axis=1) if ids else np.zeros((n, 0), dtype=np.int64)}
    for f in spec.list_features:
        out[f"list_{f}"] = padded_ids(table.column(f), spec.feature(f).max_len)
    dense = [numpy_of(table.column(c).combine_chunks()).astype(np.float32, copy=False) for c in spec.dense_columns]
    out["dense"] = np.stack(dense, axis=1) if dense else np.zeros((n, 0), dtype=np.float32)
    return out
