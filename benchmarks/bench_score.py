"""End-to-end batch scoring throughput: `recsys-moe score` on raw synthetic impressions.

Per synthetic size (and on the KuaiRand log, written to Parquet in the raw shape): generate the feed, fit the FeatureSpec and transform the log (for the history state),
export the default MMoE (random weights: throughput does not depend on them) with its parity
check, then time `recsys-moe score` over every raw impression in fresh processes (feature
enrichment, ONNX Runtime, Parquet IO and process start included). Median of --repeats runs;
writes benchmarks/results/score.json.

With ``--engines local ray`` (the default when Ray is installed) the synthetic sizes are also
scored with ``--engine ray`` on a Ray instance the command starts on this machine (one
input-feature actor and one scoring actor, each on one CPU): rows/s, and the peak RSS and CPU
seconds of the driver and every Ray process together. On two cores this measures Ray's
overhead, not its scale; the CPU seconds per row give the paper estimate of the cores that score
1B rows a day within one hour.

    python benchmarks/bench_score.py [--sizes 1000000 10000000] [--repeats 3] [--no-kuairand] [--engines local ray]
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
from common import has_ray, machine, run_cli, run_cli_tree, write_results  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"
DAILY_ROWS, WITHIN_S = 1_000_000_000, 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--no-kuairand", action="store_true")
    ap.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"] if has_ray() else ["local"])
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
        res: dict = {"dataset": name, "rows": rows}
        for engine in args.engines if name.startswith("synthetic") else ["local"]:
            runs = []
            for _ in range(args.repeats):
                cmd = ["score", "-c", config, *flags, "--model", str(work / "export/model.onnx"), "--input", str(impressions),
                       "--output", str(work / "scores"), "--overwrite", "--batch-rows", str(args.batch_rows), "--engine", engine]
                run = run_cli(*cmd) if engine == "local" else run_cli_tree(*cmd)
                shutil.rmtree(work / "scores")  # else the next run would skip every finished part
                runs.append({"seconds": run.seconds, "rows_per_s": rows / run.seconds, "peak_rss_mib": run.peak_rss_mib,
                             "cpu_s": run.cpu_s})
            block = {"rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
                     "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs),
                     "rows_per_cpu_s_median": statistics.median(rows / r["cpu_s"] for r in runs), "runs": runs}
            block["cores_for_1b_rows_in_1h"] = DAILY_ROWS / WITHIN_S / block["rows_per_cpu_s_median"]
            if engine == "local":
                res |= block
            else:
                res["ray"] = block
            print(f"{name:>16} {engine:>5}: {block['rows_per_s_median']:,.0f} rows/s, peak RSS {block['peak_rss_mib_median']:,.0f} MiB, "
                  f"{block['rows_per_cpu_s_median']:,.0f} rows per CPU-second -> {block['cores_for_1b_rows_in_1h']:.1f} cores "
                  "for 1B rows in an hour", flush=True)
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
