"""Batch scoring on Ray Data (``recsys-moe score --engine ray``, ``scoring.engine: ray``).

The same job as :func:`recsys_moe.serving.scoring.score`, spread over a Ray cluster (or a Ray
instance started on this machine):

1. The driver checks the model, the inputs and the output folder exactly as the local job does
   (:func:`~recsys_moe.serving.scoring.open_job`) and cuts the input into parts of ``batch_rows``
   rows per file, from the Parquet footers (no data is read). Parts already finished by an
   earlier run are skipped.
2. A Ray Dataset of the remaining parts flows through two actor pools (``map_batches`` with a
   callable class, ``concurrency`` actors each):

   - **inputs** (CPU): each actor loads the users, items and history state once, then reads its
     part's rows and computes the model inputs with the local job's code
     (:class:`~recsys_moe.serving.candidates.CandidateInputs`);
   - **scores**: each actor holds one ONNX Runtime session (with ``scoring.ray.num_gpus: 1``, one
     per GPU: Ray sets ``CUDA_VISIBLE_DEVICES``), scores the inputs and writes the part file whole.

3. The driver records every written part in the manifest as it arrives, so a killed job rerun
   skips them and ends with one row per input row; the folder's rules are the local job's
   (:class:`~recsys_moe.resumable_parts.ResumableParts`).

The model and its FeatureSpec are shipped to the actors through Ray's object store; inputs,
output, users, items and the history state are read and written by the actors where they are,
so on a cluster they must be on storage every node sees (an object store, or a shared file
system). Imports no torch.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from recsys_moe import storage
from recsys_moe.config import Config
from recsys_moe.data.raw import load_raw
from recsys_moe.features.enrich import initial_state, joined_columns_only
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.ray_cluster import connect
from recsys_moe.registry import ResolvedModel
from recsys_moe.resumable_parts import part_name
from recsys_moe.serving.candidates import CandidateInputs
from recsys_moe.serving.scoring import (
    ScoreSummary,
    ScoringError,
    _input_mapping,
    _parquet,
    finish_job,
    input_rows,
    open_job,
    output_keys,
    rows_before,
    scored_frame,
)
from recsys_moe.serving.session import make_session

log = logging.getLogger(__name__)
SCHEME = "row_ranges"
"""How the Ray job cuts input rows into parts (recorded in the output's fingerprint)."""


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of one input file: one output part."""

    name: str
    file: str
    start: int
    stop: int


def row_ranges(files: list[storage.Location], batch_rows: int) -> list[Part]:
    """Every file cut into parts of ``batch_rows`` rows (the last of a file shorter), in input
    order, from the footers alone."""
    parts, index = [], 0
    for f in files:
        rows = input_rows(f)
        for start in range(0, rows, batch_rows):
            parts.append(Part(part_name(index), str(f), start, min(start + batch_rows, rows)))
            index += 1
    return parts


def read_rows(file: storage.Location, start: int, stop: int) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups they fall in."""
    with _parquet(file) as parquet:
        meta = parquet.metadata
        groups, first, offset = [], None, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        if not groups:
            return parquet.schema_arrow.empty_table()
        table = parquet.read_row_groups(groups, use_threads=False)
    return table.slice(start - first, stop - start)


def _folder_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _unpack(files: dict[str, bytes], root: Path) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _resolved(value: Any) -> Any:
    """An object-store reference fetched (constructor arguments arrive as references)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _feeds_bytes(feeds: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **feeds)
    return buf.getvalue()


def _frame_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


class ModelInputs:
    """Ray actor: a part's rows -> (keys, model inputs); tables and state loaded once per actor."""

    def __init__(self, cfg: Config, spec_files: Any, state_dir: str | None) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="recsys-moe-inputs-")
        spec = FeatureSpec.load(_unpack(_resolved(spec_files), Path(self.tmp.name)))
        raw = joined_columns_only(load_raw(cfg.data, validate=False), spec.features)
        hist = spec.features.history
        self.state = HistoryState.load(state_dir) if state_dir else initial_state(raw, hist.max_len, hist.long_watch_s)
        self.to_raw = _input_mapping(cfg)[0]
        self.candidates = CandidateInputs(spec, raw, self.state)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"name": [], "keys": [], "feeds": [], "before_state": []}
        for name, file, start, stop in zip(batch["name"], batch["file"], batch["start"], batch["stop"], strict=True):
            rows = pl.from_arrow(read_rows(str(file), int(start), int(stop)))
            if self.to_raw is not None:
                rows = self.to_raw(rows, "scoring input")
            out["name"].append(str(name))
            out["keys"].append(_frame_bytes(output_keys(rows)))
            out["feeds"].append(_feeds_bytes(self.candidates.inputs(rows)))
            out["before_state"].append(rows_before(rows, self.state.last_ts_ms))
        return {k: np.array(v, dtype=object if k in ("keys", "feeds") else None) for k, v in out.items()}


class ScoreParts:
    """Ray actor: model inputs -> predictions -> one part file, written whole."""

    def __init__(self, model_bytes: Any, output: str, label: str, providers: str, threads: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="recsys-moe-model-")
        path = Path(self.tmp.name) / "model.onnx"
        path.write_bytes(_resolved(model_bytes))
        self.session = make_session(path, providers, threads=threads, spin=False)
        self.output, self.label = output, label

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, rows = [], []
        for name, keys, feeds, _ in zip(batch["name"], batch["keys"], batch["feeds"], batch["before_state"], strict=True):
            with np.load(io.BytesIO(feeds), allow_pickle=False) as npz:
                inputs = {k: npz[k] for k in npz.files}
            frame = scored_frame(pl.read_ipc(io.BytesIO(keys)), self.session.run(inputs), self.session.output_names, self.label)
            storage.write_parquet(frame, storage.join(self.output, str(name)))
            names.append(str(name))
            rows.append(frame.height)
        return {"name": np.array(names), "rows": np.array(rows), "before_state": np.asarray(batch["before_state"], dtype=np.int64),
                "provider": np.array([self.session.provider] * len(names))}


def score_on_ray(
    cfg: Config, model: ResolvedModel, files: list[storage.Location], output: storage.Location,
    state_dir: storage.Location | None = None, batch_rows: int = 100_000, providers: str = "auto",
    overwrite: bool = False, on_rows: Callable[[int], None] | None = None, state_origin: str | None = None,
) -> ScoreSummary:
    """:func:`~recsys_moe.serving.scoring.score` with Ray Data (see the module docstring)."""
    try:
        import ray
    except ImportError as exc:
        raise ScoringError("scoring.engine ray needs Ray: pip install 'recsys-moe[ray]' (or `pip install ray[data]`)") from exc
    job, _ = open_job(cfg, model, files, output, state_dir, batch_rows, providers, overwrite, state_origin, SCHEME, load_state=False)
    summary, parts, rc = job.summary, job.parts, cfg.scoring.ray
    todo = []
    for part in row_ranges(files, batch_rows):
        done = parts.done(part.name)
        if done is None:
            todo.append(part)
            continue
        summary.skipped_parts += 1
        summary.rows += done
        if on_rows:
            on_rows(done)
    state_ts = HistoryState.last_event_ms(state_dir) if state_dir is not None else None  # (the actors load the state)
    if todo:
        started = connect(rc.address)
        try:
            _run(ray, cfg, job, todo, state_dir, providers, on_rows)
        except ray.exceptions.RayError as exc:
            raise ScoringError(f"scoring on Ray failed: {exc}") from exc
        finally:
            if started:
                ray.shutdown()
    return finish_job(job, state_ts)


def _run(ray: Any, cfg: Config, job: Any, todo: list[Part], state_dir: storage.Location | None, providers: str,
         on_rows: Callable[[int], None] | None) -> None:
    rc = cfg.scoring.ray
    spec_files = ray.put(_folder_bytes(Path(job.model.spec_dir)))
    model_bytes = ray.put(Path(job.model.onnx_path).read_bytes())
    threads = max(1, int(rc.num_cpus))
    data = ray.data.from_items([asdict(p) for p in todo], override_num_blocks=len(todo))
    data = data.map_batches(
        ModelInputs, batch_size=1, concurrency=rc.feature_actors, num_cpus=rc.num_cpus,
        fn_constructor_kwargs={"cfg": cfg, "spec_files": spec_files, "state_dir": str(state_dir) if state_dir is not None else None},
    )
    data = data.map_batches(
        ScoreParts, batch_size=1, concurrency=rc.scoring_actors, num_cpus=rc.num_cpus, num_gpus=rc.num_gpus or None,
        fn_constructor_kwargs={"model_bytes": model_bytes, "output": str(job.parts.output), "label": job.model.label,
                               "providers": providers, "threads": threads},
    )
    seen: set[str] = set()
    for row in data.iter_rows():
        seen.add(str(row["provider"]))
        job.parts.record(str(row["name"]), int(row["rows"]))
        job.summary.parts += 1
        job.summary.rows += int(row["rows"])
        job.summary.rows_before_state += int(row["before_state"])
        if on_rows:
            on_rows(int(row["rows"]))
    # the actors' providers, not the driver's (a GPU actor runs CUDA where the driver has none)
    job.summary.provider = f"{', '.join(sorted(seen))} on Ray ({rc.scoring_actors} scoring actor(s), {rc.num_gpus:g} GPU each)"
    log.info("scored %d parts on Ray (pid %d)", len(todo), os.getpid())
