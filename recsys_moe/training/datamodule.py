"""LightningDataModule over the feature pipeline's model-ready Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from recsys_moe import storage
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.training.batches import BatchLoader, ColumnarSplit, DataError
from recsys_moe.training.streaming import StreamingLoader, decoded_bytes


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


SPLITS = ("train", "validation", "test")
Loader = BatchLoader | StreamingLoader


class FeatureDataModule(L.LightningDataModule):
    """Train / validation / test loaders over the model-ready splits, held in memory or streamed
    (``data_mode``; ``auto`` holds them when their decoded size is at most ``memory_budget_mb``).

    Under DDP each rank trains on its own share of every epoch's shuffled rows and validates on its
    own share of the validation rows (the module gathers the predictions); :meth:`loader` with
    ``sharded=False`` reads a whole split, for evaluation after training."""

    def __init__(self, data_dir: str | Path, spec: FeatureSpec, batch_size: int, eval_batch_size: int, seed: int,
                 data_mode: str = "memory", memory_budget_mb: int = 2048, shuffle_buffer_rows: int = 262_144) -> None:
        super().__init__()
        self.data_dir = storage.location(data_dir)
        self.spec = spec
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.manifest = check_manifest(self.data_dir, spec)
        self.splits: dict[str, ColumnarSplit] = {}
        if data_mode == "auto":
            decoded = sum(decoded_bytes(storage.join(self.data_dir, n)) for n in SPLITS)
            data_mode = "memory" if decoded <= memory_budget_mb * 2**20 else "stream"
        self.data_mode = data_mode

    def split(self, name: str) -> ColumnarSplit:
        if name not in self.splits:
            self.splits[name] = ColumnarSplit.read(storage.join(self.data_dir, name), self.spec)
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        if self.data_mode == "stream":
            return
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

    def loader(self, name: str, sharded: bool = True) -> Loader:
        """Shuffled, equal shares for ``train``; every row once, in order, otherwise."""
        train = name == "train"
        common = {"batch_size": self.batch_size if train else self.eval_batch_size, "shuffle": train, "seed": self.seed,
                  "epoch_fn": self._epoch, "shard_fn": self._shard if sharded else None}
        if self.data_mode == "stream":  # unshuffled splits need no buffer beyond the row group read
            return StreamingLoader(storage.join(self.data_dir, name), self.spec,
                                   buffer_rows=self.shuffle_buffer_rows if train else 1, **common)
        return BatchLoader(self.split(name), **common)

    def train_dataloader(self) -> Loader:
        return self.loader("train")

    def val_dataloader(self) -> Loader:
        return self.loader("validation")

    def test_dataloader(self) -> Loader:
        return self.loader("test")
