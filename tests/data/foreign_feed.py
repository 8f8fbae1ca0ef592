"""A synthetic feed rewritten the way someone else's logs look: other column names, epoch
milliseconds, watch time in ms, boolean clicks, tags as one delimited string (test helper)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_moe import storage

IMPRESSION_NAMES = {"impression_id": "req_id", "user_id": "uid", "item_id": "vid", "timestamp": "ts_ms",
                    "click": "clicked", "watch_time_s": "play_ms", "surface": "tab", "position": "slot"}


def foreign_impressions(rows: pl.DataFrame) -> pl.DataFrame:
    """Raw-shaped impressions in the foreign shape."""
    return rows.select(
        pl.col("impression_id").alias("req_id"), pl.col("user_id").alias("uid"), pl.col("item_id").alias("vid"),
        pl.col("timestamp").dt.epoch("ms").alias("ts_ms"), (pl.col("click") == 1).alias("clicked"),
        (pl.col("watch_time_s").cast(pl.Float64) * 1000.0).alias("play_ms"),
        pl.col("surface").alias("tab"), pl.col("position").alias("slot"),
    )


def write_foreign_feed(raw_dir: Path, dest: storage.Location, fmt: str = "csv") -> dict:
    """Write the synthetic raw tables under ``dest`` in the foreign shape; returns the
    ``data.files`` section that maps them back."""
    imps = pl.read_parquet(Path(raw_dir) / "impressions" / "*" / "*.parquet")
    users = pl.read_parquet(Path(raw_dir) / "users.parquet").rename({"user_id": "uid"})
    items = pl.read_parquet(Path(raw_dir) / "items.parquet").select(
        pl.col("item_id").alias("vid"), pl.col("category").alias("cat"), "creator_id",
        (pl.col("duration_s").cast(pl.Float64) * 1000.0).alias("dur_ms"),
        pl.col("tags").cast(pl.List(pl.String)).list.join("|").alias("tag_str"),
    )
    storage.makedirs(storage.join(dest, "logs"))
    days = imps["timestamp"].dt.date()
    for day in days.unique().sort():
        part = foreign_impressions(imps.filter(days == day))
        path = storage.join(dest, "logs", f"{day}.{fmt}")
        part.write_csv(str(path)) if fmt == "csv" else storage.write_parquet(part, path)
    users.write_csv(str(storage.join(dest, "users.csv")))
    items.write_csv(str(storage.join(dest, "items.csv")), separator=";")
    return {
        "impressions": {"path": str(storage.join(dest, "logs", f"*.{fmt}")), "columns": IMPRESSION_NAMES,
                        "timestamp_unit": "ms", "watch_time_unit": "ms"},
        "users": {"path": str(storage.join(dest, "users.csv")), "columns": {"user_id": "uid"}},
        "items": {"path": str(storage.join(dest, "items.csv")), "separator": ";", "duration_unit": "ms",
                  "list_separator": "|",
                  "columns": {"item_id": "vid", "category": "cat", "duration_s": "dur_ms", "tags": "tag_str"}},
    }
