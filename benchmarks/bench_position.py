"""Position bias: does the shallow position tower make the main model rank by position-free relevance?

Synthetic feeds whose logging ranker chose the slots: its score follows relevance in part
(``data.synthetic.position_from_relevance``, one feed per value of ``--relevance``) and its own
taste for each item and noise in the rest, so the items it favoured collected clicks from their
slots, and the slot a click came from is confounded with the item. The generator knows each test impression's click probability in the top
slot (``true_ctr_no_position``); a ranking model should order candidates by it. Four ways of
treating the slot, each trained with the same seeds on the same rows:

- ``feature, logged slot``: ``position`` is a main-model feature; scored with the slot it was
  logged in. This reads the old ranker's decision, which new candidates do not have: what a naive
  offline evaluation does, not a way to serve;
- ``feature, slot 0``: the same model scored as if every candidate sat in slot 0;
- ``no position``: the feature left out;
- ``shallow tower``: ``model.position_tower`` (Zhao et al., RecSys 2019) reads the slot in
  training; scoring adds its unknown-slot constant.

Reported per arm on the test days: Spearman of predicted p_ctr with the position-free truth, the
AUC against clicks drawn from it (expected over the draw, so no sampling noise), and the AUC on
the logged clicks. Writes benchmarks/results/position.json.

    python benchmarks/bench_position.py [--seeds 1 2 3] [--impressions 600000] [--relevance 0.3 0.8]
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
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

ARMS = ("feature, logged slot", "feature, slot 0", "no position", "shallow tower")


def expected_auc(score: np.ndarray, p: np.ndarray) -> float:
    """AUC of ``score`` against labels drawn as Bernoulli(``p``), in expectation: each row is a
    positive with weight ``p`` and a negative with weight ``1 - p`` (ties count half)."""
    order = np.argsort(score, kind="stable")
    s, w_pos = score[order], p[order].astype(np.float64)
    w_neg = 1.0 - w_pos
    _, start = np.unique(s, return_index=True)
    pos_g, neg_g = np.add.reduceat(w_pos, start), np.add.reduceat(w_neg, start)
    below = np.cumsum(neg_g) - neg_g
    return float((pos_g * (below + 0.5 * neg_g)).sum() / (w_pos.sum() * w_neg.sum()))


def predict(model_dir: Path, rows: pa.Table, slot: int | None = None) -> np.ndarray:
    """p_ctr of the saved model on model-ready ``rows``; ``slot``: every row's position set to it."""
    from recsys_moe.evaluation.predict import TorchPredictor
    from recsys_moe.features.lookup import IdLookup

    predictor = TorchPredictor.load(model_dir)
    if slot is not None:
        index = IdLookup(predictor.spec.tables["position"]).indices(np.array([slot]), None)[0]
        rows = rows.set_column(rows.schema.get_field_index("position"), "position", pa.array(np.full(rows.num_rows, index)))
    return predictor.predict(rows).tasks["ctr"]


METRICS = ("spearman_vs_position_free", "auc_vs_position_free", "auc_logged_clicks")


def one_world(relevance: float, args: argparse.Namespace, tmp: Path) -> dict:
    """Every arm with every seed on one feed whose logging ranker follows relevance this much."""
    import polars as pl

    from recsys_moe.config import apply_overrides, config_from_dict, load_raw_config
    from recsys_moe.data.raw import read_synthetic
    from recsys_moe.data.synthetic import generate
    from recsys_moe.features import fit, transform
    from recsys_moe.metrics.functions import auc, spearman
    from recsys_moe.training.train import train

    world = [f"data.synthetic.num_impressions={args.impressions}", "data.synthetic.num_users=2000",
             "data.synthetic.num_items=2000", f"data.synthetic.position_from_relevance={relevance}",
             f"data.synthetic.position_bias={args.position_bias}", f"training.max_epochs={args.max_epochs}",
             "tracking.enabled=false"]
    base = load_raw_config(ROOT / "configs/synthetic.yaml", [*world, f"data.raw_dir={tmp / 'raw'}", f"experiment.work_dir={tmp}"])
    no_position = apply_overrides(base, [])
    no_position["features"]["features"] = [f for f in base["features"]["features"] if f["name"] != "position"]
    variants = {
        "feature": config_from_dict(base),
        "no position": config_from_dict(no_position),
        "shallow tower": config_from_dict(apply_overrides(base, ["model.position_tower={features: [position]}"])),
    }
    cfg0 = variants["feature"]
    generate(cfg0.data.synthetic, cfg0.experiment.seed, cfg0.data.raw_dir)
    raw = read_synthetic(cfg0.data.raw_dir)
    prepared: dict[str, Path] = {}
    for cfg in variants.values():
        key = cfg.features.content_hash()
        if key not in prepared:
            work = tmp / f"features-{key}"
            spec = fit(raw, cfg)
            spec.save(work / "spec")
            transform(raw, spec, cfg.split, work / "data")
            prepared[key] = work
    tests = {key: pq.read_table(work / "data" / "test") for key, work in prepared.items()}
    first = next(iter(tests.values()))
    assert all(t.column("impression_id").equals(first.column("impression_id")) for t in tests.values()), "test rows differ in order"
    test = pl.from_arrow(first.select(["impression_id", "click"]))
    truth = test.join(raw.oracle.collect(), on="impression_id", how="left", maintain_order="left")
    free, click = truth["true_ctr_no_position"].to_numpy(), truth["click"].to_numpy()
    oracle = {"auc_vs_position_free": expected_auc(free, free), "auc_logged_clicks": auc(truth["true_ctr"].to_numpy(), click)}
    print(f"logging ranker correlation {relevance}: oracle position-free AUC {oracle['auc_vs_position_free']:.4f}, "
          f"logged-click AUC {oracle['auc_logged_clicks']:.4f}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {a: [] for a in ARMS}
    for seed in args.seeds:
        for name, cfg in variants.items():
            work = prepared[cfg.features.content_hash()]
            cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"seed": seed})})
            r = train(cfg, spec_dir=work / "spec", data_dir=work / "data", output_dir=tmp / f"{name}-{seed}",
                      resume=False, progress=False, evaluate_test=False)
            scored = {"feature": [("feature, logged slot", None), ("feature, slot 0", 0)]}.get(name, [(name, None)])
            for arm, slot in scored:
                p = predict(r.model_dir, tests[cfg.features.content_hash()], slot)
                row = {"spearman_vs_position_free": spearman(p, free), "auc_vs_position_free": expected_auc(p, free),
                       "auc_logged_clicks": auc(p, click), "epochs": r.epochs}
                runs[arm].append(row)
                print(f"  seed {seed} {arm:<22} Spearman vs position-free {row['spearman_vs_position_free']:.4f}  "
                      f"position-free AUC {row['auc_vs_position_free']:.4f}  logged-click AUC {row['auc_logged_clicks']:.4f}",
                      flush=True)
    summary = {arm: {m: {"mean": statistics.mean(x[m] for x in rows), "std": statistics.pstdev(x[m] for x in rows)} for m in METRICS}
               for arm, rows in runs.items()}
    return {"position_from_relevance": relevance, "world": world, "oracle": oracle, "summary": summary, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--impressions", type=int, default=600_000)
    ap.add_argument("--relevance", type=float, nargs="+", default=[0.3, 0.8],
                    help="data.synthetic.position_from_relevance, one feed per value")
    ap.add_argument("--position-bias", type=float, default=0.8)
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/position.json")
    args = ap.parse_args()
    worlds = []
    with tempfile.TemporaryDirectory() as tmp_name:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp_name) / 'mlflow.db'}"
        for relevance in args.relevance:
            worlds.append(one_world(relevance, args, Path(tmp_name) / f"r{relevance}"))
    print(f"\nmean of seeds {args.seeds} ({args.impressions:,} impressions)")
    print("| logging ranker follows relevance | slot handling | Spearman vs position-free | AUC vs position-free | AUC on logged clicks |")
    for w in worlds:
        for arm, m in w["summary"].items():
            print(f"| {w['position_from_relevance']} | {arm} | " + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in METRICS) + " |")
    write_results(args.out, {"benchmark": "position", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "seeds": args.seeds, "impressions": args.impressions, "worlds": worlds})


if __name__ == "__main__":
    main()
