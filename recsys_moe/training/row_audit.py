"""``training.audit_rows``: which training rows each rank saw in each epoch, written to
``<run>/audit/epoch=<e>/rank=<r>.parquet`` (one ``impression_id`` column), so a distributed
run's coverage can be checked: every row once per epoch across the ranks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import polars as pl
import torch

from recsys_moe import storage


class RowAudit(L.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.ids: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.ids = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch.row_ids is None:
            raise ValueError("training.audit_rows: the model-ready data has no impression_id column")
        self.ids.append(batch.row_ids)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        ids = torch.cat(self.ids).numpy() if self.ids else []
        path = self.folder / f"epoch={trainer.current_epoch}" / f"rank={trainer.global_rank}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.write_parquet(pl.DataFrame({"impression_id": ids}, schema={"impression_id": pl.Int64}), path)
