"""LightningDataModule over the feature pipeline's model-ready Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from recsys_moe import storage
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.training.batches import BatchLoader, ColumnarSplit, DataError


def check_manifest(data_dir: storage.Location, spec: FeatureSpec) -> dict:
    """The transform's MANIFEST must name this spec (no training on rows from another spec). A
    folder without one is not complete (on an object store the manifest is written last)."""
    path = storage.join(data_dir, "MANIFEST.json")
    if not storage.is_file(path):
        raise DataError(f"{data_dir}: no MANIFEST.json; run `recsys-moe features transform` first")
    manifest = json.loads(storage.read_text(path))
    if manifest.get("spec_hash") != spec.content_hash:
        raise DataError(
            f"{path}: rows were transformed with FeatureSpec {manifest.get('spec_hash')}, not "
            f"{spec.content_hash}; re-run `recsys-moe features transform`"
        )
    return manifest


class FeatureDataModule(L.LightningDataModule):
    """Train / validation / test splits read once into memory; whole-batch iterables. Under DDP
    each rank reads the splits and trains on its own slice of every epoch's permutation."""

    def __init__(self, data_dir: str | Path, spec: FeatureSpec, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        self.data_dir = storage.location(data_dir)
        self.spec = spec
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.manifest = check_manifest(self.data_dir, spec)
        self.splits: dict[str, ColumnarSplit] = {}

    def split(self, name: str) -> ColumnarSplit:
        if name not in self.splits:
            self.splits[name] = ColumnarSplit.read(storage.join(self.data_dir, name), self.spec)
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split("train")
        if stage in (None, "fit", "validate"):
            self.split("validation")
        if stage in (None, "test", "predict"):
            self.split("test")

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def _shard(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> BatchLoader:
        return BatchLoader(self.split("train"), self.batch_size, shuffle=True, seed=self.seed,
                           epoch_fn=self._epoch, shard_fn=self._shard)

    def val_dataloader(self) -> BatchLoader:
        """Every rank validates on all rows, so metrics need no gathering and agree across ranks."""
        return BatchLoader(self.split("validation"), self.eval_batch_size)

    def test_dataloader(self) -> BatchLoader:
        return BatchLoader(self.split("test"), self.eval_batch_size)
