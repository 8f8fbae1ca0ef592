"""Open the configured source's raw tables (:class:`~recsys_moe.data.tables.RawTables`)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_moe.config import DataConfig
from recsys_moe.data.tables import RawTables


def read_synthetic(raw_dir: Path) -> RawTables:
    """Open the tables written by ``recsys-moe data synth`` (see :mod:`recsys_moe.data.synthetic`)."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "MANIFEST.json").is_file():
        raise FileNotFoundError(
            f"{raw_dir}: no synthetic data here (MANIFEST.json missing); "
            "run `recsys-moe data synth --config <config>` first"
        )
    imp_glob = str(raw_dir / "impressions" / "*" / "*.parquet")
    oracle_glob = str(raw_dir / "oracle" / "*" / "*.parquet")
    return RawTables(
        impressions=pl.scan_parquet(imp_glob, hive_partitioning=False),
        users=pl.read_parquet(raw_dir / "users.parquet"),
        items=pl.read_parquet(raw_dir / "items.parquet"),
        oracle=pl.scan_parquet(oracle_glob, hive_partitioning=False),
        source="synthetic",
        files={
            "impressions": imp_glob,
            "users": str(raw_dir / "users.parquet"),
            "items": str(raw_dir / "items.parquet"),
            "oracle": oracle_glob,
        },
        inputs={"users": [str(raw_dir / "users.parquet")], "items": [str(raw_dir / "items.parquet")]},
    )


def load_raw(cfg: DataConfig, validate: bool = True, unique_ids: bool = True) -> RawTables:
    """Read the configured source's raw tables, validated unless ``validate=False`` (see
    :meth:`RawTables.validate` for ``unique_ids``)."""
    if cfg.source == "synthetic":
        tables = read_synthetic(cfg.raw_dir)
    elif cfg.source == "files":
        from recsys_moe.data.files import read_files

        assert cfg.files is not None  # DataConfig requires it for this source
        tables = read_files(cfg.files)
    else:
        from recsys_moe.data.kuairand import read_kuairand

        k = cfg.kuairand
        tables = read_kuairand(k.path, layout=k.layout, variant=k.variant, logs=k.logs)
    if validate:
        tables.validate(unique_ids)
    return tables
