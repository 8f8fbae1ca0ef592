"""Training as the data grows: the in-memory and the streaming loader, on 1M and 10M synthetic
impressions, through the real CLI.

For each size the synthetic feed is generated, fitted and transformed once, with users and items
grown in step with the impressions (20,000 users and 10,000 items per million, the config's own
ratio): with the population fixed, ten times the impressions would also mean ten times the history
per user, so wider rows (longer history lists), which is another axis than the number of rows.
The decoded bytes per row are recorded beside each size. Then `recsys-moe
train` (configs/synthetic.yaml, one epoch, tracking off) runs in fresh processes: at the first
size with ``training.data_mode`` memory and stream alternately (``--repeats`` each), at the larger
sizes streaming only. Reported per run: the training rate (samples/s of the epoch, as the trainer
logs it: batches built, forward, backward, optimiser step), the whole command's wall time and
its peak RSS (ru_maxrss: training, calibration and the evaluation of the validation and test
days). Apart: the streaming loader alone over the first size's train split (whole batches with
KJTs, no model), in this process. Writes benchmarks/results/train_scale.json.

    python benchmarks/bench_train_scale.py [--sizes 1000000 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, run_cli, write_results  # noqa: E402

CONFIG = "configs/synthetic.yaml"
RATE = re.compile(r"median ([\d,]+) samples/s per epoch, data (\w+)")


def train_run(sets: list[str], mode: str, out: Path) -> dict:
    run = run_cli("train", "-c", CONFIG, *[x for s in sets for x in ("--set", s)], "--set", f"training.data_mode={mode}",
                  "--set", "training.max_epochs=1", "--set", "tracking.enabled=false", "--no-progress", "-o", str(out), "--fresh")
    found = RATE.search(run.stderr)
    if not found:
        raise SystemExit(f"no training rate in the output:\n{run.stderr[-2000:]}")
    return {"mode": found.group(2), "samples_per_s": float(found.group(1).replace(",", "")), "seconds": run.seconds,
            "peak_rss_mib": run.peak_rss_mib}


def loader_rate(data: Path, spec_dir: Path, batch_size: int, buffer_rows: int, passes: int = 3) -> dict:
    """Rows/s of the streaming loader alone: every batch of the train split, no model."""
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.training.streaming import StreamingLoader

    spec = FeatureSpec.load(spec_dir)
    rates = []
    for epoch in range(passes):
        loader = StreamingLoader(data, spec, batch_size, shuffle=True, seed=1, epoch_fn=lambda e=epoch: e, buffer_rows=buffer_rows)
        start, rows = time.perf_counter(), 0
        for batch in loader:
            rows += len(batch)
        rates.append(rows / (time.perf_counter() - start))
    return {"rows_per_s_median": statistics.median(rates), "rows_per_s": rates, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_scale.json")
    args = ap.parse_args()
    from recsys_moe.config import load_config

    base = load_config(ROOT / CONFIG)
    sizes = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, rows in enumerate(args.sizes):
            work = tmp / f"work-{rows}"
            per_million = rows / 1_000_000
            sets = [f"data.synthetic.num_impressions={rows}", f"data.raw_dir={tmp / f'raw-{rows}'}", f"experiment.work_dir={work}",
                    f"data.synthetic.num_users={round(base.data.synthetic.num_users * per_million)}",
                    f"data.synthetic.num_items={round(base.data.synthetic.num_items * per_million)}"]
            flags = [x for s in sets for x in ("--set", s)]
            run_cli("data", "synth", "-c", CONFIG, *flags)
            run_cli("features", "fit", "-c", CONFIG, *flags)
            run_cli("features", "transform", "-c", CONFIG, *flags)
            modes = ["memory", "stream"] if i == 0 else ["stream"]
            runs = [train_run(sets, mode, tmp / f"train-{rows}") for _ in range(args.repeats if i == 0 else 1) for mode in modes]
            from recsys_moe.training.streaming import uncompressed_bytes

            train_dir = work / "features/data/train"
            train_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in train_dir.glob("*.parquet"))
            entry = {"rows": rows, "num_users": round(base.data.synthetic.num_users * per_million),
                     "num_items": round(base.data.synthetic.num_items * per_million),
                     "train_bytes_per_row": uncompressed_bytes(train_dir) / train_rows, "runs": runs}
            for mode in modes:
                mine = [r for r in runs if r["mode"] == mode]
                entry[mode] = {"samples_per_s_median": statistics.median(r["samples_per_s"] for r in mine),
                               "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in mine),
                               "seconds_median": statistics.median(r["seconds"] for r in mine)}
                print(f"{rows:>12,} impressions  {mode:>6}: {entry[mode]['samples_per_s_median']:>9,.0f} samples/s  "
                      f"peak RSS {entry[mode]['peak_rss_mib_median']:,.0f} MiB  {entry[mode]['seconds_median']:.0f} s", flush=True)
            if i == 0:
                entry["loader_alone"] = loader_rate(work / "features/data/train", work / "features/spec", base.training.batch_size,
                                                    base.training.shuffle_buffer_rows)
                print(f"streaming loader alone: {entry['loader_alone']['rows_per_s_median']:,.0f} rows/s", flush=True)
            sizes.append(entry)
    first, last = sizes[0], sizes[-1]
    checks = {
        "stream_over_memory_samples_per_s": first["stream"]["samples_per_s_median"] / first["memory"]["samples_per_s_median"],
        "loader_over_trainer": first["loader_alone"]["rows_per_s_median"] / first["stream"]["samples_per_s_median"],
        "stream_rss_largest_over_first": last["stream"]["peak_rss_mib_median"] / first["stream"]["peak_rss_mib_median"],
    }
    for k, v in checks.items():
        print(f"{k}: {v:.2f}")
    write_results(args.out, {"benchmark": "train_scale", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "config": CONFIG, "repeats": args.repeats, "sizes": sizes, "checks": checks})


if __name__ == "__main__":
    main()
