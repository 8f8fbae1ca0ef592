"""Integer keys -> dense row numbers, looked up for whole arrays at once.

The feature transform needs "which row of this table is id x" for millions of ids per second:
the point-in-time state (one row per user or item seen so far) and the vocabularies (one row per
kept id). When the keys are small non-negative integers (most id spaces) a direct lookup array
answers in one gather; otherwise a sorted copy of the keys and a binary search does, in numpy,
with no Python loop and no hashing that could change between library versions.
"""

from __future__ import annotations

import numpy as np

DIRECT_MIN_SLOTS = 1 << 22
"""A direct lookup array may always span this many keys (32 MiB); beyond, up to 8 slots per key."""


class KeyIndex:
    """Maps int64 keys to rows ``0..size-1`` in the order the keys were first added."""

    def __init__(self, keys: np.ndarray | None = None):
        self._sorted_keys = np.empty(0, np.int64)
        self._sorted_rows = np.empty(0, np.int64)
        self._keys = np.empty(0, np.int64)
        self._direct: np.ndarray | None = np.full(1, -1, np.int64)  # slot k: row of key k; last slot: -1
        if keys is not None:
            self.add(keys)

    @property
    def size(self) -> int:
        return len(self._keys)

    def keys(self) -> np.ndarray:
        """Every key, in row order."""
        return self._keys

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key, ``-1`` for keys never added."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._direct is not None:
            if not len(keys) or keys.min() >= 0:
                return self._direct.take(keys, mode="clip")  # keys past the end land on the last slot: -1
            # negative keys, seen as unsigned, are huge and land on the last slot too
            return self._direct.take(np.minimum(keys.view(np.uint64), len(self._direct) - 1).view(np.int64))
        if not self.size:
            return np.full(len(keys), -1, np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        np.minimum(pos, self.size - 1, out=pos)
        return np.where(self._sorted_keys[pos] == keys, self._sorted_rows[pos], -1)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys``, giving new rows (in order of first appearance) to keys not yet present."""
        keys = np.asarray(keys, dtype=np.int64)
        rows = self.rows(keys)
        missing = rows < 0
        if missing.any():
            uniq, first = np.unique(keys[missing], return_index=True)  # uniq is sorted
            new_rows = np.empty(len(uniq), np.int64)
            new_rows[np.argsort(first, kind="stable")] = np.arange(self.size, self.size + len(uniq))
            at = np.searchsorted(self._sorted_keys, uniq)
            self._sorted_keys = np.insert(self._sorted_keys, at, uniq)
            self._sorted_rows = np.insert(self._sorted_rows, at, new_rows)
            keys_in_order = np.empty(len(uniq), np.int64)
            keys_in_order[new_rows - self.size] = uniq
            self._keys = np.concatenate([self._keys, keys_in_order])
            self._update_direct(uniq, new_rows)
            rows[missing] = self.rows(keys[missing])
        return rows

    def _update_direct(self, new_keys: np.ndarray, new_rows: np.ndarray) -> None:
        lo, hi = int(self._sorted_keys[0]), int(self._sorted_keys[-1])
        limit = max(DIRECT_MIN_SLOTS, 8 * self.size)
        if lo < 0 or hi >= limit:
            self._direct = None
            return
        if self._direct is not None and hi + 2 <= len(self._direct):
            self._direct[new_keys] = new_rows  # the last slot stays -1: every key is below it
            return
        # grown by doubling, so a stream of new users costs amortised O(new keys), not O(max id)
        cap = min(max(hi + 2, 2 * len(self._direct) if self._direct is not None else 0), limit + 1)
        direct = np.full(cap, -1, np.int64)
        direct[self._sorted_keys] = self._sorted_rows
        self._direct = direct

    def copy(self) -> KeyIndex:
        out = KeyIndex()
        out._sorted_keys, out._sorted_rows, out._keys = self._sorted_keys.copy(), self._sorted_rows.copy(), self._keys.copy()
        out._direct = None if self._direct is None else self._direct.copy()
        return out
