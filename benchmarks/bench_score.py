"""End-to-end batch scoring throughput: `recsys-moe score` on raw synthetic impressions.

Per size: generate the feed, fit the FeatureSpec and transform the log (for the history state),
export the default MMoE (random weights: throughput does not depend on them) with its parity
check, then time `recsys-moe score` over every raw impression in fresh processes (feature
enrichment, ONNX Runtime, Parquet IO and process start included). Median of --repeats runs;
writes benchmarks/results/score.json.

    python benchmarks/bench_score.py [--sizes 1000000 10000000] [--repeats 3]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/score.json")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.config import load_config
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.models import build_model

    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rows in args.sizes:
            work = tmp / f"n{rows}"
            sets = [f"data.synthetic.num_impressions={rows}", f"data.raw_dir={work / 'raw'}", f"experiment.work_dir={work}"]
            flags = [x for s in sets for x in ("--set", s)]
            run_cli("data", "synth", "-c", "configs/synthetic.yaml", *flags)
            run_cli("features", "fit", "-c", "configs/synthetic.yaml", *flags)
            run_cli("features", "transform", "-c", "configs/synthetic.yaml", *flags)
            cfg = load_config(ROOT / "configs/synthetic.yaml", sets)
            spec = FeatureSpec.load(work / "features/spec")
            torch.manual_seed(0)
            model = build_model(cfg.model, cfg.tasks, spec).eval()
            export_onnx(model, spec, work / "export/model.onnx", pq.read_table(work / "features/data/test").slice(0, 5000))
            spec.save(work / "export/feature_spec")
            runs = []
            for _ in range(args.repeats):
                secs, rss = run_cli("score", "-c", "configs/synthetic.yaml", *flags, "--model", str(work / "export/model.onnx"),
                                    "--input", str(work / "raw/impressions"), "--output", str(work / "scores"),
                                    "--overwrite", "--batch-rows", str(args.batch_rows))
                shutil.rmtree(work / "scores")  # else the next run would skip every finished part
                runs.append({"seconds": secs, "rows_per_s": rows / secs, "peak_rss_mib": rss})
            res = {"dataset": f"synthetic-{rows / 1e6:g}M", "rows": rows,
                   "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
                   "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs), "runs": runs}
            results.append(res)
            print(f"{res['dataset']:>16}: {res['rows_per_s_median']:,.0f} rows/s, peak RSS {res['peak_rss_mib_median']:,.0f} MiB", flush=True)
    write_results(args.out, {"benchmark": "score_end_to_end", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "batch_rows": args.batch_rows, "target_rows_per_s": 100_000, "results": results})


if __name__ == "__main__":
    main()
