"""Batch scoring job: raw impressions -> features (the training transform's code, with user and
item features mapped once per job: :mod:`serving.candidates`) -> ONNX Runtime -> Parquet parts.
Imports no torch.

Output folder::

    part-00000.parquet ...   impression_id (when the input has it), user_id, item_id, timestamp,
                             one column per task prediction, score, model_version
    MANIFEST.json            input fingerprint, model, rows per finished part, complete flag

Each part is written to a temporary name and renamed; the manifest is rewritten (temp + rename)
after every part. A rerun with the same input, model bytes, history state and batch size skips the
parts the manifest lists, so a crashed job resumes without duplicate or missing rows; a rerun with
anything else changed is refused (or starts over with ``--overwrite``).
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe.atomic import replacing, write_parquet
from recsys_moe.config import Config
from recsys_moe.data.raw import RawTables, load_raw
from recsys_moe.data.schema import validate_items, validate_users
from recsys_moe.features.enrich import check_join_columns, initial_state, joined_columns_only
from recsys_moe.features.fit import check_sources
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import FeatureSpec, restore_spec_dir
from serving.candidates import CandidateInputs
from serving.session import make_session

KEY_COLUMNS = ("user_id", "item_id", "timestamp")
SLICE_ROWS = 16_384
"""Rows prepared and scored at a time inside a part (on CPU, eight of the session's 2,048-row chunks)."""


class ScoringError(ValueError):
    """The job cannot run (bad input, model/spec mismatch, ...); the message says what to fix."""


@dataclass
class ScoreSummary:
    output: Path
    rows: int = 0
    parts: int = 0
    skipped_parts: int = 0
    rows_before_state: int = 0
    """Rows scored (this run) with a timestamp before the history state's last event."""
    seconds: float = 0.0
    provider: str = ""
    model_version: str = ""
    state_source: str = ""
    notes: list[str] = field(default_factory=list)


def input_files(spec: str | Path) -> list[Path]:
    """A Parquet file, a directory (all ``*.parquet`` below it) or a glob; sorted."""
    text = str(spec)
    p = Path(text)
    if p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True))
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise ScoringError(f"{spec}: no Parquet input found")
    return files


def resolve_model(cfg: Config, model: str, cache: Path) -> tuple[Path, Path, str]:
    """``models:/name@alias``, ``models:/name/version`` or an ONNX file with ``feature_spec/``
    beside it -> (onnx path, spec dir, version label)."""
    if model.startswith("models:/"):
        import os

        import mlflow

        from recsys_moe import tracking

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the job has its own progress
        mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
        try:
            local = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(cache / "download")))
        except Exception as exc:  # MLflow raises several untyped errors for unknown names/aliases
            raise ScoringError(f"{model}: cannot fetch the model from MLflow ({exc})") from exc
        onnx_files = sorted(local.rglob("*.onnx"))
        if not onnx_files or not (local / "extra_files" / "spec.json").is_file():
            raise ScoringError(f"{model}: not an exported recsys-moe model (ONNX file or FeatureSpec missing)")
        spec_dir = restore_spec_dir(local / "extra_files", cache / "feature_spec")
        return onnx_files[0], spec_dir, model
    path = Path(model)
    if not path.is_file():
        raise ScoringError(f"{path}: ONNX model not found")
    spec_dir = path.parent / "feature_spec"
    if not (spec_dir / "spec.json").is_file():
        raise ScoringError(f"{path}: no feature_spec/ beside the model; export it with `recsys-moe export`")
    return path, spec_dir, str(path)


def fingerprint(files: list[Path], onnx_path: Path, spec_hash: str, batch_rows: int, feature_files: list[Path]) -> str:
    """What a finished part depends on: the input files, the model's bytes (a label such as
    ``models:/name@champion`` or a file path stays the same when the model behind it changes), the
    spec, the files features are read from (users, items, history state) and the batching."""
    # "read_batches" names the batching scheme: a part file is only reused by the same one
    h = hashlib.sha256(f"{spec_hash}|{batch_rows}|read_batches".encode())
    with open(onnx_path, "rb") as model:
        h.update(hashlib.file_digest(model, "sha256").digest())
    for f in [*files, *feature_files]:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def read_batches(files: list[Path], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The input's rows in order, ``batch_rows`` at a time (a batch never spans two files).

    One file is open at a time and nothing is read ahead, so memory follows ``--batch-rows``, not
    the input's file sizes. (``pyarrow.dataset`` would do the same but imports pandas: 0.25 s.)
    """
    for f in files:
        with pq.ParquetFile(f) as parquet:
            yield from parquet.iter_batches(batch_size=batch_rows, use_threads=False)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    with replacing(path) as tmp:
        write(tmp)


def _null_count(parquet: pq.ParquetFile, column: str) -> int:
    """Nulls in a top-level column, from the row groups' statistics when every one has them."""
    meta = parquet.metadata
    counts = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = next((group.column(j).statistics for j in range(group.num_columns) if group.column(j).path_in_schema == column), None)
        if stats is None or not stats.has_null_count:
            return parquet.read(columns=[column]).column(column).null_count
        counts.append(stats.null_count)
    return sum(counts)


def _check_input(files: list[Path], spec: FeatureSpec, raw: RawTables) -> None:
    for f in files:
        with pq.ParquetFile(f) as parquet:
            missing = [c for c in KEY_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise ScoringError(f"{f}: column(s) {missing} missing (scoring input needs {list(KEY_COLUMNS)})")
            for c in KEY_COLUMNS:
                nulls = _null_count(parquet, c)
                if nulls:
                    raise ScoringError(f"{f}: column {c!r} has {nulls:,} null value(s); every row to score needs {list(KEY_COLUMNS)}")
    candidates = RawTables(impressions=pl.scan_parquet(files[0]), users=raw.users, items=raw.items, source="scoring input")
    check_join_columns(candidates)
    try:
        check_sources(spec.features, candidates)
    except ValueError as exc:
        raise ScoringError(f"{files[0]}: {exc}") from exc


def score(
    cfg: Config, model: str, input_path: str | Path, output: str | Path, state_dir: str | Path | None = None,
    batch_rows: int = 100_000, providers: str = "auto", overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every input row once; see the module docstring for the output and resume rules."""
    start = time.perf_counter()
    output = Path(output)
    files = input_files(input_path)
    with tempfile.TemporaryDirectory() as cache_name:
        onnx_path, spec_dir, label = resolve_model(cfg, model, Path(cache_name))
        spec = FeatureSpec.load(spec_dir)
        session = make_session(onnx_path, providers, spin=False)  # (spin: when ORT runs intra-op threads)
        meta = session.metadata()
        if meta.get("spec_hash") != spec.content_hash:
            raise ScoringError(
                f"{onnx_path}: the model was exported with FeatureSpec {meta.get('spec_hash')}, but its spec is "
                f"{spec.content_hash}; re-export the model with `recsys-moe export`"
            )
        summary = ScoreSummary(output, provider=session.provider, model_version=label)
        default_state = cfg.experiment.work_dir / "features" / "data" / "state"
        state_path = Path(state_dir) if state_dir else default_state
        saved_state = (state_path / "state.json").is_file()
        # the saved history loads on a thread while the user and item tables are read (both mostly
        # release the GIL: Parquet and CSV decoding)
        with ThreadPoolExecutor(1, thread_name_prefix="state") as loader:
            loading = loader.submit(HistoryState.load, state_path) if saved_state else None
            # Only users and items are joined; the training log itself is not read (nor validated).
            raw = load_raw(cfg.data, validate=False)
            validate_users(raw.users, raw.files.get("users", "users"))
            validate_items(raw.items, raw.files.get("items", "items"))
            _check_input(files, spec, raw)
            raw = joined_columns_only(raw, spec.features)
            state = loading.result() if loading is not None else None
        if state is not None:
            summary.state_source = str(state_path)
        else:
            if state_dir:
                raise ScoringError(f"{state_path}: no history state here (state.json missing)")
            hist = spec.features.history
            state = initial_state(raw, hist.max_len, hist.long_watch_s)
            summary.state_source = "prior history only"
            summary.notes.append(f"no state at {default_state}: history features start from the source's prior history")
        feature_files = [Path(raw.files[t]) for t in ("users", "items") if t in raw.files]
        feature_files += sorted(state_path.iterdir()) if saved_state else [Path(raw.files[t]) for t in ("history",) if t in raw.files]
        fp = fingerprint(files, onnx_path, spec.content_hash, batch_rows, feature_files)
        manifest_path = output / "MANIFEST.json"
        manifest = {"fingerprint": fp, "model": label, "spec_hash": spec.content_hash, "batch_rows": batch_rows,
                    "inputs": [str(f) for f in files], "parts": {}, "complete": False}
        if manifest_path.is_file():
            old = json.loads(manifest_path.read_text())
            if old.get("fingerprint") == fp:
                manifest = old
            elif overwrite:
                shutil.rmtree(output)
            else:
                raise ScoringError(f"{output} holds scores of another input, model or history state; pass --overwrite or another --output")
        elif output.exists() and any(output.iterdir()):
            if not overwrite:
                raise ScoringError(f"{output} exists and is not a scoring output; pass --overwrite or another --output")
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)

        task_outputs = session.output_names

        def prepare(batch: pa.RecordBatch) -> tuple[pl.DataFrame, dict]:
            """Output keys and model inputs of one batch (runs on the prefetch thread)."""
            rows = pl.from_arrow(pa.Table.from_batches([batch]))
            if state.last_ts_ms is not None:
                ms = pl.col("timestamp").dt.cast_time_unit("ms").cast(pl.Int64)
                summary.rows_before_state += rows.select((ms < state.last_ts_ms).sum()).item()
            return rows.select([c for c in ("impression_id", *KEY_COLUMNS) if c in rows.columns]), candidates.result().inputs(rows)

        def unfinished() -> Iterator[tuple[str, pa.RecordBatch, bool]]:
            """(part name, slice of its rows, whether the slice is the part's last) for every part
            not already finished."""
            for i, batch in enumerate(read_batches(files, batch_rows)):
                name = f"part-{i:05d}.parquet"
                if name in manifest["parts"] and (output / name).is_file():
                    summary.skipped_parts += 1
                    summary.rows += manifest["parts"][name]
                    if on_rows:
                        on_rows(manifest["parts"][name])
                    continue
                for start in range(0, batch.num_rows, SLICE_ROWS):
                    yield name, batch.slice(start, SLICE_ROWS), start + SLICE_ROWS >= batch.num_rows

        # The next slice's features are computed on a second thread while ONNX Runtime scores this
        # one (polars, numpy and ONNX Runtime release the GIL), so the two stages overlap. Slices
        # are smaller than parts so that the first model run starts early (the stage before it
        # runs alone); a part is written once all its slices are scored.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="features") as pool:
            # user and item features are mapped once, first thing on the feature thread, while
            # this thread reads the first input batch
            candidates = pool.submit(CandidateInputs, spec, raw, state)
            work = unfinished()
            nxt = next(work, None)
            pending = pool.submit(prepare, nxt[1]) if nxt else None
            part_keys: list[pl.DataFrame] = []
            part_preds: list[list[np.ndarray]] = []
            while nxt is not None and pending is not None:
                name, _, last = nxt
                keys, feeds = pending.result()
                nxt = next(work, None)
                pending = pool.submit(prepare, nxt[1]) if nxt else None
                part_keys.append(keys)
                part_preds.append(session.run(feeds))
                if not last:
                    continue
                out = pl.concat(part_keys).with_columns(
                    *[pl.Series(n, np.concatenate([p[j] for p in part_preds])) for j, n in enumerate(task_outputs)],
                    pl.lit(label).alias("model_version"),
                )
                part_keys, part_preds = [], []
                _write_atomic(output / name, lambda tmp, out=out: write_parquet(out, tmp))
                manifest["parts"][name] = out.height
                _write_atomic(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
                summary.parts += 1
                summary.rows += out.height
                if on_rows:
                    on_rows(out.height)
        if summary.rows == 0:
            raise ScoringError(f"{input_path}: the input has no rows")
        if summary.rows_before_state:
            end = dt.datetime.fromtimestamp(state.last_ts_ms / 1000, dt.UTC).isoformat(timespec="seconds")
            summary.notes.append(
                f"{summary.rows_before_state:,} scored rows are earlier than the history state's last event ({end}): "
                "their history features and counters include later events, possibly their own outcomes, so do not "
                "measure these scores against the rows' labels (`recsys-moe evaluate` does that point in time)"
            )
        manifest["complete"] = True
        manifest["rows"] = summary.rows
        _write_atomic(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
    summary.seconds = time.perf_counter() - start
    return summary
