"""An output folder of Parquet parts that a killed job resumes with no duplicate or missing rows.

```
<output>/
  part-00000.parquet ...   each written whole (:func:`recsys_moe.storage.write_parquet`)
  MANIFEST.json            fingerprint, header, rows per finished part, complete flag;
                           rewritten whole after every part
```

The folder may be an object-store prefix (``s3://...``): a part or manifest there is one object,
which appears only when written completely, so the same rules hold without a rename.

The fingerprint names everything a part's content depends on (the job computes it: input files,
model bytes, ...). Opening a folder whose manifest has the same fingerprint resumes it: the parts
it lists are skipped. A folder with another fingerprint, or that is not such an output at all, is
refused unless ``overwrite`` (then it is cleared first). Part ``i`` must always hold the same
rows for the same fingerprint: the job derives parts from the input deterministically.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from recsys_moe import storage

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "MANIFEST.json"


class PartsError(ValueError):
    """The output folder holds something else; the message says what to pass."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ResumableParts:
    """The parts of one output folder, local or an object-store prefix; see the module docstring."""

    def __init__(self, output: storage.Location, fingerprint: str, header: dict[str, Any] | None = None,
                 overwrite: bool = False, holds: str = "scores") -> None:
        self.output = storage.location(output)
        self.path = storage.join(self.output, MANIFEST)
        fresh = {"fingerprint": fingerprint, **(header or {}), "parts": {}, "complete": False}
        self.manifest: dict[str, Any] = fresh
        if storage.is_file(self.path):
            try:
                old = json.loads(storage.read_text(self.path))
            except (OSError, ValueError):
                old = {}
            if old.get("fingerprint") == fingerprint:
                self.manifest = old
            elif overwrite:
                storage.remove(self.output)
            else:
                raise PartsError(f"{self.output} holds {holds} of another input, model or history state; "
                                 "pass --overwrite or another --output")
        elif storage.is_file(self.output) or storage.is_dir(self.output) and storage.files_below(self.output):
            if not overwrite:
                raise PartsError(f"{self.output} exists and is not such an output folder; pass --overwrite or another --output")
            storage.remove(self.output)
        storage.makedirs(self.output)

    @property
    def resumed(self) -> bool:
        return bool(self.manifest["parts"])

    def done(self, name: str) -> int | None:
        """Rows of part ``name`` when it is finished (listed and present), else None."""
        rows = self.manifest["parts"].get(name)
        return rows if rows is not None and storage.is_file(storage.join(self.output, name)) else None

    def write(self, name: str, frame: pl.DataFrame) -> None:
        """Write part ``name`` whole (:func:`~recsys_moe.storage.write_parquet`), then record it
        in the manifest."""
        storage.write_parquet(frame, storage.join(self.output, name))
        self.record(name, frame.height)

    def part_path(self, name: str) -> storage.Location:
        return storage.join(self.output, name)

    def record(self, name: str, rows: int) -> None:
        """Record part ``name``, written whole by someone else (another process of the job), in
        the manifest."""
        self.manifest["parts"][name] = rows
        self._save()

    def finish(self, **extra: Any) -> int:
        """Mark the output complete; returns its total rows."""
        self.manifest["complete"] = True
        self.manifest["rows"] = sum(self.manifest["parts"].values())
        self.manifest.update(extra)
        self._save()
        return self.manifest["rows"]

    def _save(self) -> None:
        storage.write_text(self.path, json.dumps(self.manifest, indent=2))
