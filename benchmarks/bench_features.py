"""Feature transform throughput and peak memory, through the real CLI.

For each dataset: generate (synthetic) or read (KuaiRand) the raw tables, fit the spec once, then
run `recsys-moe features transform` in fresh processes. Rows/s counts every impression replayed
(rows in) over the whole command's wall time, Parquet IO included; peak RSS is the process's
maximum resident set. Prints a table and writes benchmarks/results/features.json.

    python benchmarks/bench_features.py [--sizes 1000000 10000000] [--repeats 3] [--no-kuairand]
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

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"


def bench(name: str, config: str, sets: list[str], rows: int, repeats: int, tmp: Path) -> dict:
    spec = tmp / f"{name}-spec"
    common = ["-c", config, *[x for s in sets for x in ("--set", s)]]
    run_cli("features", "fit", *common, "-o", str(spec))
    runs = []
    for _ in range(repeats):
        secs, rss = run_cli("features", "transform", *common, "--spec", str(spec), "-o", str(tmp / f"{name}-out"), "--overwrite")
        runs.append({"seconds": secs, "rows_per_s": rows / secs, "peak_rss_mib": rss})
    res = {
        "dataset": name, "rows": rows,
        "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
        "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }
    print(f"{name:>16} {rows:>12,} rows  {res['rows_per_s_median']:>10,.0f} rows/s  peak RSS {res['peak_rss_mib_median']:,.0f} MiB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-kuairand", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/features.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rows in args.sizes:
            raw = tmp / f"raw-{rows}"
            sets = [f"data.synthetic.num_impressions={rows}", f"data.raw_dir={raw}"]
            run_cli("data", "synth", "-c", "configs/synthetic.yaml", *[x for s in sets for x in ("--set", s)])
            results.append(bench(f"synthetic-{rows / 1e6:g}M", "configs/synthetic.yaml", sets, rows, args.repeats, tmp))
        if not args.no_kuairand and KUAIRAND.is_dir():
            results.append(bench("kuairand", "configs/kuairand.yaml", [f"data.kuairand.path={KUAIRAND}"], 171_671, args.repeats, tmp))
    payload = {"benchmark": "features_transform", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "repeats": args.repeats, "results": results}
    if len(results) >= 2 and results[0]["dataset"].startswith("synthetic") and results[1]["dataset"].startswith("synthetic"):
        payload["rss_ratio_10m_over_1m"] = results[1]["peak_rss_mib_median"] / results[0]["peak_rss_mib_median"]
        print(f"peak RSS ratio {results[1]['dataset']} / {results[0]['dataset']}: {payload['rss_ratio_10m_over_1m']:.2f}")
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
