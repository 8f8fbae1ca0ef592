"""MMoE CTR AUC against the oracle (the generator's true probabilities) on synthetic feeds.

Three worlds from the same generator: ``demo`` is configs/synthetic.yaml as shipped (1M
impressions over 20,000 users and 10,000 items: about 36 train impressions per user),
``data-rich`` 2,000 users and items over 2M impressions (about 700 per user) and ``dense`` 1,000
users and items over 3M impressions (about 2,100 per user). The oracle knows every user's and
item's latent vector; a model must estimate them, so the ratio is bounded by how many impressions
each user has, not only by the model. The ratio model AUC / oracle AUC
is computed on the same held-out test days. Writes benchmarks/results/synthetic_quality.json.

    python benchmarks/bench_synthetic_quality.py [--worlds demo data-rich dense] [--max-epochs 10] [--set k=v]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

WORLDS = {
    "demo": [],
    "data-rich": ["data.synthetic.num_users=2000", "data.synthetic.num_items=2000", "data.synthetic.num_impressions=2000000"],
    "dense": ["data.synthetic.num_users=1000", "data.synthetic.num_items=1000", "data.synthetic.num_impressions=3000000"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", nargs="+", default=list(WORLDS))
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override, repeatable.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/synthetic_quality.json")
    args = ap.parse_args()
    from recsys_moe.config import load_config
    from recsys_moe.data.raw import read_synthetic
    from recsys_moe.data.synthetic import generate
    from recsys_moe.features import fit, transform
    from recsys_moe.metrics.functions import auc, spearman
    from recsys_moe.training.train import train

    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        for world in args.worlds:
            work = tmp / world
            cfg = load_config(ROOT / "configs/synthetic.yaml", [
                *WORLDS[world], f"data.raw_dir={work / 'raw'}", f"experiment.work_dir={work}",
                f"training.max_epochs={args.max_epochs}", *args.overrides,
            ])
            generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
            raw = read_synthetic(cfg.data.raw_dir)
            spec = fit(raw, cfg)
            spec.save(work / "features/spec")
            transform(raw, spec, cfg.split, work / "features/data")
            r = train(cfg, output_dir=work / "train", progress=False)
            test = pl.read_parquet(work / "features/data/test/*.parquet", columns=["impression_id", "click", "watch_time_s"])
            oracle = test.join(raw.oracle.collect(),
                               on="impression_id", how="left", maintain_order="left")
            oracle_auc = auc(oracle["true_ctr"].to_numpy(), oracle["click"].to_numpy())
            oracle_spearman = spearman(np.log1p(oracle["true_watch_time_s"].to_numpy()), np.log1p(oracle["watch_time_s"].to_numpy()))
            row = {
                "world": world, "overrides": WORLDS[world], "train_rows": spec.rows_fitted, "test_rows": test.height,
                "users": cfg.data.synthetic.num_users, "items": cfg.data.synthetic.num_items,
                "model_auc_ctr": r.test["test/ctr/auc"], "oracle_auc_ctr": oracle_auc,
                "auc_ratio": r.test["test/ctr/auc"] / oracle_auc,
                "model_spearman_watch_time": r.test["test/watch_time/spearman"], "oracle_spearman_watch_time": oracle_spearman,
                "ctr_ece": r.test["test/ctr/ece"], "watch_time_calibration": r.test["test/watch_time/calibration"],
                "epochs": r.epochs, "best_checkpoint": Path(r.best_checkpoint).name,
            }
            results.append(row)
            print(f"{world:>10}: model AUC {row['model_auc_ctr']:.4f}, oracle AUC {oracle_auc:.4f}, ratio {row['auc_ratio']:.3f} "
                  f"(target 0.97); watch Spearman {row['model_spearman_watch_time']:.4f} vs oracle {oracle_spearman:.4f}; CTR ECE "
                  f"{row['ctr_ece']:.4f}; mean predicted / observed seconds {row['watch_time_calibration']:.3f}", flush=True)
    write_results(args.out, {"benchmark": "synthetic_quality", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "target_auc_ratio": 0.97, "overrides": args.overrides, "results": results})


if __name__ == "__main__":
    main()
