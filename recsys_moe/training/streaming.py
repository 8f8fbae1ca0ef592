"""Model-ready Parquet streamed by row group: batches for splits larger than memory.

The unit of work is a Parquet row group. Each epoch draws a permutation of the split's row groups
(seeded by the seed and the epoch, the same on every rank); the rows of the groups in that order
form the epoch's stream, and each DDP rank takes its own contiguous share of it
(:func:`~recsys_moe.training.distributed.shard_range`), reading only the groups that overlap the
share. So every row is seen once per epoch across the ranks and, in training, every rank gets
the same number of rows and steps (the ``rows % world_size`` left over are left out that
epoch, as in memory). Rows are then shuffled inside a bounded buffer of
``training.shuffle_buffer_rows`` (plus one row group), and batches are built by
:class:`~recsys_moe.training.batches.ColumnarSplit`'s vectorised code, one buffer at a time.

A background thread reads, decodes and builds the next batches while the trainer runs (Parquet
decoding and the tensor gathers release the GIL); batches are pinned for a CUDA copy when a GPU is
there. One thread, not DataLoader worker processes: a batch is a few large tensors and a KJT, which
worker processes would pickle and copy back. Memory: the buffer, one row group and ``prefetch``
batches, whatever the split's size.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_moe import storage
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.training.batches import Batch, ColumnarSplit, DataError, epoch_seed, split_columns
from recsys_moe.training.distributed import shard_range

_DONE = object()


def _libc_trim() -> Callable[[], object] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_trim()


def release_freed_memory() -> None:
    """Hand memory freed since the last buffer back to the OS (Arrow's pool and glibc's heap keep
    it otherwise, and the process's resident size would grow with the buffers it has served)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int
    rows: int


def row_groups(path: storage.Location, spec: FeatureSpec, label_columns: tuple[str, ...]) -> tuple[list[RowGroup], list[str]]:
    """The row groups of a split folder's Parquet files (in file order) and the columns to read."""
    files = storage.expand(path, (".parquet",))
    if not files:
        raise DataError(f"{path}: no Parquet files; run `recsys-moe features transform` first")
    groups, columns = [], None
    for f in files:
        with pq.ParquetFile(storage.open_input(f)) as parquet:
            cols = split_columns(parquet.schema_arrow, spec, label_columns, f)
            columns = columns or cols
            meta = parquet.metadata
            groups += [RowGroup(str(f), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    groups = [g for g in groups if g.rows]
    if not groups:
        raise DataError(f"{path}: no rows")
    return groups, columns


_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8}


def decoded_bytes(path: storage.Location) -> int:
    """An estimate, from the Parquet footers, of the split's size as Arrow arrays (what holding it in
    memory costs): every column chunk's values at their width, plus list offsets. Parquet's own
    uncompressed size (:func:`uncompressed_bytes`) counts encoded pages (dictionaries, run
    lengths), which can be much smaller for repetitive columns."""
    total = 0
    for f in storage.expand(path, (".parquet",)):
        with pq.ParquetFile(storage.open_input(f)) as parquet:
            meta = parquet.metadata
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                for j in range(group.num_columns):
                    col = group.column(j)
                    total += col.num_values * _WIDTH.get(col.physical_type, 8)
                    if "." in col.path_in_schema:  # a list's leaf: one offset per row too
                        total += 4 * group.num_rows
    return total


def uncompressed_bytes(path: storage.Location) -> int:
    """Parquet's uncompressed size of the split (encoded pages, before decoding), from the footers."""
    total = 0
    for f in storage.expand(path, (".parquet",)):
        with pq.ParquetFile(storage.open_input(f)) as parquet:
            meta = parquet.metadata
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


class StreamingLoader:
    """Iterable of :class:`Batch` over a split folder, streamed (see the module docstring).

    ``epoch_fn`` and ``shard_fn`` are read when an epoch starts, as by
    :class:`~recsys_moe.training.batches.BatchLoader`, which this replaces batch for batch when
    a split is too large to hold."""

    def __init__(
        self, path: storage.Location, spec: FeatureSpec, batch_size: int, shuffle: bool = False, seed: int = 0,
        epoch_fn: Callable[[], int] | None = None, shard_fn: Callable[[], tuple[int, int]] | None = None,
        buffer_rows: int = 262_144, label_columns: tuple[str, ...] = ("click", "watch_time_s"),
        drop_remainder: bool | None = None, prefetch: int = 4, pin_memory: bool | None = None,
    ) -> None:
        self.path, self.spec, self.batch_size, self.shuffle, self.seed = path, spec, batch_size, shuffle, seed
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.shard_fn = shard_fn or (lambda: (0, 1))
        self.buffer_rows, self.label_columns, self.prefetch = buffer_rows, label_columns, prefetch
        self.drop_remainder = shuffle if drop_remainder is None else drop_remainder
        self.pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.groups, self.columns = row_groups(path, spec, label_columns)
        self.num_rows = sum(g.rows for g in self.groups)

    def _range(self) -> tuple[int, int]:
        rank, world = self.shard_fn()
        return shard_range(self.num_rows, rank, world, self.drop_remainder)

    def __len__(self) -> int:
        start, stop = self._range()
        return -(-(stop - start) // self.batch_size)

    def plan(self) -> list[tuple[RowGroup, int, int]]:
        """This rank's reads this epoch, in order: (row group, first row, end row) within each group."""
        order = list(range(len(self.groups)))
        if self.shuffle:
            order = np.random.default_rng(epoch_seed(self.seed, self.epoch_fn())).permutation(len(self.groups)).tolist()
        start, stop = self._range()
        out, offset = [], 0
        for i in order:
            g = self.groups[i]
            lo, hi = max(start - offset, 0), min(stop - offset, g.rows)
            if lo < hi:
                out.append((g, lo, hi))
            offset += g.rows
            if offset >= stop:
                break
        return out

    def _tables(self, plan: list[tuple[RowGroup, int, int]]) -> Iterator[pa.Table]:
        """The planned row-group slices, read one at a time (a file stays open while it is read)."""
        open_file: tuple[str, pq.ParquetFile] | None = None
        try:
            for g, lo, hi in plan:
                if open_file is None or open_file[0] != g.file:
                    if open_file is not None:
                        open_file[1].close()
                    open_file = (g.file, pq.ParquetFile(storage.open_input(g.file)))
                table = open_file[1].read_row_group(g.index, columns=self.columns)
                yield table.slice(lo, hi - lo) if (lo, hi) != (0, g.rows) else table
        finally:
            if open_file is not None:
                open_file[1].close()

    def _batches(self, stop: threading.Event) -> Iterator[Batch]:
        """The epoch's batches: buffers of at least ``buffer_rows`` rows, shuffled inside; the
        rows short of a whole batch at a buffer's end open the next buffer."""
        rank, _ = self.shard_fn()
        rng = np.random.default_rng([self.seed, self.epoch_fn(), rank])
        carry: pa.Table | None = None
        pending: list[pa.Table] = []
        buffered = 0
        tables = self._tables(self.plan())
        exhausted = False
        while not exhausted and not stop.is_set():
            table = next(tables, None)
            if table is not None:
                pending.append(table)
                buffered += table.num_rows
                if buffered < self.buffer_rows:
                    continue
            else:
                exhausted = True
            if carry is not None:
                pending.insert(0, carry)
            if not pending:
                break
            window = pa.concat_tables(pending)
            pending, buffered = [], 0
            whole = window.num_rows if exhausted else window.num_rows - window.num_rows % self.batch_size
            if not whole:  # a buffer smaller than one batch: all of it opens the next
                carry = window
                continue
            order = rng.permutation(window.num_rows) if self.shuffle else np.arange(window.num_rows)
            carry = window.take(pa.array(order[whole:])) if whole < window.num_rows else None
            split = ColumnarSplit(self.spec, window, str(self.path), self.label_columns)
            del window  # the split holds its own copy: one buffer in memory while it is served
            idx = torch.from_numpy(order)
            for b in range(0, whole, self.batch_size):
                batch = split.batch(idx[b: min(b + self.batch_size, whole)])
                yield batch.pin_memory() if self.pin else batch
            del split  # before the next buffer is read
            release_freed_memory()

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the background thread, ``prefetch`` ahead; an error there is raised here."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            # one intra-op thread here: the trainer's threads keep the cores (a per-thread setting)
            torch.set_num_threads(1)
            try:
                for batch in self._batches(stop):
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                out.put(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                out.put(exc)

        worker = threading.Thread(target=produce, name="stream-batches", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
