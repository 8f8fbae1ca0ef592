"""Model-ready Parquet -> whole tensor batches (dense Tensor, KeyedJaggedTensor, labels).

A split is read once with pyarrow into column tensors: single ids as one ``[F, N]`` int64
matrix, each id list as Arrow's own ``(offsets, values)``, dense features as ``[N, D]`` float32.
A batch is a few ``index_select`` calls plus one ``repeat_interleave`` per list feature; no
per-row Python. Memory: roughly the Parquet's uncompressed size (about 0.5 GB per million rows
for the synthetic feature set); larger splits are streamed by row group instead
(:mod:`recsys_moe.training.streaming`, ``training.data_mode``), with the same batch code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from recsys_moe import storage
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.training.distributed import shard_range


class DataError(ValueError):
    """Model-ready data is missing, empty or does not match the FeatureSpec."""


ROW_ID = "impression_id"


@dataclass
class Batch:
    sparse: KeyedJaggedTensor
    dense: Tensor
    labels: dict[str, Tensor]
    row_ids: Tensor | None = None
    """The rows' ``impression_id`` when the data has it (stays on the CPU: for audits only)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.sparse.to(device, non_blocking=non_blocking),
            self.dense.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
            self.row_ids,
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies, so a copy to the GPU overlaps compute (``to(..., non_blocking=True)``)."""
        return Batch(self.sparse.pin_memory(), self.dense.pin_memory(),
                     {k: v.pin_memory() for k, v in self.labels.items()}, self.row_ids)

    def __len__(self) -> int:
        return self.dense.shape[0]


def _list_parts(col: pa.ChunkedArray) -> tuple[Tensor, Tensor]:
    arr = col.combine_chunks()
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = np.array(arr.values, dtype=np.int64)[offsets[0]: offsets[-1]]  # a writable copy
    return torch.from_numpy(offsets - offsets[0]), torch.from_numpy(values)


def split_columns(schema: pa.Schema, spec: FeatureSpec, label_columns: tuple[str, ...], where: object) -> list[str]:
    """The columns a split is read with (``impression_id`` when present); an error naming
    ``where`` when the spec's columns are not all there."""
    wanted = [*spec.id_features, *spec.list_features, *spec.dense_columns, *label_columns]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise DataError(f"{where}: columns {missing} missing; re-run `recsys-moe features transform` with this spec")
    return wanted + ([ROW_ID] if ROW_ID in schema.names else [])


class ColumnarSplit:
    """One split of model-ready rows held as column tensors; :meth:`batch` gathers any rows."""

    def __init__(self, spec: FeatureSpec, table: pa.Table, source: str, label_columns: tuple[str, ...]) -> None:
        self.source = source
        self.num_rows = table.num_rows
        if not self.num_rows:
            raise DataError(f"{source}: no rows")
        names = set(table.column_names)
        needed = [*spec.id_features, *spec.list_features, *spec.dense_columns, *label_columns]
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataError(f"{source}: columns {missing} missing; re-run `recsys-moe features transform` with this spec")
        self.id_names = spec.id_features
        self.list_names = spec.list_features
        self.keys = [*self.id_names, *self.list_names]
        ids = [np.asarray(table.column(n).combine_chunks(), dtype=np.int64) for n in self.id_names]
        self.ids = torch.from_numpy(np.stack(ids)) if ids else torch.empty(0, self.num_rows, dtype=torch.int64)
        self.lists = [_list_parts(table.column(n)) for n in self.list_names]
        dense = [np.asarray(table.column(c).combine_chunks(), dtype=np.float32) for c in spec.dense_columns]
        self.dense = torch.from_numpy(np.stack(dense, axis=1)) if dense else torch.zeros(self.num_rows, 0)
        self.labels: dict[str, Tensor] = {}
        for c in label_columns:
            col = table.column(c)
            if col.null_count:
                raise DataError(f"{source}: label column {c!r} has {col.null_count} nulls")
            self.labels[c] = torch.from_numpy(np.array(col.combine_chunks(), dtype=np.float32))
        for c, v in self.labels.items():
            if not torch.isfinite(v).all():
                raise DataError(f"{source}: label column {c!r} has non-finite values")
        self.row_ids = (torch.from_numpy(np.array(table.column(ROW_ID).combine_chunks(), dtype=np.int64))
                        if ROW_ID in names else None)

    @classmethod
    def read(cls, path: str | Path, spec: FeatureSpec, label_columns: tuple[str, ...] = ("click", "watch_time_s")) -> ColumnarSplit:
        """Every ``*.parquet`` file of a split folder (local or an object-store prefix), or one file."""
        files = storage.expand(path, (".parquet",))
        if not files:
            raise DataError(f"{path}: no Parquet files; run `recsys-moe features transform` first")
        tables = []
        for f in files:
            with pq.ParquetFile(storage.open_input(f)) as parquet:
                tables.append(parquet.read(columns=split_columns(parquet.schema_arrow, spec, label_columns, f)))
        return cls(spec, pa.concat_tables(tables), str(path), label_columns)

    def batch(self, idx: Tensor) -> Batch:
        """Rows ``idx`` (int64) as one Batch; KJT keys are id features, then list features."""
        b = idx.numel()
        values = [self.ids.index_select(1, idx).reshape(-1)]
        lengths = [torch.ones(len(self.id_names) * b, dtype=torch.int64)]
        for offsets, flat in self.lists:
            start = offsets.index_select(0, idx)
            lens = offsets.index_select(0, idx + 1) - start
            total = int(lens.sum())
            # position j of row r's slice = start[r] + j: shift an arange by each row's start.
            shift = torch.repeat_interleave(start - (torch.cumsum(lens, 0) - lens), lens, output_size=total)
            values.append(flat.index_select(0, shift + torch.arange(total)))
            lengths.append(lens)
        sparse = KeyedJaggedTensor(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths), stride=b)
        labels = {k: v.index_select(0, idx) for k, v in self.labels.items()}
        row_ids = self.row_ids.index_select(0, idx) if self.row_ids is not None else None
        return Batch(sparse, self.dense.index_select(0, idx), labels, row_ids)


class BatchLoader:
    """Iterable of whole batches over a :class:`ColumnarSplit` (Lightning accepts any iterable).

    Shuffling uses a permutation seeded by ``seed`` and the epoch number from ``epoch_fn``, so a
    resumed run sees the same order as an uninterrupted one. Under DDP, ``shard_fn`` returns
    ``(rank, world_size)``: every rank draws the same permutation and takes its own contiguous
    share (:func:`~recsys_moe.training.distributed.shard_range`): with ``drop_remainder``
    (training) equal shares, so ranks run the same number of steps, the last ``n % world_size``
    rows of the permutation left out that epoch; without it every row is covered once."""

    def __init__(
        self, split: ColumnarSplit, batch_size: int, shuffle: bool = False, seed: int = 0,
        epoch_fn: Callable[[], int] | None = None, shard_fn: Callable[[], tuple[int, int]] | None = None,
        drop_remainder: bool | None = None,
    ) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.shard_fn = shard_fn or (lambda: (0, 1))
        self.drop_remainder = shuffle if drop_remainder is None else drop_remainder

    def _range(self) -> tuple[int, int]:
        rank, world = self.shard_fn()
        return shard_range(self.split.num_rows, rank, world, self.drop_remainder)

    def __len__(self) -> int:
        start, stop = self._range()
        return -(-(stop - start) // self.batch_size)

    def indices(self) -> Tensor:
        """Row indices this rank visits this epoch, in order."""
        n = self.split.num_rows
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch_fn()))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        start, stop = self._range()
        return order[start:stop]

    def __iter__(self) -> Iterator[Batch]:
        order = self.indices()
        for i in range(len(self)):
            yield self.split.batch(order[i * self.batch_size: (i + 1) * self.batch_size])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle: the same on every rank, another every epoch."""
    return seed * 1_000_003 + epoch
