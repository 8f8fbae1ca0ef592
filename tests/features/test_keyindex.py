import numpy as np
import pytest

from recsys_moe.features.keyindex import KeyIndex


@pytest.mark.parametrize("spread", ["small", "negative", "huge"])
def test_rows_follow_first_appearance_like_a_dict(spread):
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 50, 400)
    if spread == "negative":
        keys = keys - 25
    elif spread == "huge":
        keys = keys * 10**15  # far beyond a direct lookup array
    index, seen = KeyIndex(), {}
    for batch in np.array_split(keys, 7):
        got = index.add(batch)
        for k in batch:
            seen.setdefault(int(k), len(seen))
        assert got.tolist() == [seen[int(k)] for k in batch]
    assert index.size == len(seen)
    assert index.keys().tolist() == list(seen)
    probe = np.array([keys[0], 10**18, -(10**18), 51 * (10**15 if spread == "huge" else 1)])
    assert index.rows(probe).tolist() == [seen[int(keys[0])], -1, -1, -1]


def test_direct_and_sorted_lookups_agree():
    keys = np.array([7, 3, 11, 0])
    direct = KeyIndex(keys)
    sparse = KeyIndex(np.append(keys, 2**40))  # one huge key turns the direct array off
    assert direct._direct is not None and sparse._direct is None
    probe = np.array([0, 3, 7, 11, 5, -3, 12, 2**40])
    assert direct.rows(probe).tolist() == [3, 1, 0, 2, -1, -1, -1, -1]
    assert sparse.rows(probe).tolist() == [3, 1, 0, 2, -1, -1, -1, 4]


def test_copy_is_independent():
    a = KeyIndex(np.array([1, 2]))
    b = a.copy()
    b.add(np.array([3]))
    assert a.rows(np.array([3])).tolist() == [-1] and b.rows(np.array([3])).tolist() == [2]


def test_empty_index_finds_nothing():
    assert KeyIndex().rows(np.array([0, 1])).tolist() == [-1, -1]
