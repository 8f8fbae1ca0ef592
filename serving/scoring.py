"""Batch scoring: raw candidate rows -> features (the transform's own mapping code, with user and
item features mapped once per job: :mod:`recsys_moe.serving.candidates`) -> ONNX Runtime ->
Parquet parts. Imports no torch.

Output folder (a :class:`~recsys_moe.resumable_parts.ResumableParts` folder)::

    part-00000.parquet ...   impression_id (when the input has it), user_id, item_id, timestamp,
                             one column per task prediction, score, model_version
    MANIFEST.json            fingerprint, model, rows per finished part, complete flag

Part ``i`` holds input batch ``i`` (``batch_rows`` rows, in input order). A rerun with the same
input, model bytes, history state and batch size skips the finished parts, so a killed job
resumes with one row per input row; a rerun with anything else changed is refused (or starts
over with ``overwrite``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_moe import contract, storage
from recsys_moe.config import Config
from recsys_moe.data.raw import load_raw
from recsys_moe.data.schema import validate_items, validate_users
from recsys_moe.data.tables import RawTables
from recsys_moe.features.enrich import check_join_columns, initial_state, joined_columns_only
from recsys_moe.features.fit import check_sources
from recsys_moe.features.pointintime import STATE_FILE, HistoryState
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.registry import ResolvedModel
from recsys_moe.resumable_parts import PartsError, ResumableParts, part_name
from recsys_moe.serving.candidates import CandidateInputs
from recsys_moe.serving.session import Session, make_session

SLICE_ROWS = 16_384
"""Rows prepared and scored at a time inside a part: ONNX Runtime starts after the first slice
rather than the first part, and memory holds two slices, not two parts."""
MODEL_VERSION = "model_version"


class ScoringError(ValueError):
    """The job cannot run (bad input, model/spec mismatch, ...); the message says what to fix."""


@dataclass
class ScoreSummary:
    output: storage.Location
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


def input_files(spec: storage.Location) -> list[storage.Location]:
    """A Parquet file, a folder (all ``*.parquet`` below it) or a glob, local or on an object
    store; sorted. Every file is opened once here, so a corrupt or truncated one is refused before
    anything is written."""
    try:
        files = storage.expand(spec, (".parquet",))
    except storage.StorageError as exc:
        raise ScoringError(str(exc)) from exc
    if not files:
        raise ScoringError(f"{spec}: no Parquet input found")
    for f in files:
        input_rows(f)
    return files


def _parquet(path: storage.Location) -> pq.ParquetFile:
    return pq.ParquetFile(storage.open_input(path))


def input_rows(path: storage.Location) -> int:
    """Rows of one input file from its footer; a clear error when it is not readable Parquet."""
    try:
        with _parquet(path) as parquet:
            return parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ScoringError(f"{path}: not a readable Parquet file ({exc}); is it truncated or another format?") from exc


def fingerprint(files: list[storage.Location], onnx_path: Path, spec_hash: str, batch_rows: int,
                feature_files: list[storage.Location], scheme: str = "read_batches") -> str:
    """What a finished part depends on: the input files, the model's bytes (a label such as
    ``models:/name@champion`` or a file path stays the same when the model behind it changes), the
    spec, the files features are read from (users, items, history state) and the batching
    (``scheme`` names how rows are cut into parts: a part file is only reused by the same one)."""
    h = hashlib.sha256(f"{spec_hash}|{batch_rows}|{scheme}".encode())
    with open(onnx_path, "rb") as model:
        h.update(hashlib.file_digest(model, "sha256").digest())
    for f in [*files, *feature_files]:
        size, mtime_ns = storage.stat(f)
        name = f if storage.is_remote(f) else Path(f).resolve()
        h.update(f"{name}|{size}|{mtime_ns}".encode())
    return h.hexdigest()[:16]


def read_batches(files: list[storage.Location], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The input's rows in order, ``batch_rows`` at a time (a batch never spans two files).

    One file is open at a time and nothing is read ahead, so memory follows ``batch_rows``, not
    the input's file sizes. (``pyarrow.dataset`` would do the same but imports pandas.)
    """
    for f in files:
        try:
            with _parquet(f) as parquet:
                yield from parquet.iter_batches(batch_size=batch_rows, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise ScoringError(f"{f}: cannot read it as Parquet ({exc})") from exc


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


def check_input(files: list[storage.Location], spec: FeatureSpec, raw: RawTables,
                to_raw: Callable[[pl.DataFrame, str], pl.DataFrame] | None = None,
                names: dict[str, str] | None = None) -> None:
    """Every file has the key columns with no nulls, and the columns the row features read.
    ``names`` maps raw columns to the input's own names and ``to_raw`` converts its rows (for
    ``data.source: files``)."""
    keys = [(names or {}).get(k, k) for k in contract.SCORING_KEY_COLUMNS]
    for f in files:
        try:
            with _parquet(f) as parquet:
                missing = [c for c in keys if c not in parquet.schema_arrow.names]
                if missing:
                    raise ScoringError(f"{f}: column(s) {missing} missing (scoring input needs {list(keys)})")
                for c in keys:
                    nulls = _null_count(parquet, c)
                    if nulls:
                        raise ScoringError(f"{f}: column {c!r} has {nulls:,} null value(s); every row to score needs {list(keys)}")
        except (pa.ArrowException, OSError) as exc:
            raise ScoringError(f"{f}: cannot read it as Parquet ({exc})") from exc
    head = pl.read_parquet(str(files[0]), n_rows=1)
    if to_raw is not None:
        head = to_raw(head, str(files[0]))
    candidates = RawTables(impressions=head.lazy(), users=raw.users, items=raw.items, source="scoring input")
    check_join_columns(candidates)
    try:
        check_sources(spec.features, candidates)
    except ValueError as exc:
        raise ScoringError(f"{files[0]}: {exc}") from exc


def _input_mapping(cfg: Config) -> tuple[Callable[[pl.DataFrame, str], pl.DataFrame] | None, dict[str, str] | None]:
    """With ``data.source: files``, candidates come in the impressions' own column names and
    units: (a converter to the raw shape, raw -> own names); else (None, None)."""
    if cfg.data.source != "files" or cfg.data.files is None:
        return None, None
    from recsys_moe.data.files import impressions_to_raw

    spec = cfg.data.files.impressions
    return (lambda rows, where: impressions_to_raw(rows, spec, where)), dict(spec.columns)


def check_model(session: Session, spec: FeatureSpec, cfg: Config, where: Path) -> None:
    """The model was exported with this spec, and its ``score`` uses the config's exponents."""
    meta = session.metadata()
    if meta.get("spec_hash") != spec.content_hash:
        raise ScoringError(
            f"{where}: the model was exported with FeatureSpec {meta.get('spec_hash')}, but its spec is "
            f"{spec.content_hash}; re-export the model with `recsys-moe export`"
        )
    try:
        contract.check_exponents(contract.parse_exponents(meta.get("score_exponents", ""), str(where)),
                                 cfg.evaluation.score_exponents, str(where))
    except contract.ContractError as exc:
        raise ScoringError(str(exc)) from exc


@dataclass
class ScoringJob:
    """What both engines share once the inputs are checked: the model, its spec, the candidates'
    converter, the users' and items' tables and the output folder (resumable parts)."""

    model: ResolvedModel
    files: list[storage.Location]
    spec: FeatureSpec
    session: Session
    to_raw: Callable[[pl.DataFrame, str], pl.DataFrame] | None
    raw: RawTables
    parts: ResumableParts
    summary: ScoreSummary
    started: float


def open_job(
    cfg: Config, model: ResolvedModel, files: list[storage.Location], output: storage.Location,
    state_dir: storage.Location | None, batch_rows: int, providers: str, overwrite: bool, state_origin: str | None,
    scheme: str, load_state: bool = True,
) -> tuple[ScoringJob, HistoryState | None]:
    """Check the model against its spec and the config, the inputs and the state, and open the
    output folder for the parts of ``scheme`` (how input rows are cut into parts: a part is only
    reused by the same scheme). Returns the job and, with ``load_state``, the history state."""
    start = time.perf_counter()
    output = storage.location(output)
    spec = FeatureSpec.load(model.spec_dir)
    session = make_session(model.onnx_path, providers, spin=False)  # (spin: when ORT runs intra-op threads)
    to_raw, names = _input_mapping(cfg)
    check_model(session, spec, cfg, model.onnx_path)
    summary = ScoreSummary(output, provider=session.provider, model_version=model.label)
    if state_dir is not None:
        state_dir = storage.location(state_dir)
        if not storage.is_file(storage.join(state_dir, STATE_FILE)):
            raise ScoringError(f"{state_dir}: no history state here ({STATE_FILE} missing)")
    # the saved history loads on a thread while the user and item tables are read (both mostly
    # release the GIL: Parquet and CSV decoding)
    with ThreadPoolExecutor(1, thread_name_prefix="state") as loader:
        loading = loader.submit(HistoryState.load, state_dir) if state_dir is not None and load_state else None
        # Only users and items are joined; the training log itself is not read (nor validated).
        raw = load_raw(cfg.data, validate=False)
        validate_users(raw.users, raw.files.get("users", "users"))
        validate_items(raw.items, raw.files.get("items", "items"))
        check_input(files, spec, raw, to_raw, names)
        raw = joined_columns_only(raw, spec.features)
        state = loading.result() if loading is not None else None
    if state_dir is not None:
        summary.state_source = f"{state_dir}" + (f" ({state_origin})" if state_origin else "")
    else:
        if load_state:
            hist = spec.features.history
            state = initial_state(raw, hist.max_len, hist.long_watch_s)
        summary.state_source = "the source's prior history only"
        summary.notes.append(
            f"no saved history state for FeatureSpec {spec.content_hash} (run `recsys-moe features transform` "
            "or the pipeline first, or pass --state): history features and counters start from the source's "
            "prior history"
        )
    feature_files = [f for t in ("users", "items") for f in raw.inputs.get(t, [])]
    feature_files += storage.files_below(state_dir) if state_dir is not None else raw.inputs.get("history", [])
    fp = fingerprint(files, model.onnx_path, spec.content_hash, batch_rows, feature_files, scheme)
    try:
        parts = ResumableParts(output, fp, {"model": model.label, "spec_hash": spec.content_hash, "batch_rows": batch_rows,
                                            "inputs": [str(f) for f in files]}, overwrite=overwrite)
    except PartsError as exc:
        raise ScoringError(str(exc)) from exc
    job = ScoringJob(model, files, spec, session, to_raw, raw, parts, summary, start)
    return job, state


def finish_job(job: ScoringJob, last_ts_ms: int | None) -> ScoreSummary:
    """Mark the output complete and add the notes a finished job reports."""
    summary = job.summary
    if summary.rows == 0:
        raise ScoringError(f"{', '.join(map(str, job.files[:3]))}: the input has no rows")
    if summary.rows_before_state and last_ts_ms is not None:
        end = dt.datetime.fromtimestamp(last_ts_ms / 1000, dt.UTC).isoformat(timespec="seconds")
        summary.notes.append(
            f"{summary.rows_before_state:,} scored rows are earlier than the history state's last event ({end}): "
            "their history features and counters include later events, possibly their own outcomes, so do not "
            "measure these scores against the rows' labels (`recsys-moe evaluate` does that point in time)"
        )
    job.parts.finish()
    summary.seconds = time.perf_counter() - job.started
    return summary


def rows_before(rows: pl.DataFrame, last_ts_ms: int | None) -> int:
    """Rows earlier than the history state's last event (their features saw later events)."""
    if last_ts_ms is None:
        return 0
    ms = pl.col(contract.TIMESTAMP).dt.cast_time_unit("ms").cast(pl.Int64)
    return rows.select((ms < last_ts_ms).sum()).item()


def output_keys(rows: pl.DataFrame) -> pl.DataFrame:
    """The columns a score row keeps from its input row."""
    return rows.select([c for c in (contract.IMPRESSION_ID, *contract.SCORING_KEY_COLUMNS) if c in rows.columns])


def scored_frame(keys: pl.DataFrame, predictions: list[np.ndarray], output_names: list[str], label: str) -> pl.DataFrame:
    """A part's rows: the input's keys, one column per model output, the model's label."""
    return keys.with_columns(*[pl.Series(n, p) for n, p in zip(output_names, predictions, strict=True)],
                             pl.lit(label).alias(MODEL_VERSION))


def score(
    cfg: Config, model: ResolvedModel, files: list[storage.Location], output: storage.Location,
    state_dir: storage.Location | None = None,
    batch_rows: int = 100_000, providers: str = "auto", overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None, state_origin: str | None = None,
) -> ScoreSummary:
    """Score every row of ``files`` once into ``output``; history features from ``state_dir``
    (a saved :class:`HistoryState`), or from the source's prior history when it is None. Input,
    output and state may be object-store URIs."""
    job, state = open_job(cfg, model, files, output, state_dir, batch_rows, providers, overwrite, state_origin, "read_batches")
    assert state is not None
    session, parts, summary, raw, spec, to_raw = job.session, job.parts, job.summary, job.raw, job.spec, job.to_raw
    task_outputs = session.output_names

    def prepare(batch: pa.RecordBatch) -> tuple[pl.DataFrame, dict]:
        """Output keys and model inputs of one batch (runs on the prefetch thread)."""
        rows = pl.from_arrow(pa.Table.from_batches([batch]))
        if to_raw is not None:
            rows = to_raw(rows, "scoring input")
        summary.rows_before_state += rows_before(rows, state.last_ts_ms)
        return output_keys(rows), candidates.result().inputs(rows)

    def unfinished() -> Iterator[tuple[str, pa.RecordBatch, bool]]:
        """(part name, slice of its rows, whether the slice is the part's last) for every part
        not already finished."""
        for i, batch in enumerate(read_batches(files, batch_rows)):
            name = part_name(i)
            done = parts.done(name)
            if done is not None:
                summary.skipped_parts += 1
                summary.rows += done
                if on_rows:
                    on_rows(done)
                continue
            for begin in range(0, batch.num_rows, SLICE_ROWS):
                yield name, batch.slice(begin, SLICE_ROWS), begin + SLICE_ROWS >= batch.num_rows

    # The next slice's features are computed on a second thread while ONNX Runtime scores this
    # one (polars, numpy and ONNX Runtime release the GIL), so the two stages overlap; a part is
    # written once all its slices are scored.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="features") as pool:
        # user and item features are mapped once, first thing on the feature thread, while this
        # thread reads the first input batch
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
            out = scored_frame(pl.concat(part_keys), [np.concatenate([p[j] for p in part_preds]) for j in range(len(task_outputs))],
                               task_outputs, model.label)
            part_keys, part_preds = [], []
            parts.write(name, out)
            summary.parts += 1
            summary.rows += out.height
            if on_rows:
                on_rows(out.height)
    return finish_job(job, state.last_ts_ms)
