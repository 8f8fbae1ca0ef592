"""The numpy id lookups against Polars' replace_strict on the same vocabulary (the reference)."""

import numpy as np
import polars as pl
import pytest

from recsys_moe.features.lookup import IdLookup, list_parts, list_series
from recsys_moe.features.spec import OOV_INDEX, TableSpec


def _reference(values: pl.Series, table: TableSpec) -> pl.Series:
    x = values.cast(pl.String) if table.dtype == "str" else values.cast(pl.Int64)
    positions = pl.Series(range(1, len(table.vocab) + 1), dtype=pl.Int64)
    mapped = x.replace_strict(table.vocab, positions, default=None, return_dtype=pl.Int64)
    if table.hash_buckets:
        bucket = len(table.vocab) + 1 + (x % table.hash_buckets)
        mapped = pl.select(pl.when(mapped.is_null() & x.is_not_null()).then(bucket).otherwise(mapped)).to_series()
    return mapped.fill_null(OOV_INDEX)


@pytest.mark.parametrize("buckets", [0, 7])
@pytest.mark.parametrize("vocab", [[5, 3, 9, 100], [5, 3, -9, 10**15]])
def test_int_ids_match_replace_strict(buckets, vocab):
    table = TableSpec("t", 4, "int", pl.Series("value", vocab), buckets)
    rng = np.random.default_rng(0)
    raw = pl.Series("x", [*vocab, None, -4, 0, 10**15 + 1, *rng.integers(-20, 120, 300).tolist()], dtype=pl.Int64)
    m = IdLookup(table).map_ids(raw, "x")
    assert m.series.to_list() == _reference(raw, table).to_list()
    assert m.values == raw.len() - 1
    assert m.oov == int(((m.series == OOV_INDEX) & raw.is_not_null()).sum())
    assert (m.oov == 0) == bool(buckets)  # with buckets only nulls reach OOV


def test_string_ids_match_replace_strict():
    table = TableSpec("t", 4, "str", pl.Series("value", ["a", "b"]))
    raw = pl.Series("x", ["b", None, "zz", "a"])
    m = IdLookup(table).map_ids(raw, "x")
    assert m.series.to_list() == _reference(raw, table).to_list() == [2, 0, 0, 1]
    assert (m.oov, m.values) == (1, 3)


def test_id_lists_are_cut_mapped_and_counted():
    table = TableSpec("t", 4, "int", pl.Series("value", [10, 20, 30]), 0)
    raw = pl.Series("x", [[10, 99, 20, 30], None, [], [30, None], [20]], dtype=pl.List(pl.Int64))
    m = IdLookup(table).map_lists(raw[0:5], "x", max_len=3)
    assert m.series.to_list() == [[1, 0, 2], [], [], [3, 0], [2]]
    assert (m.oov, m.values) == (2, 6)  # the unseen 99 and the null id
    sliced = IdLookup(table).map_lists(raw[3:5], "x", max_len=3)  # an offset into the arrow buffers
    assert sliced.series.to_list() == [[3, 0], [2]]


def test_list_parts_and_list_series_round_trip():
    s = pl.Series("x", [[1, 2], None, [3], [], [4, 5, 6]], dtype=pl.List(pl.Int64))[1:]
    lengths, flat = list_parts(s)
    assert lengths.tolist() == [0, 1, 0, 3] and flat.to_pylist() == [3, 4, 5, 6]
    back = list_series("x", lengths, flat.to_numpy(), np.array([True, False, True, True]))
    assert back.to_list() == [[], [3], [], [None, 5, 6]]


def test_category_lists_keep_offsets_and_mark_unknown_items():
    from recsys_moe.features.enrich import CategoryOf

    items = pl.DataFrame({"item_id": [1, 2, 5], "category": [30, None, 50]})
    lists = pl.Series("h", [[5, 1], [], [2, 99], None], dtype=pl.List(pl.Int64))
    got = CategoryOf(items).of_lists(lists, "c")
    # an item without a category gives null (OOV later); one missing from the table gives -1
    assert got.to_list() == [[50, 30], [], [None, -1], []]
