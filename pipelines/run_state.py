"""Bookkeeping of a pipeline run: the one-run-at-a-time lock and the per-step log.

The lock is an OS file lock (``filelock``, flock on Linux): the kernel releases it when the
holding process dies, so a run killed with SIGKILL never leaves a stale lock behind.
The step log (``steps.json``) is rewritten atomically after every change."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from recsys_moe.atomic import replacing


class PipelineBusy(RuntimeError):
    """Another run of the same pipeline holds the lock."""


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` for the block or raise :class:`PipelineBusy` at once (no waiting)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    owner = lock_path.with_suffix(".owner")
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        who = owner.read_text().strip() if owner.is_file() else "unknown process"
        raise PipelineBusy(f"another run of this pipeline holds {lock_path} ({who}); "
                           "this run exits without doing anything") from None
    try:
        owner.write_text(f"pid {os.getpid()}, started {now()}")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StepLog:
    """``steps.json``: run key, MLflow run id and each step's status, seconds and outputs."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {**header, "steps": {}}

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    def done(self, step: str) -> bool:
        return self.steps.get(step, {}).get("status") == "done"

    def outputs(self, step: str) -> dict[str, Any]:
        return self.steps.get(step, {}).get("outputs", {})

    def set(self, step: str, **fields: Any) -> None:
        self.steps.setdefault(step, {}).update(fields)
        self.save()

    def save(self) -> None:
        with replacing(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))
