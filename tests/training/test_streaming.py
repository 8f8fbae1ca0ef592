"""The streaming loader: the same rows as memory, disjoint equal rank shares, seeded orders, a
bounded shuffle buffer, errors from its reader thread."""

import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys_moe.training.batches import Batch, BatchLoader, ColumnarSplit, DataError
from recsys_moe.training.streaming import StreamingLoader, decoded_bytes, row_groups

GROUP_ROWS = 500


@pytest.fixture(scope="module")
def groups(small_features, tmp_path_factory):
    """The small feed's train split rewritten as 3 files of 500-row row groups."""
    cfg, spec = small_features
    table = pq.read_table(cfg.experiment.work_dir / "features/data/train")
    out = tmp_path_factory.mktemp("rowgroups")
    third = table.num_rows // 3
    for i, (a, b) in enumerate([(0, third), (third, 2 * third), (2 * third, table.num_rows)]):
        pq.write_table(table.slice(a, b - a), out / f"part-{i:05d}.parquet", row_group_size=GROUP_ROWS)
    return out, spec, table.num_rows


def _rows(batches) -> list[tuple]:
    """Every row of the batches as a comparable tuple: id, dense values, ids and lists, labels."""
    out = []
    for b in batches:
        assert isinstance(b, Batch)
        sparse = {k: jt.to_dense() for k, jt in b.sparse.to_dict().items()}
        for r in range(len(b)):
            out.append((int(b.row_ids[r]), tuple(b.dense[r].tolist()),
                        tuple(tuple(sparse[k][r].tolist()) for k in sorted(sparse)),
                        tuple(float(v[r]) for _, v in sorted(b.labels.items()))))
    return out


def test_a_streamed_epoch_holds_the_same_rows_as_an_in_memory_epoch(groups):
    path, spec, n = groups
    memory = BatchLoader(ColumnarSplit.read(path, spec), 256, shuffle=True, seed=5)
    stream = StreamingLoader(path, spec, 256, shuffle=True, seed=5, buffer_rows=1200)
    assert len(stream) == len(memory) == -(-n // 256)
    got, want = _rows(stream), _rows(memory)
    assert len(got) == n and sorted(got) == sorted(want)
    assert [r[0] for r in got] != sorted(r[0] for r in got)  # shuffled


def test_ranks_stream_disjoint_equal_shares_and_evaluation_covers_every_row(groups):
    path, spec, n = groups
    ids = []
    for rank in range(3):
        loader = StreamingLoader(path, spec, 128, shuffle=True, seed=1, shard_fn=lambda r=rank: (r, 3), buffer_rows=700)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-(n // 3) // 128)  # the same step count on every rank
        ids.append(torch.cat([b.row_ids for b in batches]).tolist())
    assert [len(i) for i in ids] == [n // 3] * 3
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 3 * (n // 3)
    evaluation = [StreamingLoader(path, spec, 300, shard_fn=lambda r=rank: (r, 3)) for rank in range(3)]
    seen = [int(i) for loader in evaluation for b in loader for i in b.row_ids]
    assert sorted(seen) == sorted(pq.read_table(path, columns=["impression_id"])["impression_id"].to_pylist())


def test_orders_are_seeded_by_epoch_and_the_buffer_bounds_how_far_rows_travel(groups):
    path, spec, _ = groups
    epoch = [0]

    def first_ids(buffer_rows: int) -> list[int]:
        loader = StreamingLoader(path, spec, 200, shuffle=True, seed=9, epoch_fn=lambda: epoch[0], buffer_rows=buffer_rows)
        return next(iter(loader)).row_ids.tolist()

    a = first_ids(1000)
    assert first_ids(1000) == a
    epoch[0] = 1
    assert first_ids(1000) != a
    # with a 1,000-row buffer the first batch comes from the first 1,000 rows of the epoch's plan
    # (two 500-row groups), not from anywhere in the split
    loader = StreamingLoader(path, spec, 200, shuffle=True, seed=9, epoch_fn=lambda: 1, buffer_rows=1000)
    planned = pq.read_table(path, columns=["impression_id"])["impression_id"].to_numpy()
    starts = np.cumsum([0] + [g.rows for g in loader.groups])
    first_two = {int(x) for g, lo, hi in loader.plan()[:2]
                 for x in planned[starts[loader.groups.index(g)] + lo: starts[loader.groups.index(g)] + hi]}
    assert set(next(iter(loader)).row_ids.tolist()) <= first_two


def test_the_readers_errors_surface_and_a_loop_left_early_stops_the_reader(groups, tmp_path):
    path, spec, _ = groups
    for f in path.glob("*.parquet"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    loader = StreamingLoader(tmp_path, spec, 100, buffer_rows=600)
    (tmp_path / "part-00002.parquet").unlink()
    with pytest.raises(OSError, match="part-00002"):
        list(loader)
    before = threading.active_count()
    for _ in StreamingLoader(path, spec, 100, prefetch=1):
        break
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before
    with pytest.raises(DataError, match="no Parquet files"):
        row_groups(tmp_path / "none", spec, ())



def test_the_footer_estimate_of_a_splits_memory_is_close_to_arrows(groups):
    path, _, _ = groups
    held = pq.read_table(path).nbytes  # what the in-memory mode reads
    assert 0.8 * held <= decoded_bytes(path) <= 1.25 * held
