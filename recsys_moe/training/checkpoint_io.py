"""Checkpoints written atomically: a run killed while saving never leaves a torn ``last.ckpt``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from recsys_moe.atomic import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with replacing(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
