"""Callback that times each training epoch (samples/s), for logs and benchmarks."""

from __future__ import annotations

import time

import lightning as L


class EpochThroughput(L.Callback):
    """Samples per second of each training epoch, from its first batch's start to its last
    batch's end: data loading, forward, backward and optimiser step. Validation is excluded (it
    runs between the last batch and ``on_train_epoch_end``, so the epoch's end is not the clock)."""

    def __init__(self) -> None:
        self.samples_per_s: list[float] = []
        self._start = self._last = 0.0
        self._rows = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._rows = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rows += len(batch)
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        secs = self._last - self._start
        if self._rows and secs > 0:
            rate = self._rows / secs
            self.samples_per_s.append(rate)
            pl_module.log("train/samples_per_s", rate)
