"""Synthetic generator throughput and peak memory, through the real CLI.

Each run is a fresh `recsys-moe data synth` process; peak RSS is that process's maximum resident
set (from wait4). Prints a table and writes benchmarks/results/synth.json.

    python benchmarks/bench_synth.py [--sizes 1000000 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, run_cli, write_results  # noqa: E402


def run_once(rows: int, out_dir: Path) -> tuple[float, float]:
    """One `data synth` run: (rows/s, peak RSS MiB)."""
    run = run_cli("data", "synth", "-c", "configs/synthetic.yaml", "-o", str(out_dir), "--overwrite",
                  "--set", f"data.synthetic.num_impressions={rows}")
    return rows / run.seconds, run.peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/synth.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            runs = [run_once(rows, Path(tmp) / "raw") for _ in range(args.repeats)]
            res = {
                "rows": rows,
                "rows_per_s_median": statistics.median(r for r, _ in runs),
                "peak_rss_mib_median": statistics.median(m for _, m in runs),
                "runs": [{"rows_per_s": r, "peak_rss_mib": m} for r, m in runs],
            }
            results.append(res)
            print(f"{rows:>12,} rows  {res['rows_per_s_median']:>12,.0f} rows/s  peak RSS {res['peak_rss_mib_median']:,.0f} MiB")
    payload = {"benchmark": "synth", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "results": results}
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
