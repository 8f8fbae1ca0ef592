"""Raw tables as every later stage sees them, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from recsys_moe.data.schema import validate_impressions, validate_items, validate_users


@dataclass
class RawTables:
    """Impressions (lazy: may not fit in memory), users, items, optional prior history and oracle.

    ``files`` maps each table name to where it came from, for error messages; ``inputs`` lists
    the files (paths or URIs) the users, items and history tables were read from, so a scoring
    job's fingerprint changes when they do.
    """

    impressions: pl.LazyFrame
    users: pl.DataFrame
    items: pl.DataFrame
    source: str
    history: pl.DataFrame | None = None
    oracle: pl.LazyFrame | None = None
    files: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def validate(self, unique_ids: bool = True) -> None:
        """Validate every table; raises :class:`~recsys_moe.data.schema.RawDataError`.

        ``unique_ids=False`` leaves out the whole-log ``impression_id`` duplicate check, whose
        memory grows with the log; jobs that replay the log day by day check each day instead."""
        validate_users(self.users, self.files.get("users", "users"))
        validate_items(self.items, self.files.get("items", "items"))
        validate_impressions(self.impressions, self.files.get("impressions", "impressions"), unique_ids)
