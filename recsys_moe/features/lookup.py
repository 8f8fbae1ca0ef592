"""Raw ids -> embedding indices for one vocabulary table, for columns and id lists alike.

Index 0 is OOV / missing, the vocabulary takes 1..V in its saved order, and hash buckets (integer
ids only) take V+1..V+H as ``V + 1 + id % H``. Integer tables are mapped in numpy through a
:class:`~recsys_moe.features.keyindex.KeyIndex`; id lists are mapped on their flat values and
rebuilt with the same offsets, so a 20-long history costs one pass over its values rather than
a per-row expression. String tables use Polars' ``replace_strict`` on the saved vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from recsys_moe.features.keyindex import KeyIndex
from recsys_moe.features.spec import OOV_INDEX, TableSpec


@dataclass
class Mapped:
    """A mapped column plus what the summary reports: OOV values among ``values`` non-null ones."""

    series: pl.Series
    oov: int
    values: int


def numpy_of(arr: pa.Array) -> np.ndarray:
    """An Arrow array as numpy (zero-copy when it has no nulls; nulls of an int array become NaN).

    Goes through Polars because pyarrow's own ``to_numpy`` imports pandas on first use, which
    would slow every CLI start."""
    return pl.Series(arr).to_numpy()


def list_parts(s: pl.Series) -> tuple[np.ndarray, pa.Array]:
    """Per-row lengths (null lists count as empty) and the flat values of a list column."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lengths = np.diff(numpy_of(arr.offsets)).astype(np.int64, copy=False)
    if arr.null_count:
        lengths[numpy_of(arr.is_null())] = 0
    return lengths, arr.flatten()


def int64_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow int64 array over ``values`` without a copy (null where ``valid`` is False).

    Built from buffers rather than ``pa.array``, whose first call on a numpy array imports pandas
    only to ask whether the array is a pandas one."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(len(valid) - np.count_nonzero(valid))
    return pa.Array.from_buffers(pa.int64(), len(values), [bitmap, pa.py_buffer(values)], null_count=nulls)


def list_series(name: str, lengths: np.ndarray, values: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """A ``List(Int64)`` column from per-row lengths and flat values (null where ``valid`` is False)."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arr = pa.LargeListArray.from_arrays(int64_array(offsets), int64_array(values, valid))
    return pl.Series(name, arr)


def head_positions(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Lengths after keeping each list's first ``max_len`` values, and the flat positions kept
    (``None`` when nothing is cut)."""
    if not len(lengths) or lengths.max(initial=0) <= max_len:
        return lengths, None
    kept = np.minimum(lengths, max_len)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    out_starts = np.zeros(len(lengths), np.int64)
    np.cumsum(kept[:-1], out=out_starts[1:])
    row = np.repeat(np.arange(len(lengths)), kept)
    return kept, starts[row] + (np.arange(int(kept.sum())) - out_starts[row])


class IdLookup:
    """Maps raw ids of one table to embedding indices."""

    def __init__(self, table: TableSpec):
        self.table = table
        self.vocab_size = len(table.vocab)
        self._index = KeyIndex(table.vocab.cast(pl.Int64).to_numpy()) if table.dtype != "str" else None

    def indices(self, values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Indices of int64 ``values``; rows where ``valid`` is False (nulls) get OOV."""
        assert self._index is not None
        idx = self._index.rows(values) + 1  # -1 (absent) becomes 0 = OOV
        if self.table.hash_buckets:
            miss = idx == OOV_INDEX
            if valid is not None:
                miss &= valid
            idx[miss] = self.vocab_size + 1 + values[miss] % self.table.hash_buckets
        if valid is not None:
            idx[~valid] = OOV_INDEX
        return idx

    def _strings(self, s: pl.Series) -> np.ndarray:
        positions = pl.Series(range(1, self.vocab_size + 1), dtype=pl.Int64)
        mapped = s.cast(pl.String).replace_strict(self.table.vocab, positions, default=OOV_INDEX, return_dtype=pl.Int64)
        return mapped.fill_null(OOV_INDEX).to_numpy()

    def _flat(self, values: pa.Array | pl.Series) -> tuple[np.ndarray, np.ndarray | None]:
        s = values if isinstance(values, pl.Series) else pl.Series(values)
        if self._index is None:
            return self._strings(s), None
        valid = s.is_not_null().to_numpy() if s.null_count() else None
        raw = s.cast(pl.Int64).fill_null(0).to_numpy()
        return self.indices(raw, valid), valid

    def map_ids(self, s: pl.Series, name: str) -> Mapped:
        """A single-id column -> Int64 indices."""
        idx, _ = self._flat(s)
        non_null = len(s) - s.null_count()
        oov = int(np.count_nonzero(idx == OOV_INDEX)) - s.null_count()
        return Mapped(pl.Series(name, idx, dtype=pl.Int64), oov, non_null)

    def map_lists(self, s: pl.Series, name: str, max_len: int) -> Mapped:
        """An id-list column -> List(Int64) indices, each list cut to its first ``max_len`` ids
        (null lists become empty, null ids OOV)."""
        lengths, flat = list_parts(s)
        lengths, keep = head_positions(lengths, max_len)
        if keep is not None:
            flat = flat.take(pa.array(keep))
        idx, _ = self._flat(flat)
        return Mapped(list_series(name, lengths, idx), int(np.count_nonzero(idx == OOV_INDEX)), len(idx))
