"""Write a file or folder under a temporary sibling name and move it into place only when done.

Every job that writes outputs uses :func:`replacing`, so a crash never leaves a half-written
file or folder at the real path (imports without torch)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield ``.<name>.tmp-<pid>`` beside ``path`` for the caller to create and fill.

    When the block ends normally the temporary replaces ``path`` (a file atomically; an old folder
    is removed first, then the new one renamed in). When it raises, the temporary is deleted and
    ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)  # nothing left to remove after a successful replace


def write_parquet(frame: pl.DataFrame, path: str | Path, **options: Any) -> None:
    """``frame.write_parquet(path, **options)``, with a failed write (a full disk, a file-size
    limit) raised as an OSError that names the path: Polars reports such failures as a
    ComputeError, which the commands would show as a traceback."""
    import polars as pl  # here, so that modules needing only `replacing` do not load Polars

    try:
        frame.write_parquet(path, **options)
    except pl.exceptions.ComputeError as exc:
        raise OSError(f"could not write {path}: {exc}") from exc
