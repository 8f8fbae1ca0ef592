"""An output folder of Parquet parts that a killed job resumes with no duplicate or missing rows.

```
<output>/
  part-00000.parquet ...   each written to a temporary name, then renamed
  MANIFEST.json            fingerprint, header, rows per finished part, complete flag;
                           rewritten (temp + rename) after every part
```

The fingerprint names everything a part's content depends on (the job computes it: input files,
model bytes, ...). Opening a folder whose manifest has the same fingerprint resumes it: the parts
it lists are skipped. A folder with another fingerprint, or that is not such an output at all, is
refused unless ``overwrite`` (then it is cleared first). Part ``i`` must always hold the same
rows for the same fingerprint: the job derives parts from the input deterministically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_moe.atomic import replacing, write_parquet

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "MANIFEST.json"


class PartsError(ValueError):
    """The output folder holds something else; the message says what to pass."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ResumableParts:
    """The parts of one output folder; see the module docstring."""

    def __init__(self, output: str | Path, fingerprint: str, header: dict[str, Any] | None = None,
                 overwrite: bool = False, holds: str = "scores") -> None:
        self.output = Path(output)
        self.path = self.output / MANIFEST
        fresh = {"fingerprint": fingerprint, **(header or {}), "parts": {}, "complete": False}
        self.manifest: dict[str, Any] = fresh
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("fingerprint") == fingerprint:
                self.manifest = old
            elif overwrite:
                shutil.rmtree(self.output)
            else:
                raise PartsError(f"{self.output} holds {holds} of another input, model or history state; "
                                 "pass --overwrite or another --output")
        elif self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            if not overwrite:
                raise PartsError(f"{self.output} exists and is not such an output folder; pass --overwrite or another --output")
            shutil.rmtree(self.output) if self.output.is_dir() else self.output.unlink()
        self.output.mkdir(parents=True, exist_ok=True)

    @property
    def resumed(self) -> bool:
        return bool(self.manifest["parts"])

    def done(self, name: str) -> int | None:
        """Rows of part ``name`` when it is finished (listed and on disk), else None."""
        rows = self.manifest["parts"].get(name)
        return rows if rows is not None and (self.output / name).is_file() else None

    def write(self, name: str, frame: pl.DataFrame) -> None:
        """Write part ``name`` atomically, then record it in the manifest."""
        with replacing(self.output / name) as tmp:
            write_parquet(frame, tmp)
        self.manifest["parts"][name] = frame.height
        self._save()

    def finish(self, **extra: Any) -> int:
        """Mark the output complete; returns its total rows."""
        self.manifest["complete"] = True
        self.manifest["rows"] = sum(self.manifest["parts"].values())
        self.manifest.update(extra)
        self._save()
        return self.manifest["rows"]

    def _save(self) -> None:
        with replacing(self.path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2))
