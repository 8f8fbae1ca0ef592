"""Offline evaluation speed: `recsys-moe evaluate` on 1M test rows against scoring them twice.

A synthetic feed of 1.4M impressions is split so that the test window (10 of 14 days) holds
about 1M rows. The default MMoE with random weights (speed does not depend on them) is saved as
a model folder and exported to ONNX. In fresh processes, --repeats times each (median):

* `recsys-moe evaluate` of the ONNX export and of the torch model folder on the test split
  (every metric: GAUC, XAUC, NDCG, calibration, segments, the oracle's metrics; no MLflow);
* `recsys-moe score` of the same test-window raw impressions with the ONNX export.

Target (issue 5): evaluating takes less time than scoring twice. Writes
benchmarks/results/evaluate.json.

    python benchmarks/bench_evaluate.py [--impressions 1400000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, run_cli, write_results  # noqa: E402

SPLIT = ["split.train.start=2024-01-01", "split.train.end=2024-01-03", "split.validation.start=2024-01-04",
         "split.validation.end=2024-01-04", "split.test.start=2024-01-05", "split.test.end=2024-01-14"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impressions", type=int, default=1_400_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process ONNX evaluation instead.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/evaluate.json")
    ap.add_argument("--work", type=Path, help="Keep the data here (default: a temporary folder).")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.config import load_config
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.models import build_model
    from recsys_moe.training.artifacts import save_model

    with tempfile.TemporaryDirectory() as tmp_name:
        work = args.work or Path(tmp_name)
        sets = [f"data.synthetic.num_impressions={args.impressions}", f"data.raw_dir={work / 'raw'}",
                f"experiment.work_dir={work}", *SPLIT]
        flags = [x for s in sets for x in ("--set", s)]
        if not (work / "features/data/MANIFEST.json").is_file():
            for step in (("data", "synth"), ("features", "fit"), ("features", "transform")):
                run_cli(*step, "-c", "configs/synthetic.yaml", *flags)
        cfg = load_config(ROOT / "configs/synthetic.yaml", sets)
        spec = FeatureSpec.load(work / "features/spec")
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.tasks, spec).eval()
        save_model(work / "model", model, cfg.model, cfg.tasks, spec)
        export_onnx(model, spec, work / "export/model.onnx", pq.read_table(work / "features/data/validation").slice(0, 5000))
        spec.save(work / "export/feature_spec")
        test_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in (work / "features/data/test").glob("*.parquet"))
        # the same impressions in raw shape for the scoring job: hard links to the test days' files
        raw_test = work / "raw_test"
        shutil.rmtree(raw_test, ignore_errors=True)
        for day_dir in sorted((work / "raw/impressions").iterdir()):
            if day_dir.name >= f"date={cfg.split.test.start}":
                (raw_test / day_dir.name).mkdir(parents=True)
                for f in day_dir.glob("*.parquet"):
                    os.link(f, raw_test / day_dir.name / f.name)

        if args.profile:
            import cProfile
            import pstats

            from recsys_moe.evaluation.evaluate import evaluate

            cProfile.runctx("evaluate(cfg, str(work / 'export/model.onnx'), output=work / 'eval_prof')",
                            globals(), {"evaluate": evaluate, "cfg": cfg, "work": work}, str(work / "eval.prof"))
            pstats.Stats(str(work / "eval.prof")).sort_stats("cumulative").print_stats(35)
            return
        timings: dict[str, list[float]] = {"evaluate_onnx": [], "evaluate_torch": [], "score_onnx": []}
        for _ in range(args.repeats):
            for name, model_arg in (("evaluate_onnx", work / "export/model.onnx"), ("evaluate_torch", work / "model")):
                secs = run_cli("evaluate", "-c", "configs/synthetic.yaml", *flags, "-m", str(model_arg),
                             "-o", str(work / f"eval_{name}"), "--no-track").seconds
                timings[name].append(secs)
            secs = run_cli("score", "-c", "configs/synthetic.yaml", *flags, "--model", str(work / "export/model.onnx"),
                         "--input", str(raw_test), "--output", str(work / "scores"), "--overwrite").seconds
            shutil.rmtree(work / "scores")
            timings["score_onnx"].append(secs)
    med = {k: statistics.median(v) for k, v in timings.items()}
    for k, v in med.items():
        print(f"{k:>15}: {v:6.1f}s median ({test_rows / v:,.0f} rows/s) runs {[round(x, 1) for x in timings[k]]}", flush=True)
    for k in ("evaluate_onnx", "evaluate_torch"):
        print(f"{k} / (2 x score) = {med[k] / (2 * med['score_onnx']):.2f} (target < 1)")
    write_results(args.out, {
        "benchmark": "evaluate", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": test_rows,
        "repeats": args.repeats, "seconds": timings, "median_seconds": med,
        "ratio_to_two_scorings": {k: med[k] / (2 * med["score_onnx"]) for k in ("evaluate_onnx", "evaluate_torch")},
    })


if __name__ == "__main__":
    main()
