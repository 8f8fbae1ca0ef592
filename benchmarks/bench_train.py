"""Training quality and throughput on KuaiRand: the default config against MMoE, PLE,
SharedBottom and SingleTask, 3 seeds each.

For each split (the issue's: train 04-25..05-01 / validate 05-02 / test 05-03..05-04, and the
peers' in ../shared/ARCHITECTURE.md: 04-25..04-30 / 05-01 / 05-02..05-04) the FeatureSpec is
fitted on that split's train window and the log transformed once; then every model trains with
each seed (early stopping on validation CTR AUC), is calibrated on the validation day and is
scored on the held-out test days. ``default`` is the config as written (configs/kuairand.yaml);
each other row is the same config with only ``model.kind`` changed (SingleTask drops
``model.task_tables``: it has every table per task already), so the baselines share the
default's optimiser and sizes.

Reported per model: CTR AUC, log-loss and ECE; watch-time RMSE (log1p s), Spearman and mean
predicted over mean observed seconds on the test days; experts the gate diagnostics call
collapsed on the test split. Throughput: training samples/s is the median over the runs of the
first model of ``--models`` (``default`` unless told otherwise) of the per-epoch rate after the
first epoch (steady state; batches built,
forward, backward, optimiser step; validation excluded). The loader's own rate (whole batches
with KJTs, no model) is measured apart. Writes benchmarks/results/train_kuairand.json and prints
the tables.

    python benchmarks/bench_train.py [--seeds 1 2 3] [--models default mmoe ple shared_bottom single_task]
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

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"
SPLITS = {
    "issue": ["split.train={start: 2022-04-25, end: 2022-05-01}", "split.validation={start: 2022-05-02, end: 2022-05-02}",
              "split.test={start: 2022-05-03, end: 2022-05-04}"],
    "peers": ["split.train={start: 2022-04-25, end: 2022-04-30}", "split.validation={start: 2022-05-01, end: 2022-05-01}",
              "split.test={start: 2022-05-02, end: 2022-05-04}"],
}
METRICS = ("ctr/auc", "ctr/logloss", "ctr/ece", "watch_time/rmse_log1p", "watch_time/spearman", "watch_time/calibration",
           "gate/collapsed_experts")
SHOWN = METRICS[:6]


def prepare(config: Path, split_sets: list[str], work: Path, overrides: list[str]):
    from recsys_moe.config import load_config
    from recsys_moe.data.raw import load_raw
    from recsys_moe.features import fit, transform

    cfg = load_config(config, [*split_sets, f"data.kuairand.path={KUAIRAND}", f"experiment.work_dir={work}", *overrides])
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    spec.save(work / "features/spec")
    transform(raw, spec, cfg.split, work / "features/data")
    return cfg, spec


def loader_rate(cfg, spec, repeats: int) -> float:
    from recsys_moe.training.batches import BatchLoader, ColumnarSplit

    split = ColumnarSplit.read(cfg.experiment.work_dir / "features/data/train", spec)
    rates = []
    for epoch in range(repeats):
        loader = BatchLoader(split, cfg.training.batch_size, shuffle=True, seed=1, epoch_fn=lambda e=epoch: e)
        start = time.perf_counter()
        rows = sum(len(b) for b in loader)
        rates.append(rows / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--config", type=Path, default=ROOT / "configs/kuairand.yaml")
    ap.add_argument("--models", nargs="+", default=["default", "mmoe", "ple", "shared_bottom", "single_task"],
                    help="default: the config as written; a kind: the config with model.kind set to it.")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override, repeatable.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_kuairand.json")
    args = ap.parse_args()
    if not KUAIRAND.is_dir():
        raise SystemExit(f"KuaiRand data not found at {KUAIRAND}")
    from recsys_moe.training.train import train

    results: dict[str, object] = {"benchmark": "train_kuairand", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                  "torch_threads": __import__("torch").get_num_threads(), "config": str(args.config),
                                  "overrides": args.overrides, "splits": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        for split_name in args.splits:
            base_cfg, spec = prepare(args.config, SPLITS[split_name], tmp / split_name, args.overrides)
            rows = {}
            steady: list[float] = []
            for kind in args.models:
                runs = []
                for seed in args.seeds:
                    model = base_cfg.model
                    if kind != "default":
                        model = model.model_copy(update={"kind": kind, "task_tables": [] if kind == "single_task" else model.task_tables})
                    cfg = base_cfg.model_copy(update={
                        "model": model, "experiment": base_cfg.experiment.model_copy(update={"seed": seed}),
                    })
                    r = train(cfg, output_dir=tmp / split_name / f"{kind}-{seed}", resume=False, progress=False)
                    run = {m: r.test.get(f"test/{m}", float("nan")) for m in METRICS} | {"kind": cfg.model.kind} | {
                        "epochs": r.epochs, "best_checkpoint": Path(r.best_checkpoint).name,
                        "samples_per_s_per_epoch": r.samples_per_s, "seconds": r.seconds,
                        # whole fit() loop: every epoch's rows over wall time, validation included
                        "whole_loop_samples_per_s": r.epochs * spec.rows_fitted / r.seconds,
                    }
                    runs.append(run)
                    if kind == args.models[0]:
                        steady += r.samples_per_s[1:]
                    print(f"[{split_name}] {kind:<13} seed {seed}: " + "  ".join(f"{m} {run[m]:.4f}" for m in SHOWN)
                          + f"  collapsed {run['gate/collapsed_experts']:.0f}", flush=True)
                rows[kind] = {  # NaN where a model has no such figure (no gates: no collapsed experts)
                    "mean": {m: float(np.mean([x[m] for x in runs])) for m in METRICS},
                    "std": {m: float(np.std([x[m] for x in runs])) for m in METRICS},
                    "runs": runs,
                }
            entry: dict[str, object] = {"overrides": SPLITS[split_name], "train_rows": spec.rows_fitted, "models": rows}
            if steady:
                first = args.models[0]
                entry["throughput_model"] = f"{first} ({rows[first]['runs'][0]['kind']})"
                entry["train_samples_per_s_median"] = statistics.median(steady)
                entry["whole_loop_samples_per_s_median"] = statistics.median(
                    x["whole_loop_samples_per_s"] for x in rows[first]["runs"])
                entry["loader_samples_per_s_median"] = loader_rate(base_cfg, spec, 5)
                entry["loader_over_train"] = entry["loader_samples_per_s_median"] / entry["train_samples_per_s_median"]
            results["splits"][split_name] = entry
            print(f"\n[{split_name}] test metrics, mean of seeds {args.seeds}")
            print(f"| model | {' | '.join(METRICS)} |")
            for kind, row in rows.items():
                print(f"| {kind} | " + " | ".join(f"{row['mean'][m]:.4f} ± {row['std'][m]:.4f}" for m in METRICS) + " |")
            if steady:
                print(f"{entry['throughput_model']} training {entry['train_samples_per_s_median']:,.0f} samples/s (steady-state median), "
                      f"{entry['whole_loop_samples_per_s_median']:,.0f} whole fit loop; "
                      f"loader alone {entry['loader_samples_per_s_median']:,.0f} samples/s ({entry['loader_over_train']:.1f}x)\n", flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
