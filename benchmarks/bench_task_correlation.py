"""The MMoE paper's synthetic study on this project's feed: SharedBottom, MMoE and PLE as the
correlation between the click and watch-time tasks varies.

Ma et al. (KDD 2018, sec. 3-4) generate two regression tasks whose correlation they control and
find that a shared-bottom model degrades as the tasks correlate less while MMoE holds up, so
the MoE's lead grows as correlation falls. Here the generator's
``data.synthetic.task_correlation`` sets the Pearson correlation of the two tasks' user-item
affinities (click and watch time) in a data-rich world (2,000 users and items, 600,000
impressions: about 200 train impressions per user), for each value in ``--correlations``;
every model trains with each seed on the same rows and is scored on the held-out test days,
beside the oracle (the generator's true probabilities and expected seconds). Writes
benchmarks/results/task_correlation.json.

    python benchmarks/bench_task_correlation.py [--correlations -0.5 0 0.5 0.9] [--seeds 1 2] [--impressions 600000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

MODELS = ("shared_bottom", "mmoe", "ple")
METRICS = ("ctr/auc", "watch_time/spearman")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--correlations", type=float, nargs="+", default=[-0.5, 0.0, 0.5, 0.9])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--impressions", type=int, default=600_000)
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override, repeatable.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/task_correlation.json")
    args = ap.parse_args()
    import polars as pl

    from recsys_moe.config import load_config
    from recsys_moe.data.raw import read_synthetic
    from recsys_moe.data.synthetic import generate
    from recsys_moe.features import fit, transform
    from recsys_moe.metrics.functions import auc, spearman
    from recsys_moe.training.train import train

    world = ["data.synthetic.num_users=2000", "data.synthetic.num_items=2000", f"data.synthetic.num_impressions={args.impressions}",
             f"training.max_epochs={args.max_epochs}", "tracking.enabled=false"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        for rho in args.correlations:
            work = tmp / f"rho{rho}"
            cfg = load_config(ROOT / "configs/synthetic.yaml", [*world, f"data.synthetic.task_correlation={rho}",
                                                                f"data.raw_dir={work / 'raw'}", f"experiment.work_dir={work}",
                                                                *args.overrides])
            generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
            raw = read_synthetic(cfg.data.raw_dir)
            spec = fit(raw, cfg)
            spec.save(work / "features/spec")
            transform(raw, spec, cfg.split, work / "features/data")
            test = pl.read_parquet(work / "features/data/test/*.parquet", columns=["impression_id", "click", "watch_time_s"])
            truth = test.join(raw.oracle.collect(), on="impression_id", how="left", maintain_order="left")
            oracle = {"ctr/auc": auc(truth["true_ctr"].to_numpy(), truth["click"].to_numpy()),
                      "watch_time/spearman": spearman(np.log1p(truth["true_watch_time_s"].to_numpy()),
                                                      np.log1p(truth["watch_time_s"].to_numpy()))}
            affinity = float(np.corrcoef(truth["click_affinity"].to_numpy(), truth["watch_affinity"].to_numpy())[0, 1])
            row: dict[str, object] = {"task_correlation": rho, "measured_affinity_correlation": affinity,
                                      "train_rows": spec.rows_fitted, "oracle": oracle, "models": {}}
            print(f"rho {rho:+.1f}: affinity correlation {affinity:+.3f}; oracle CTR AUC {oracle['ctr/auc']:.4f}, "
                  f"watch Spearman {oracle['watch_time/spearman']:.4f}", flush=True)
            for kind in args.models:
                runs = []
                for seed in args.seeds:
                    run_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"kind": kind}),
                                                     "experiment": cfg.experiment.model_copy(update={"seed": seed})})
                    r = train(run_cfg, output_dir=work / f"{kind}-{seed}", resume=False, progress=False)
                    runs.append({m: r.test[f"test/{m}"] for m in METRICS} | {"epochs": r.epochs})
                    print(f"  {kind:<13} seed {seed}: CTR AUC {runs[-1]['ctr/auc']:.4f}  watch Spearman "
                          f"{runs[-1]['watch_time/spearman']:.4f}  ({r.epochs} epochs)", flush=True)
                row["models"][kind] = {"mean": {m: statistics.mean(x[m] for x in runs) for m in METRICS},
                                       "std": {m: statistics.pstdev(x[m] for x in runs) for m in METRICS}, "runs": runs}
            rows.append(row)
    print(f"\nmean of seeds {args.seeds}; test CTR AUC / watch-time Spearman")
    print("| task correlation | oracle | " + " | ".join(args.models) + " |")
    for row in rows:
        cells = [f"{row['models'][k]['mean']['ctr/auc']:.4f} / {row['models'][k]['mean']['watch_time/spearman']:.4f}" for k in args.models]
        print(f"| {row['task_correlation']:+.1f} | {row['oracle']['ctr/auc']:.4f} / {row['oracle']['watch_time/spearman']:.4f} | "
              + " | ".join(cells) + " |")
    write_results(args.out, {"benchmark": "task_correlation", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "world": world, "seeds": args.seeds, "overrides": args.overrides, "results": rows})


if __name__ == "__main__":
    main()
