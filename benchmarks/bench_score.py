"""End-to-end batch scoring throughput: `recsys-moe score` on raw synthetic impressions.

Per synthetic size (and on the KuaiRand log, written to Parquet in the raw shape): generate the feed, fit the FeatureSpec and transform the log (for the history state),
export the default MMoE (random weights: throughput does not depend on them) with its parity
check, then time `recsys-moe score` over every raw impression in fresh processes (feature
enrichment, ONNX Runtime, Parquet IO and process start included). Median of --repeats runs;
writes benchmarks/results/score.json.

    python benchmarks/bench_score.py [--sizes 1000000 10000000] [--repeats 3] [--no-kuairand]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, run_cli, write_results  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--no-kuairand", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/score.json")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.config import load_config
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.models import build_model

    def bench(name: str, config: str, sets: list[str], work: Path, impressions: Path, rows: int) -> dict:
        flags = [x for s in sets for x in ("--set", s)]
        run_cli("features", "fit", "-c", config, *flags)
        run_cli("features", "transform", "-c", config, *flags)
        cfg = load_config(ROOT / config, sets)
        spec = FeatureSpec.load(work / "features/spec")
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.tasks, spec).eval()
        export_onnx(model, spec, work / "export/model.onnx", pq.read_table(work / "features/data/test").slice(0, 5000))
        spec.save(work / "export/feature_spec")
        runs = []
        for _ in range(args.repeats):
            run = run_cli("score", "-c", config, *flags, "--model", str(work / "export/model.onnx"),
                          "--input", str(impressions), "--output", str(work / "scores"),
                          "--overwrite", "--batch-rows", str(args.batch_rows))
            shutil.rmtree(work / "scores")  # else the next run would skip every finished part
            runs.append({"seconds": run.seconds, "rows_per_s": rows / run.seconds, "peak_rss_mib": run.peak_rss_mib})
        res = {"dataset": name, "rows": rows,
               "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
               "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs), "runs": runs}
        print(f"{name:>16}: {res['rows_per_s_median']:,.0f} rows/s, peak RSS {res['peak_rss_mib_median']:,.0f} MiB", flush=True)
        return res

    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rows in args.sizes:
            work = tmp / f"n{rows}"
            sets = [f"data.synthetic.num_impressions={rows}", f"data.raw_dir={work / 'raw'}", f"experiment.work_dir={work}"]
            run_cli("data", "synth", "-c", "configs/synthetic.yaml", *[x for s in sets for x in ("--set", s)])
            results.append(bench(f"synthetic-{rows / 1e6:g}M", "configs/synthetic.yaml", sets, work, work / "raw/impressions", rows))
        if not args.no_kuairand and KUAIRAND.is_dir():
            from recsys_moe.data.raw import load_raw

            work = tmp / "kuairand"
            sets = [f"data.kuairand.path={KUAIRAND}", f"experiment.work_dir={work}"]
            impressions = load_raw(load_config(ROOT / "configs/kuairand.yaml", sets).data).impressions.collect()
            work.mkdir(parents=True)
            impressions.write_parquet(work / "impressions.parquet")  # the raw log in the scoring input's shape
            results.append(bench("kuairand", "configs/kuairand.yaml", sets, work, work / "impressions.parquet", impressions.height))
    if len(results) >= 2 and results[1]["dataset"].startswith("synthetic"):
        ratio = results[1]["peak_rss_mib_median"] / results[0]["peak_rss_mib_median"]
        print(f"peak RSS ratio {results[1]['dataset']} / {results[0]['dataset']}: {ratio:.2f}")
    write_results(args.out, {"benchmark": "score_end_to_end", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "batch_rows": args.batch_rows, "target_rows_per_s": 100_000, "results": results})


if __name__ == "__main__":
    main()
