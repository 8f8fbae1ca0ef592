"""FeatureSpec: the fitted contract between training and serving.

Saved as a directory: ``spec.json`` (feature definitions, table sizes, numeric statistics, the
train window and a content hash) plus ``vocab/<table>.parquet`` (one ``value`` column; the row
number + 1 is the embedding index). Index 0 of every table is OOV / missing; indices after the
vocabulary are hash buckets for the long tail when ``hash_buckets > 0``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys_moe.atomic import replacing, write_parquet
from recsys_moe.config import FeatureDef, FeaturesConfig

SPEC_VERSION = 1
OOV_INDEX = 0


class SpecError(ValueError):
    """A FeatureSpec is unreadable or does not match the config / model it is used with."""


@dataclass
class TableSpec:
    name: str
    dim: int
    dtype: str  # "int" or "str"
    vocab: pl.Series
    hash_buckets: int = 0

    @property
    def num_embeddings(self) -> int:
        return 1 + len(self.vocab) + self.hash_buckets


@dataclass
class FeatureSpec:
    features: FeaturesConfig
    tables: dict[str, TableSpec]
    numeric_stats: dict[str, dict[str, float]]
    train_window: tuple[str, str]
    source: str
    rows_fitted: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def features_hash(self) -> str:
        return self.features.content_hash()

    def feature(self, name: str) -> FeatureDef:
        for f in self.features.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def id_features(self) -> list[str]:
        """Single-id features, in config order (each a length-1 KJT key)."""
        return [f.name for f in self.features.features if f.kind == "id"]

    @property
    def list_features(self) -> list[str]:
        """Id-list features, in config order (jagged KJT keys)."""
        return [f.name for f in self.features.features if f.kind == "id_list"]

    @property
    def dense_columns(self) -> list[str]:
        """Float32 model inputs in order: each numeric feature, then its missing indicator."""
        cols: list[str] = []
        for f in self.features.features:
            if f.kind == "numeric":
                cols.append(f.name)
                if f.missing_indicator:
                    cols.append(f"{f.name}__missing")
        return cols

    def _header(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "source": self.source,
            "train_window": list(self.train_window),
            "rows_fitted": self.rows_fitted,
            "features_hash": self.features_hash,
            "features": self.features.model_dump(mode="json"),
            "tables": {
                t.name: {"dim": t.dim, "dtype": t.dtype, "vocab_size": len(t.vocab),
                         "hash_buckets": t.hash_buckets, "num_embeddings": t.num_embeddings}
                for t in self.tables.values()
            },
            "numeric_stats": self.numeric_stats,
            "meta": self.meta,
        }

    @property
    def content_hash(self) -> str:
        """Hash over the header and every vocabulary value: equal hash, equal transform."""
        h = hashlib.sha256(json.dumps(self._header(), sort_keys=True).encode())
        for name in sorted(self.tables):
            h.update(name.encode())
            h.update("\x1f".join(map(str, self.tables[name].vocab.to_list())).encode())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """Write the spec atomically (temp directory, then rename over any old one)."""
        directory = Path(directory)
        with replacing(directory) as tmp:
            (tmp / "vocab").mkdir(parents=True)
            for t in self.tables.values():
                write_parquet(pl.DataFrame({"value": t.vocab}), tmp / "vocab" / f"{t.name}.parquet")
            header = self._header() | {"content_hash": self.content_hash}
            (tmp / "spec.json").write_text(json.dumps(header, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FeatureSpec:
        directory = Path(directory)
        path = directory / "spec.json"
        if not path.is_file():
            raise SpecError(f"{directory}: no FeatureSpec here (spec.json missing); run `recsys-moe features fit`")
        try:
            header = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON ({exc})") from exc
        if header.get("version") != SPEC_VERSION:
            raise SpecError(f"{path}: spec version {header.get('version')} is not supported (expected {SPEC_VERSION})")
        tables = {}
        for name, t in header["tables"].items():
            vocab = pl.read_parquet(directory / "vocab" / f"{name}.parquet")["value"]
            tables[name] = TableSpec(name, t["dim"], t["dtype"], vocab, t["hash_buckets"])
        spec = cls(
            features=FeaturesConfig.model_validate(header["features"]),
            tables=tables,
            numeric_stats=header["numeric_stats"],
            train_window=tuple(header["train_window"]),
            source=header["source"],
            rows_fitted=header["rows_fitted"],
            meta=header.get("meta", {}),
        )
        if spec.content_hash != header["content_hash"]:
            raise SpecError(f"{directory}: content hash mismatch (files changed after saving)")
        return spec

    def check_matches(self, features: FeaturesConfig, where: str = "config") -> None:
        """Refuse a spec fitted for other feature definitions."""
        if features.content_hash() != self.features_hash:
            raise SpecError(
                f"FeatureSpec was fitted for other feature definitions (spec features hash "
                f"{self.features_hash}, {where} {features.content_hash()}); refit with `recsys-moe features fit`"
            )


def flat_spec_files(directory: str | Path) -> list[Path]:
    """The files of a saved spec as one flat list (``spec.json``, then each vocabulary), for
    stores that keep files without folders, such as an MLflow model's ``extra_files``."""
    directory = Path(directory)
    return [directory / "spec.json", *sorted((directory / "vocab").glob("*.parquet"))]


def restore_spec_dir(flat_dir: str | Path, dest: str | Path) -> Path:
    """Rebuild a spec folder at ``dest`` from the files :func:`flat_spec_files` listed."""
    flat_dir, dest = Path(flat_dir), Path(dest)
    (dest / "vocab").mkdir(parents=True, exist_ok=True)
    shutil.copy2(flat_dir / "spec.json", dest / "spec.json")
    for f in flat_dir.glob("*.parquet"):
        shutil.copy2(f, dest / "vocab" / f.name)
    return dest
