"""Feature transform throughput and peak memory, through the real CLI.

For each dataset: generate (synthetic) or read (KuaiRand) the raw tables, fit the spec once, then
run `recsys-moe features transform` in fresh processes. Rows/s counts every impression replayed
(rows in) over the whole command's wall time, Parquet IO included; peak RSS is the process's
maximum resident set; CPU seconds are the command's user + system time over all its threads.

Then the encoder floor: about ``--floor-rows`` rows of the largest synthetic output (parts spread
over all its days) are read back and written again, timed alone, exactly as the transform writes
its parts (Polars, the same codec), one part per core at a time. That is the best rows/s the transform could reach on this
machine if reading, replaying and mapping cost nothing. Prints a table and writes
benchmarks/results/features.json.

With ``--engines local ray`` (the default when Ray is installed) each synthetic size is also
transformed with ``--engine ray`` (``transform.partitions`` 2, a Ray instance the command starts
here): rows/s, and the peak RSS and CPU seconds of the driver and every Ray process together. On
two cores this measures Ray's overhead, not its scale.

    python benchmarks/bench_features.py [--sizes 1000000 10000000] [--repeats 3] [--no-kuairand] [--engines local ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import has_ray, machine, run_cli, run_cli_tree, write_results  # noqa: E402

from recsys_moe.features.transform import PARQUET_COMPRESSION  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"


def bench(name: str, config: str, sets: list[str], rows: int, repeats: int, tmp: Path, engines: tuple[str, ...] = ("local",)) -> dict:
    spec = tmp / f"{name}-spec"
    common = ["-c", config, *[x for s in sets for x in ("--set", s)]]
    run_cli("features", "fit", *common, "-o", str(spec))
    res: dict = {"dataset": name, "rows": rows}
    for engine in engines:
        runs = []
        for _ in range(repeats):
            cmd = ["features", "transform", *common, "--spec", str(spec), "-o", str(tmp / f"{name}-{engine}-out"), "--overwrite",
                   "--engine", engine]
            run = run_cli(*cmd) if engine == "local" else run_cli_tree(*cmd, "--set", "transform.partitions=2")
            runs.append({"seconds": run.seconds, "rows_per_s": rows / run.seconds, "peak_rss_mib": run.peak_rss_mib,
                         "cpu_s_per_m_rows": run.cpu_s / rows * 1e6})
        block = {
            "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs),
            "cpu_s_per_m_rows_median": statistics.median(r["cpu_s_per_m_rows"] for r in runs),
            "runs": runs,
        }
        if engine == "local":
            res |= block
        else:
            res[engine] = block
        print(f"{name:>16} {engine:>5} {rows:>12,} rows  {block['rows_per_s_median']:>10,.0f} rows/s  peak RSS "
              f"{block['peak_rss_mib_median']:,.0f} MiB  {block['cpu_s_per_m_rows_median']:.2f} CPU-s per 1M rows", flush=True)
    return res


def encoder_floor(out_dir: Path, max_rows: int, repeats: int, tmp: Path) -> dict:
    """Rows/s and CPU seconds per 1M rows of writing ``out_dir``'s parts again, and nothing else."""
    parts = sorted(out_dir.glob("*/part-*.parquet"))
    # parts spread over the whole log: early days have shorter histories, so cheaper rows
    rows_per_part = pl.scan_parquet(parts[0]).select(pl.len()).collect().item()
    stride = max(1, len(parts) * rows_per_part // max_rows)
    frames = [pl.read_parquet(p) for p in parts[::stride][: -(-max_rows // rows_per_part)]]
    rows, workers = sum(f.height for f in frames), os.cpu_count() or 1
    dest = tmp / "floor"

    def write(i: int) -> None:
        frames[i].write_parquet(dest / f"part-{i:05d}.parquet", compression=PARQUET_COMPRESSION)

    runs = []
    for _ in range(repeats):
        dest.mkdir()
        cpu, start = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(write, range(len(frames))))
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs.append({"seconds": secs, "rows_per_s": rows / secs, "cpu_s_per_m_rows": cpu / rows * 1e6})
        shutil.rmtree(dest)
    res = {
        "output_of": out_dir.name.removesuffix("-out"), "rows": rows, "parts": len(frames), "writers": workers,
        "compression": PARQUET_COMPRESSION,
        "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
        "cpu_s_per_m_rows_median": statistics.median(r["cpu_s_per_m_rows"] for r in runs),
        "runs": runs,
    }
    print(f"encoder floor ({res['output_of']} output, {rows:,} rows, {workers} parts at a time): "
          f"{res['rows_per_s_median']:,.0f} rows/s  {res['cpu_s_per_m_rows_median']:.2f} CPU-s per 1M rows", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-kuairand", action="store_true")
    ap.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"] if has_ray() else ["local"])
    ap.add_argument("--floor-rows", type=int, default=2_000_000, help="rows of output the encoder floor rewrites")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/features.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rows in args.sizes:
            raw = tmp / f"raw-{rows}"
            sets = [f"data.synthetic.num_impressions={rows}", f"data.raw_dir={raw}"]
            run_cli("data", "synth", "-c", "configs/synthetic.yaml", *[x for s in sets for x in ("--set", s)])
            results.append(bench(f"synthetic-{rows / 1e6:g}M", "configs/synthetic.yaml", sets, rows, args.repeats, tmp, tuple(args.engines)))
        largest = results[-1]["dataset"] if results else None
        floor = encoder_floor(tmp / f"{largest}-local-out", args.floor_rows, args.repeats, tmp) if largest else None
        if not args.no_kuairand and KUAIRAND.is_dir():
            results.append(bench("kuairand", "configs/kuairand.yaml", [f"data.kuairand.path={KUAIRAND}"], 171_671, args.repeats, tmp))
    payload = {"benchmark": "features_transform", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "repeats": args.repeats, "results": results, "encoder_floor": floor}
    if len(results) >= 2 and results[0]["dataset"].startswith("synthetic") and results[1]["dataset"].startswith("synthetic"):
        payload["rss_ratio_10m_over_1m"] = results[1]["peak_rss_mib_median"] / results[0]["peak_rss_mib_median"]
        print(f"peak RSS ratio {results[1]['dataset']} / {results[0]['dataset']}: {payload['rss_ratio_10m_over_1m']:.2f}")
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
