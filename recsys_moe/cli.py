"""The one `recsys-moe` command. Each stage is a subcommand; run `recsys-moe --help`."""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from recsys_moe.config import Config, ConfigError, load_config
from recsys_moe.layout import WorkDir

app = typer.Typer(
    help="Multi-task (CTR + watch time) MMoE ranking: data, features, training, evaluation, export, scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Raw data: generate the synthetic feed, validate a source.", no_args_is_help=True)
app.add_typer(data_app, name="data")
features_app = typer.Typer(help="Feature pipeline: fit a FeatureSpec, transform raw logs to model-ready Parquet.", no_args_is_help=True)
app.add_typer(features_app, name="features")
pipeline_app = typer.Typer(help="The scheduled pipeline: features -> train -> export -> evaluate -> score -> promote.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, repeatable: --set data.synthetic.num_impressions=100000"),
]


QUIET_LOGGERS = {
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,  # Lightning's device banner and tips
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "torch.fx._symbolic_trace": logging.ERROR,  # a deprecation note torch.export prints about itself
    "torch.onnx._internal.exporter._registration": logging.ERROR,  # "torchvision is not installed" (not needed)
}
"""Third-party info logs held back unless --verbose (each command reports its own progress).
These exact loggers, because the libraries reset their top-level loggers' levels on import."""
KNOWN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # torch pytree deprecation, raised inside Lightning and torch.export
    r".*The axis name.*will not be used.*",  # torch.onnx: two inputs share the one dynamic batch axis, as meant
    r".*is smaller than the logging interval.*",  # Lightning, on a split with fewer batches than log_every_n_steps
    # Lightning under DDP: validation metrics come from every rank's gathered predictions, so they
    # are already the same on every rank (training/distributed.py)
    r".*when logging on epoch level in distributed setting.*",
    r".*`broadcast_buffers` is deprecated.*",  # torchrec's DMP wraps the dense layers in DDP with it
)
_verbose = False


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show third-party libraries' info logs and known warnings.")] = False) -> None:
    """Multi-task (CTR + watch time) MMoE ranking: data, features, training, evaluation, export, scoring."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's database set-up lines
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def fail(message: str, code: int = 2) -> None:
    """Print a one-paragraph error (no traceback) and exit."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None) -> Config:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


def progress_bar() -> Progress:
    """A rich progress bar with rows done, rate and time left."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


@app.command("info")
def info(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Versions of the stack, ONNX Runtime execution providers and CUDA devices."""
    rows: dict[str, object] = {"recsys-moe": _version("recsys-moe"), "python": sys.version.split()[0]}
    for dist in ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "lightning", "polars", "pyarrow",
                 "mlflow", "onnx", "onnxruntime-gpu", "onnxruntime"):
        rows[dist] = _version(dist)
    try:
        import onnxruntime as ort

        rows["onnxruntime providers (built in)"] = ort.get_available_providers()
    except ImportError:
        rows["onnxruntime providers (built in)"] = []
    try:
        import torch

        rows["cuda available"] = torch.cuda.is_available()
        rows["cuda devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        rows["cuda available"] = False
        rows["cuda devices"] = []
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="recsys-moe environment", show_header=False)
    for key, value in rows.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    Console().print(table)


app.command("version", help="Alias of `info`.")(info)


@data_app.command("synth")
def data_synth(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory (default: data.raw_dir).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
) -> None:
    """Generate the synthetic feed (impressions, users, items, oracle) with known ground truth."""
    from recsys_moe.data.synthetic import generate

    cfg = _load(config, overrides)
    syn = cfg.data.synthetic
    out = output or cfg.data.raw_dir
    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    import time

    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("synthesising impressions", total=syn.num_impressions, rate="")

        def on_rows(n: int) -> None:
            done = bar.tasks[task].completed + n
            bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - start):,.0f} rows/s")

        try:
            summary = generate(syn, cfg.experiment.seed, out, overwrite=overwrite, on_rows=on_rows)
        except OSError as exc:  # a full disk, ...: generate leaves the old output as it was
            fail(str(exc))
            raise
    secs = time.perf_counter() - start
    console.print(
        f"wrote {summary.impressions:,} impressions ({summary.parts} parts), {summary.users:,} users, "
        f"{summary.items:,} items to {out} in {secs:.1f}s "
        f"({summary.impressions / secs:,.0f} rows/s); click rate {summary.click_rate:.3f}, "
        f"zero watch share {summary.watch_zero_share:.3f}",
        highlight=False,
    )


@data_app.command("validate")
def data_validate(config: ConfigOpt = Path("configs/synthetic.yaml"), overrides: SetOpt = None) -> None:
    """Read the configured source, check every raw table and print a summary."""
    import polars as pl

    from recsys_moe.data.raw import load_raw
    from recsys_moe.data.schema import RawDataError

    cfg = _load(config, overrides)
    try:
        raw = load_raw(cfg.data)
    except (RawDataError, OSError) as exc:
        fail(str(exc))
        raise
    stats = raw.impressions.select(
        rows=pl.len(), users=pl.col("user_id").n_unique(), items=pl.col("item_id").n_unique(),
        click_rate=pl.col("click").mean(), zero_watch=(pl.col("watch_time_s") == 0).mean(),
        first=pl.col("timestamp").min(), last=pl.col("timestamp").max(),
    ).collect().row(0, named=True)
    table = Table(title=f"{raw.source} raw tables: valid")
    table.add_column("what")
    table.add_column("value")
    for key, value in stats.items():
        table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value))
    table.add_row("users table rows", f"{raw.users.height:,}")
    table.add_row("items table rows", f"{raw.items.height:,}")
    table.add_row("prior history", "yes" if raw.history is not None else "no")
    Console().print(table)


def _features_paths(cfg: Config) -> tuple[Path, Path]:
    layout = WorkDir.of(cfg)
    return layout.spec_dir, layout.features_dir


def _day_progress(bar: Progress, total: int, label: str):
    import time

    task = bar.add_task(label, total=total, rate="")
    start = time.perf_counter()
    rows = [0]
    seen: set[str] = set()

    def on_day(day: str, n: int) -> None:  # called once per chunk; a day may have several
        rows[0] += n
        advance = 0 if day in seen else 1
        seen.add(day)
        bar.update(task, advance=advance, description=f"{label} {day}", rate=f"{rows[0] / (time.perf_counter() - start):,.0f} rows/s")

    return on_day


@features_app.command("fit")
def features_fit(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Spec directory (default: <work_dir>/features/spec).")] = None,
) -> None:
    """Learn vocabularies and numeric statistics from the train window; save the FeatureSpec."""
    from recsys_moe.data.raw import load_raw
    from recsys_moe.data.schema import RawDataError
    from recsys_moe.features import FeatureError, fit
    from recsys_moe.features.enrich import days_in_log

    cfg = _load(config, overrides)
    out = output or _features_paths(cfg)[0]
    try:
        raw = load_raw(cfg.data)
        n_days = sum(1 for d in days_in_log(raw) if d <= cfg.split.train.end)
        with progress_bar() as bar:
            spec = fit(raw, cfg, on_day=_day_progress(bar, n_days, "fitting"))
        spec.save(out)
    except (RawDataError, FeatureError, OSError) as exc:
        fail(str(exc))
        raise
    table = Table(title=f"FeatureSpec {spec.content_hash} -> {out}")
    for col in ("table", "vocabulary", "hash buckets", "dim"):
        table.add_column(col)
    for t in spec.tables.values():
        table.add_row(t.name, f"{len(t.vocab):,}", str(t.hash_buckets), str(t.dim))
    Console().print(table)
    console.print(f"fitted on {spec.rows_fitted:,} train rows ({spec.train_window[0]}..{spec.train_window[1]})")


@features_app.command("transform")
def features_transform(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    spec_dir: Annotated[Path | None, typer.Option("--spec", help="FeatureSpec directory (default: <work_dir>/features/spec).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output directory or s3:// (gs://, abfs://) prefix (default: <work_dir>/features/data).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
    engine: Annotated[str | None, typer.Option("--engine", help="local (one process) or ray (tasks per user and item partition, then per day; transform.*); default: transform.engine.")] = None,
) -> None:
    """Write model-ready Parquet for the train/validation/test windows; print rows and OOV/null rates.

    The same output with either engine: --engine ray spreads the replay over a Ray cluster
    (transform.ray.address) or a Ray instance started on this machine."""
    from recsys_moe.data.raw import load_raw
    from recsys_moe.data.schema import RawDataError
    from recsys_moe.features import FeatureError, FeatureSpec, SpecError, transform
    from recsys_moe.features.enrich import days_in_log

    cfg = _load(config, overrides)
    default_spec, default_out = _features_paths(cfg)
    out = output or default_out
    try:
        spec = FeatureSpec.load(spec_dir or default_spec)
        spec.check_matches(cfg.features, where=f"config {config}")
        raw = load_raw(cfg.data, unique_ids=False)  # ids are checked day by day: memory stays flat
        last = cfg.split.test.end
        n_days = sum(1 for d in days_in_log(raw) if d <= last)
        engine = engine or cfg.transform.engine
        if engine not in ("local", "ray"):
            fail(f"--engine {engine!r}: local or ray")
        with progress_bar() as bar:
            if engine == "ray":
                from recsys_moe.features.ray_transform import transform_on_ray

                t = cfg.transform
                summary = transform_on_ray(cfg, spec, out, t.partitions, t.ray.address, t.ray.num_cpus, overwrite=overwrite,
                                           chunk_rows=cfg.features.chunk_rows, on_day=_day_progress(bar, n_days, "transforming on Ray"))
            else:
                summary = transform(
                    raw, spec, cfg.split, out, on_day=_day_progress(bar, n_days, "transforming"), overwrite=overwrite,
                    chunk_rows=cfg.features.chunk_rows,
                )
    except (RawDataError, FeatureError, SpecError, OSError) as exc:  # OSError: a missing file, a full disk, ...
        fail(str(exc))
        raise
    table = Table(title=f"features -> {out}")
    for col in ("feature", "kind", "null rate", "OOV rate"):
        table.add_column(col)
    for row in summary.per_feature(spec):
        oov = row["oov_rate"]
        table.add_row(str(row["feature"]), str(row["kind"]), f"{row['null_rate']:.4f}", "-" if oov is None else f"{oov:.4f}")
    Console().print(table)
    rows_out = ", ".join(f"{k} {v:,}" for k, v in summary.rows_out.items())
    console.print(
        f"rows in {summary.rows_in:,}; rows out: {rows_out}; {summary.seconds:.1f}s "
        f"({summary.rows_in / max(summary.seconds, 1e-9):,.0f} rows/s)", highlight=False,
    )


@app.command("train")
def train_cmd(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    spec_dir: Annotated[Path | None, typer.Option("--spec", help="FeatureSpec directory (default: <work_dir>/features/spec).")] = None,
    data_dir: Annotated[str | None, typer.Option("--data", help="Model-ready Parquet, a folder or s3:// (gs://, abfs://) prefix (default: <work_dir>/features/data).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: <work_dir>/train/<model.kind>).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: delete the run folder's checkpoints instead of resuming.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show Lightning's progress bar.")] = True,
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Print torchrec's sharding plan for a cluster described by the options below, then stop (nothing is trained or allocated).")] = False,
    world_size: Annotated[int, typer.Option("--world-size", min=1, help="--plan-only: ranks (GPUs) in all.")] = 8,
    local_world_size: Annotated[int | None, typer.Option("--local-world-size", min=1, help="--plan-only: ranks per node (default: --world-size, up to 8).")] = None,
    compute_device: Annotated[str, typer.Option("--compute-device", help="--plan-only: cuda or cpu.")] = "cuda",
    device_memory_gb: Annotated[float | None, typer.Option("--device-memory-gb", min=0.001, help="--plan-only: memory per rank (default: training.sharding.device_memory_gb, else 80).")] = None,
    table: Annotated[list[str] | None, typer.Option("--table", help="--plan-only, repeatable: NAME=ROWS or NAME=ROWSxDIM instead of the FeatureSpec's size, e.g. item=50000000x64.")] = None,
    plan_json: Annotated[Path | None, typer.Option("--plan-json", help="--plan-only: also write the plan as JSON here.")] = None,
) -> None:
    """Train the configured model (MMoE by default) with Lightning and track it in MLflow.

    Running the same command again after an interruption resumes from the last checkpoint and
    continues the same MLflow run. The best weights land in <output>/model (state_dict + spec).
    Under `torchrun --nproc-per-node N` it trains with DDP over N processes (gloo on CPU); with
    training.sharding.mode auto or always, torchrec shards the embedding tables over them.
    """
    from recsys_moe.features import SpecError
    from recsys_moe.tracking import tracking_uri
    from recsys_moe.training.artifacts import ModelLoadError
    from recsys_moe.training.batches import DataError
    from recsys_moe.training.train import TrainError, train

    cfg = _load(config, overrides)
    if plan_only:
        _print_plan(cfg, spec_dir, world_size, local_world_size or min(world_size, 8), compute_device, device_memory_gb, table or [], plan_json)
        return
    try:
        result = train(cfg, spec_dir=spec_dir, data_dir=data_dir, output_dir=output, resume=not fresh, progress=progress)
    except (SpecError, DataError, TrainError, ModelLoadError, OSError) as exc:
        fail(str(exc))
        raise
    if result.rank != 0:  # rank 0 reports for the whole run
        return
    table = Table(title=f"{cfg.model.kind} on {cfg.experiment.name}: best checkpoint {Path(result.best_checkpoint).name}")
    table.add_column("metric")
    table.add_column("validation")
    table.add_column("test")
    for key, value in result.validation.items():
        name = key.removeprefix("val/")
        if name.startswith("gate/"):
            continue
        test = result.test.get(f"test/{name}")
        table.add_row(name, f"{value:.4f}", "" if test is None else f"{test:.4f}")
    Console().print(table)
    rate = f"{sorted(result.samples_per_s)[len(result.samples_per_s) // 2]:,.0f}" if result.samples_per_s else "-"
    console.print(
        f"{result.epochs} epochs, {result.global_step:,} steps in {result.seconds:.1f}s (median {rate} samples/s per epoch, "
        f"data {result.data_mode})"
        f"{' (resumed)' if result.resumed else ''}\nmodel: {result.model_dir}\n"
        f"MLflow run: {result.run_id or 'tracking disabled'} (`mlflow ui --backend-store-uri {tracking_uri(cfg)}`)",
        highlight=False,
    )


def _print_plan(cfg: Config, spec_dir: Path | None, world_size: int, local_world_size: int, compute_device: str,
                memory_gb: float | None, tables: list[str], plan_json: Path | None) -> None:
    from torchrec.distributed.planner.types import PlannerError

    from recsys_moe.atomic import replacing
    from recsys_moe.features import SpecError
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.training.sharding.plan import parse_table_size, plan_for
    from recsys_moe.training.train import default_paths

    if compute_device not in ("cuda", "cpu"):
        fail(f"--compute-device {compute_device!r}: cuda or cpu")
    if world_size % local_world_size:
        fail(f"--world-size {world_size} is not a multiple of --local-world-size {local_world_size}")
    try:
        spec = FeatureSpec.load(spec_dir or default_paths(cfg)["spec"])
        sizes = {name: (rows, dim) for name, rows, dim in map(parse_table_size, tables)}
        gb = memory_gb or cfg.training.sharding.device_memory_gb or 80.0
        summary = plan_for(cfg.model, cfg.tasks, spec, cfg.training.sharding, world_size=world_size, local_world_size=local_world_size,
                           compute_device=compute_device, memory_bytes=int(gb * 1024**3), batch_size=cfg.training.batch_size,
                           embedding_optimizer=cfg.training.embedding_optimizer,
                           embedding_lr=cfg.training.embedding_learning_rate or cfg.training.learning_rate, sizes=sizes)
    except (SpecError, ValueError, OSError, PlannerError) as exc:
        fail(str(exc))
        raise
    print(summary.format())
    if plan_json is not None:
        with replacing(plan_json) as tmp:
            tmp.write_text(json.dumps(summary.to_json(), indent=2))


@app.command("tune")
def tune_cmd(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", min=0, help="Trials to run in this call (added to the study's earlier ones; 0: none, only --confirm and write).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Stop starting trials after this many seconds.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the best config (default: <work_dir>/tune/<study>/best.yaml).")] = None,
    confirm: Annotated[int, typer.Option("--confirm", min=0, help="Retrain the K best trials with tuning.confirm_seeds seeds in all and pick the best mean (validation only).")] = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the study and its trials and start over.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show Optuna's progress bar.")] = True,
) -> None:
    """Search the model, optimiser, dropout, embedding and gate settings with Optuna.

    Each trial trains on the train split and is scored on the validation split only
    (tuning.metric, default tasks.monitor); weak trials are pruned after each epoch. Trials are
    nested MLflow runs under one run for the study. The study is kept in
    <work_dir>/tune/<study>/optuna.db: run again to add trials. Writes the base config with the
    best trial's settings as a config file.
    """
    from recsys_moe.config import load_raw_config
    from recsys_moe.data.schema import RawDataError
    from recsys_moe.features import FeatureError, SpecError
    from recsys_moe.training.batches import DataError
    from recsys_moe.tuning import TuneError, tune

    cfg = _load(config, overrides)
    if not _verbose:  # one line per trial below; Optuna's own lines repeat every parameter
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def on_trial(t: dict) -> None:
        state = "pruned" if t["pruned"] else "done"
        console.print(f"trial {t['number']}: {t['kind']}, {t['epochs']} epochs, val {t['metric']} {t['value']:.5f} ({state})",
                      highlight=False)

    try:
        result = tune(cfg, load_raw_config(config, overrides), trials, timeout, output, fresh=fresh, progress=progress,
                      confirm=confirm, on_trial=on_trial,
                      on_confirm=lambda c: console.print(f"confirm trial {c['number']}, seed {c['seed']}: {c['value']:.5f}", highlight=False))
    except (TuneError, SpecError, FeatureError, DataError, RawDataError, OSError) as exc:
        fail(str(exc))
        raise
    table = Table(title=f"study {result.study_name}: best trials by validation {result.metric}")
    for col in ("trial", result.metric, "mean over seeds", "model", "epochs"):
        table.add_column(col)
    for row in result.leaderboard:
        mean = f"{row['mean']:.5f} ({len(row['seeds'])})" if len(row["seeds"]) > 1 else ""
        table.add_row(str(row["number"]) + (" *" if row["number"] == result.best_trial else ""), f"{row['value']:.5f}", mean,
                      str(row["kind"]), str(row["epochs"]))
    Console().print(table)
    counts = ", ".join(f"{n} {k.lower()}" for k, n in result.counts.items())
    console.print(f"trials so far: {counts}\nbest config: {result.config_path} (trial {result.best_trial})\n"
                  f"study: {result.study_dir / 'optuna.db'}"
                  + (f"; MLflow parent run {result.mlflow_run_id}" if result.mlflow_run_id else ""), highlight=False)


@app.command("export")
def export_cmd(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Trained model folder (default: <work_dir>/train/<model.kind>/model).")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="MLflow run id of a training run (its `model` artifact).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Export folder (default: <work_dir>/export/<model.kind>).")] = None,
    rows: Annotated[Path | None, typer.Option("--rows", help="Model-ready Parquet for the parity check (default: the test split).")] = None,
    parity_rows: Annotated[int | None, typer.Option("--parity-rows", min=1, help="Rows compared between torch and ONNX Runtime (default: export.parity_rows).")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Log to MLflow and register a model version.")] = True,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write model.fp16.onnx for GPU serving, parity-checked within 2e-3 (or export.fp16).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (row-wise INT8 tables) if it passes the quality gate (or export.int8).")] = False,
    prune_experts: Annotated[bool, typer.Option("--prune-experts", help="Leave out experts under export.prune_threshold of the gate weight for every task, if the quality gate passes (or export.prune_experts).")] = False,
) -> None:
    """Export a trained model to ONNX (twin without EmbeddingBag ops), check parity, register it.

    With --int8 or --prune-experts, the smaller model must pass a quality gate against the float32
    export on the validation split (export.max_auc_drop, export.max_spearman_drop); when it does
    not, the export says why and keeps the float32 model. cost.json records what each part costs.
    """
    from recsys_moe.export.bundle import export_bundle
    from recsys_moe.export.onnx_export import ExportError
    from recsys_moe.export.prune import PruneError
    from recsys_moe.registry import RegistryError
    from recsys_moe.training.artifacts import ModelLoadError

    cfg = _load(config, overrides)
    if model_dir and run_id:
        fail("pass --model-dir or --run, not both")
    try:
        with console.status("exporting to ONNX and checking parity"):
            result = export_bundle(cfg, model_dir=model_dir, run_id=run_id, output=output, rows=rows, parity_rows=parity_rows,
                                   register=register, fp16=fp16 or None, int8=int8 or None, prune_experts=prune_experts or None)
    except (ExportError, ModelLoadError, RegistryError, PruneError, OSError) as exc:
        fail(str(exc))
        raise
    console.print(result.parity.summary(), highlight=False)
    if result.fp16_parity is not None:
        console.print(f"fp16 ({result.fp16_path}): {result.fp16_parity.summary()}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    total = {p: b["total"] for p, b in result.cost["bytes"].items()}
    console.print("serving cost: " + ", ".join(f"{p} {n / 2**20:,.1f} MiB" for p, n in total.items())
                  + f"; {result.cost['flops_per_row']['total']:,} FLOPs per row (cost.json)", highlight=False)
    console.print(f"ONNX model: {result.onnx_path}" + (f" (INT8 copy: {result.int8_path})" if result.int8_path else "")
                  + f"\nFeatureSpec: {result.spec_dir}", highlight=False)
    if result.registered_version:
        console.print(f"registered {result.registered_name} version {result.registered_version} (run {result.run_id})", highlight=False)


@app.command("evaluate")
def evaluate_cmd(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A model folder, a .ckpt in a training run folder, an exported model.onnx, or models:/<name>@<alias>.")] = "",
    compare: Annotated[list[str] | None, typer.Option("--compare", help="Another model to compare on the same rows (repeatable): deltas and bootstrap CIs.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="train, validation or test (default: evaluation.split).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report folder (default: <work_dir>/evaluate/<split>).")] = None,
    data_dir: Annotated[str | None, typer.Option("--data", help="Model-ready Parquet, a folder or s3:// (gs://, abfs://) prefix (default: <work_dir>/features/data).")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log metrics and reports to an MLflow run.")] = True,
    providers: Annotated[str, typer.Option("--providers", help="ONNX Runtime providers: auto, tensorrt, cuda or cpu.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="For a models:/ URI: fp32, fp16 or int8 (the version's copy of that precision).")] = "fp32",
) -> None:
    """Evaluate a model on a time-held-out split: metrics JSON, Markdown + HTML report, quality gates.

    Exits 1 when a quality gate from the config's evaluation.gates fails (the failed gates are
    listed), 2 on bad input.
    """
    from recsys_moe.data.schema import RawDataError
    from recsys_moe.evaluation.predict import PredictError
    from recsys_moe.features import SpecError
    from recsys_moe.metrics.functions import MetricError
    from recsys_moe.pipelines.evaluation import EvaluationError, run
    from recsys_moe.serving.session import ModelFileError

    if not model:
        fail("--model is required (see `recsys-moe evaluate --help`)")
    if split is not None and split not in ("train", "validation", "test"):
        fail(f"--split {split!r}: choose train, validation or test")
    cfg = _load(config, overrides)
    try:
        with console.status("evaluating") as status:
            result = run(cfg, model, compare or [], split=split, output=output, data_dir=data_dir, track=track,
                         providers=providers, precision=precision, on_step=lambda msg: status.update(f"evaluating: {msg}"))
    except (EvaluationError, MetricError, PredictError, ModelFileError, SpecError, RawDataError, OSError) as exc:
        fail(str(exc))
        raise
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    table = Table(title=f"{result.metrics['model']} on {result.metrics['split']} ({result.metrics['primary']['rows']:,} rows)")
    table.add_column("metric")
    table.add_column("value")
    for key, value in result.headline.items():
        if not key.endswith(("_users", "_pairs")):
            table.add_row(key, f"{value:.4f}")
    Console().print(table)
    for comp in result.metrics["comparisons"]:
        for key, ci in comp["ci"].items():
            console.print(f"vs {comp['model']}: {key} delta {ci['delta']:+.4f}, {ci['level']:.0%} CI [{ci['low']:+.4f}, {ci['high']:+.4f}]", highlight=False)
    console.print(f"report: {result.output / 'report.html'} (and report.md, metrics.json, predictions.parquet)"
                  + (f"; MLflow run {result.run_id}" if result.run_id else ""), highlight=False)
    if result.failed_gates:
        for line in result.failed_gates:
            console.print(f"[bold red]quality gate failed:[/] {line}", highlight=False)
        raise typer.Exit(1)


@app.command("score")
def score_cmd(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="models:/<name>@<alias>, models:/<name>/<version>, or an exported model.onnx (feature_spec/ beside it).")] = "",
    input_path: Annotated[str, typer.Option("--input", "-i", help="Raw impressions to score: a Parquet file, a directory or a glob, local or s3:// (gs://, abfs://).")] = "",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder or s3:// (gs://, abfs://) prefix for part files and MANIFEST.json (default: <work_dir>/scores).")] = None,
    state_dir: Annotated[str | None, typer.Option("--state", help="History state (a folder or object-store prefix) to read point-in-time features from (default: the newest state a transform or pipeline run saved under <work_dir> for the model's FeatureSpec).")] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per record batch and per output part.")] = 100_000,
    providers: Annotated[str, typer.Option("--providers", help="auto (TensorRT, CUDA, CPU by availability), tensorrt, cuda or cpu.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="For a models:/ URI: fp32, fp16 or int8 (the version's copy of that precision).")] = "fp32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an output folder that holds other scores.")] = False,
    engine: Annotated[str | None, typer.Option("--engine", help="local (this process) or ray (Ray Data actors; scoring.ray.*); default: scoring.engine.")] = None,
) -> None:
    """Score raw impressions with an exported model on ONNX Runtime; resumable, atomic parts.

    Features are computed by the training transform's own code with the model's FeatureSpec;
    history features come from a saved state (the log up to the end of a transform), found under
    the work dir when --state is not given. Re-running after a crash skips the parts already written.
    """
    import time

    from recsys_moe.data.schema import RawDataError
    from recsys_moe.features import SpecError
    from recsys_moe.pipelines.batch_scoring import run
    from recsys_moe.serving.scoring import ScoringError
    from recsys_moe.serving.session import ModelFileError

    if not model or not input_path:
        fail("--model and --input are required (see `recsys-moe score --help`)")
    cfg = _load(config, overrides)
    try:
        start = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task("scoring", total=None, rate="")

            def on_rows(n: int) -> None:
                done = bar.tasks[task].completed + n
                bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - start):,.0f} rows/s")

            summary = run(cfg, model, input_path, output, state_dir=state_dir, batch_rows=batch_rows, providers=providers,
                          precision=precision, overwrite=overwrite, on_start=lambda total: bar.update(task, total=total), on_rows=on_rows,
                          engine=engine)
    except (ScoringError, SpecError, RawDataError, ModelFileError, OSError) as exc:
        fail(str(exc))
        raise
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"scored {summary.rows:,} rows into {summary.output} ({summary.parts} new parts, {summary.skipped_parts} already done) "
        f"in {summary.seconds:.1f}s ({summary.rows / max(summary.seconds, 1e-9):,.0f} rows/s) on {summary.provider}; "
        f"model {summary.model_version}; history from {summary.state_source}", highlight=False,
    )


@pipeline_app.command("run")
def pipeline_run(
    config: ConfigOpt = Path("configs/synthetic.yaml"),
    overrides: SetOpt = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD: the test window ends on this day (default: split.test.end).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo finished steps instead of skipping them.")] = False,
    step: Annotated[str | None, typer.Option("--step", help="Run only this step (its predecessors must be done): features_fit, features_transform, train, export, evaluate, score, promote.")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show the training progress bar (default: when stderr is a terminal).")] = None,
) -> None:
    """Run (or resume) the whole pipeline for one as-of date and promote the new model to
    champion when it passes the quality gates and beats the current champion.

    Exit status: 0 done (promoted or not), 1 a step failed (named; champion untouched),
    2 bad input, 3 another run of this pipeline is in progress (nothing done).
    """
    import datetime as dt
    import logging

    from recsys_moe.pipelines.run_state import PipelineBusy
    from recsys_moe.pipelines.training_pipeline import STEPS, PipelineError, run_pipeline
    from recsys_moe.tracking import tracking_uri

    if step is not None and step not in STEPS:
        fail(f"--step {step!r}: choose one of {', '.join(STEPS)}")
    cfg = _load(config, overrides)
    try:
        day = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        fail(f"--as-of {as_of!r}: expected YYYY-MM-DD")
        raise
    logging.getLogger("pipelines").setLevel(logging.INFO)
    try:
        result = run_pipeline(cfg, day, force=force, only=step, progress=sys.stderr.isatty() if progress is None else progress,
                              say=lambda msg: console.print(f"[bold]pipeline[/] {msg}", highlight=False))
    except PipelineBusy as exc:
        fail(str(exc), code=3)
        raise
    except PipelineError as exc:
        fail(f"{exc}\n(champion alias unchanged; fix the cause and run the same command again to resume; "
             f"step logs: {WorkDir.of(cfg).pipeline_root}/*/steps.json)", code=1)
        raise
    console.print(f"run {result.key}: ran {result.ran or 'nothing (all steps already done)'}"
                  + (f", skipped finished {result.skipped}" if result.skipped and result.ran else ""), highlight=False, soft_wrap=True)
    if "promote" in result.steps and result.steps["promote"].get("status") == "done":
        promoted = result.output("promote", "promoted")
        console.print(
            f"model version {result.output('export', 'version')}: {'PROMOTED to champion' if promoted else 'kept as challenger'} "
            f"({result.output('promote', 'reason')}); champion is version {result.output('promote', 'champion')}\n"
            f"report:  {result.output('evaluate', 'report')}\n"
            f"scores:  {result.output('score', 'output', 'none')} ({result.output('score', 'rows', 0):,} rows, model version "
            f"{result.output('score', 'version')})\n"
            f"MLflow:  {tracking_uri(cfg)} (pipeline run {result.mlflow_run_id}); browse it with "
            f"`mlflow ui --backend-store-uri {tracking_uri(cfg)}`\n"
            f"steps:   {result.run_dir / 'steps.json'}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
