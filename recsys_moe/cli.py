"""The one `recsys-moe` command. Each stage is a subcommand; run `recsys-moe --help`."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
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

app = typer.Typer(
    help="Multi-task (CTR + watch time) MMoE ranking: data, features, training, evaluation, export, scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Raw data: generate the synthetic feed, validate a source.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, repeatable: --set data.synthetic.num_impressions=100000"),
]


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

        summary = generate(syn, cfg.experiment.seed, out, overwrite=overwrite, on_rows=on_rows)
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
    except (RawDataError, FileNotFoundError) as exc:
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
