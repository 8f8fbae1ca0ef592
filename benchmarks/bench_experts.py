"""Experts that scale without compute: dense vs sparse dispatch over 4, 16 and 64 experts.

Four parts (``--parts``):

- ``layer``: the MMoE body alone (gates, experts, mixing) on random inputs of the KuaiRand model's
  width, batch 4,096, two tasks: rows/s of a training step (forward and backward) in torch, and of
  scoring in ONNX Runtime (the graph exported as the model export does, run by the jobs' session).
  Expert hidden sizes: the shipped default ``[64]`` and the wider ``[256, 128]``.
- ``models``: the whole model trained on KuaiRand and on the synthetic data-rich world (one seed
  per configuration; ``--quality-seeds`` more for 4 dense experts and 16 experts top-2 sparse):
  training samples/s (steady epochs: batches, forward, backward, optimiser), ONNX Runtime rows/s of
  the exported model at 4,096 rows, dense parameters, the share of chosen pairs capacity dropped in
  the last training epoch (nothing is dropped outside training), and test CTR AUC and watch-time
  Spearman.
- ``kernel``: eager torch outside training (validation, evaluating a model folder), 16 and 64
  experts top-2 sparse: the padded expert buffers against the grouped kernel, with the router as
  initialised and with an imbalanced one, in alternation.
- ``throughput``: the whole model's training samples/s on KuaiRand for 4 experts with a softmax
  gate (the default) and 64 experts top-2, sparse and dense, trained in alternation (two epochs
  each, ``--rounds`` rounds) so that the machine's drift hits every configuration alike.

Configurations: for each expert count, a softmax gate (every expert, every row), top-1 and top-2
gates run dense (every expert computed, the gate masks them) and the same run sparse (only the
chosen experts run, capacity factor 1.25 in training; outside it nothing is dropped). Writes
benchmarks/results/experts.json and prints the tables.

    python benchmarks/bench_experts.py [--parts layer kernel models throughput] [--datasets kuairand synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"
BATCH = 4096
TASKS = 2


def configs(experts: list[int], ks: list[int]) -> list[dict]:
    out = []
    for e in experts:
        out.append({"experts": e, "top_k": None, "dispatch": "dense", "name": f"{e} softmax"})
        for k in ks:
            if k < e:
                out += [{"experts": e, "top_k": k, "dispatch": d, "name": f"{e} top-{k} {d}"} for d in ("dense", "sparse")]
    return out


def _median_rate(fn, rows: int, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def layer_part(experts: list[int], ks: list[int], hidden_sets: list[list[int]], in_dim: int, iters: int, work: Path) -> list[dict]:
    import torch
    from torch import nn

    from recsys_moe.models.mmoe import MMoEBody
    from recsys_moe.serving.session import make_session

    class Stacked(nn.Module):
        def __init__(self, body: MMoEBody) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            return torch.stack(self.body([x])[0], dim=1)  # batch first: the session chunks rows

    rows = []
    x = torch.randn(BATCH, in_dim)
    for hidden in hidden_sets:
        for c in configs(experts, ks):
            torch.manual_seed(0)
            body = MMoEBody(in_dim, TASKS, c["experts"], hidden, top_k=c["top_k"], sparse=c["dispatch"] == "sparse")

            def step(body=body):
                body.zero_grad(set_to_none=True)
                out, gates = body([x])
                loss = sum(o.square().mean() for o in out) + gates.balance_loss
                loss.backward()

            body.train()
            train_rate = _median_rate(step, BATCH, iters)
            body.eval()
            path = work / f"layer-{c['name'].replace(' ', '_')}-{'x'.join(map(str, hidden))}.onnx"
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(Stacked(body).eval(), (x[:64],), dynamo=True, input_names=["x"], output_names=["h"],
                                        dynamic_shapes=({0: batch},), opset_version=18, verbose=False)
            program.save(str(path))
            session = make_session(path, providers="cpu")
            feeds = {"x": x.numpy()}
            with torch.no_grad():
                np_ref = Stacked(body)(x).numpy()
            got = session.run(feeds)[0]
            ort_rate = _median_rate(lambda s=session, f=feeds: s.run(f), BATCH, iters)
            row = {"hidden": hidden, **c, "train_step_rows_per_s": train_rate, "ort_rows_per_s": ort_rate,
                   "ort_max_abs_diff": float(abs(got - np_ref).max())}
            rows.append(row)
            print(f"layer {hidden} {c['name']:<18} train step {train_rate:>10,.0f} rows/s   ORT {ort_rate:>10,.0f} rows/s", flush=True)
    return rows


def kernel_part(experts: list[int], in_dim: int, iters: int, rounds: int) -> list[dict]:
    """Eager torch outside training (validation, `evaluate` on a model folder): top-2 sparse
    dispatch with the padded buffers against the grouped kernel, for a router as initialised and
    for an imbalanced one (gate logits biased from +3 to -3 across the experts), alternating."""
    import torch

    from recsys_moe.models.mmoe import MMoEBody
    from recsys_moe.modules.dispatch import grouped_slots

    x = torch.randn(BATCH, in_dim)
    rows = []
    for e in experts:
        for router in ("as initialised", "imbalanced"):
            torch.manual_seed(0)
            body = MMoEBody(in_dim, TASKS, e, [64], top_k=2, sparse=True).eval()
            if router == "imbalanced":
                with torch.no_grad():
                    body.gates.logits.bias[:] = torch.linspace(3.0, -3.0, e).repeat(TASKS)
            with torch.no_grad():
                counts = grouped_slots(body.gates(x).top_indices, e)[2]
            load = float(counts.max()) / (float(counts.sum()) / e)
            rates: dict[str, list[float]] = {"padded": [], "grouped": []}
            for _ in range(rounds):
                for kernel in rates:
                    body.grouped = kernel == "grouped"
                    with torch.no_grad():
                        rates[kernel].append(_median_rate(lambda b=body: b([x]), BATCH, iters))
            row = {"experts": e, "top_k": 2, "router": router, "busiest_over_even": load,
                   **{f"{k}_rows_per_s": statistics.median(v) for k, v in rates.items()}}
            rows.append(row)
            print(f"kernel {e} experts top-2, router {router:<14} (busiest expert {load:.1f}x an even share): "
                  f"padded {row['padded_rows_per_s']:>10,.0f} rows/s, grouped {row['grouped_rows_per_s']:>10,.0f} rows/s", flush=True)
    return rows


def _prepare(dataset: str, work: Path, max_epochs: int):
    from recsys_moe.config import load_config
    from recsys_moe.data.raw import load_raw
    from recsys_moe.features import fit, transform
    from recsys_moe.layout import WorkDir

    if dataset == "kuairand":
        cfg = load_config(ROOT / "configs/kuairand_mmoe.yaml", [f"data.kuairand.path={KUAIRAND}", f"experiment.work_dir={work}",
                                                             f"training.max_epochs={max_epochs}"])
    else:
        from bench_synthetic_quality import WORLDS

        cfg = load_config(ROOT / "configs/synthetic.yaml", [*WORLDS["data-rich"], f"data.raw_dir={work / 'raw'}",
                                                              f"experiment.work_dir={work}", f"training.max_epochs={max_epochs}"])
        from recsys_moe.data.synthetic import generate

        generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    layout = WorkDir.of(cfg)
    spec.save(layout.spec_dir)
    transform(raw, spec, cfg.split, layout.features_dir)
    return cfg, spec


def _ort_rate(onnx_path: Path, spec, test_dir: Path, iters: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_moe.serving.inputs import onnx_inputs
    from recsys_moe.serving.session import make_session

    test = pq.read_table(test_dir)
    rows = pa.concat_tables([test] * (-(-BATCH // test.num_rows))).slice(0, BATCH)
    feeds = onnx_inputs(rows, spec)
    session = make_session(onnx_path, providers="cpu")
    return _median_rate(lambda: session.run(feeds), BATCH, iters)


def models_part(dataset: str, work: Path, experts: list[int], ks: list[int], seeds: list[int], max_epochs: int, iters: int) -> dict:
    from recsys_moe.export.bundle import export_bundle
    from recsys_moe.layout import WorkDir
    from recsys_moe.training.train import train

    base, spec = _prepare(dataset, work / dataset, max_epochs)
    layout = WorkDir.of(base)
    out: dict = {"train_rows": spec.rows_fitted, "max_epochs": max_epochs, "configs": []}
    for c in configs(experts, ks):
        runs = []
        extra = seeds if (c["experts"], c["top_k"], c["dispatch"]) in ((4, None, "dense"), (16, 2, "sparse")) else seeds[:1]
        for seed in extra:
            gate = base.model.gate.model_copy(update={"top_k": c["top_k"], "dispatch": c["dispatch"]})
            cfg = base.model_copy(update={
                "model": base.model.model_copy(update={"num_experts": c["experts"], "gate": gate}),
                "experiment": base.experiment.model_copy(update={"seed": seed}),
            })
            run_dir = work / dataset / f"{c['name'].replace(' ', '_')}-{seed}"
            r = train(cfg, output_dir=run_dir, resume=False, progress=False)
            params = sum(v.numel() for k, v in __import__("torch").load(r.model_dir / "state_dict.pt", weights_only=True).items()
                         if not k.startswith("embeddings."))
            run = {"seed": seed, "ctr/auc": r.test["test/ctr/auc"], "watch_time/spearman": r.test["test/watch_time/spearman"],
                   "epochs": r.epochs, "train_samples_per_s": statistics.median(r.samples_per_s[1:] or r.samples_per_s),
                   "dense_params": params,
                   "train_drop_rate": [r.train_drop_rate.get(t.name, 0.0) for t in cfg.tasks.tasks]}
            if seed == extra[0]:
                bundle = export_bundle(cfg, model_dir=r.model_dir, output=run_dir / "export", register=False, parity_rows=4096)
                run["ort_rows_per_s"] = _ort_rate(bundle.onnx_path, spec, layout.split_dir("test"), iters)
            runs.append(run)
            print(f"[{dataset}] {c['name']:<18} seed {seed}: AUC {run['ctr/auc']:.4f} Spearman {run['watch_time/spearman']:.4f} "
                  f"train {run['train_samples_per_s']:>8,.0f}/s ORT {run.get('ort_rows_per_s', float('nan')):>9,.0f}/s "
                  f"params {params:,} dropped in training {max(run['train_drop_rate']):.2%}", flush=True)
        out["configs"].append({**c, "runs": runs,
                               "mean": {m: statistics.mean(x[m] for x in runs) for m in ("ctr/auc", "watch_time/spearman")},
                               "std": {m: statistics.pstdev(x[m] for x in runs) for m in ("ctr/auc", "watch_time/spearman")}})
    return out


def throughput_part(work: Path, rounds: int) -> dict:
    """Training samples/s (median of the steady epochs) for configurations trained in turn."""
    from recsys_moe.training.train import train

    base, _ = _prepare("kuairand", work / "throughput", 2)
    base = base.model_copy(update={"training": base.training.model_copy(update={"early_stopping_patience": 0})})
    runs = {"4 softmax": (4, None, "dense"), "64 top-2 sparse": (64, 2, "sparse"), "64 top-2 dense": (64, 2, "dense")}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, (experts, k, dispatch) in runs.items():
            gate = base.model.gate.model_copy(update={"top_k": k, "dispatch": dispatch})
            cfg = base.model_copy(update={"model": base.model.model_copy(update={"num_experts": experts, "gate": gate})})
            result = train(cfg, output_dir=work / "throughput" / f"{name.replace(' ', '_')}-{r}", resume=False, progress=False,
                           evaluate_test=False)
            rates[name].append(result.samples_per_s[-1])
            print(f"[throughput] round {r + 1} {name:<16} {result.samples_per_s[-1]:>8,.0f} samples/s", flush=True)
    out = {name: {"samples_per_s": statistics.median(v), "runs": v} for name, v in rates.items()}
    out["ratio_64_top2_sparse_over_4_softmax"] = out["64 top-2 sparse"]["samples_per_s"] / out["4 softmax"]["samples_per_s"]
    print(f"[throughput] 64 experts top-2 sparse over 4 softmax: {out['ratio_64_top2_sparse_over_4_softmax']:.2f}x", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["layer", "kernel", "models", "throughput"],
                    choices=["layer", "kernel", "models", "throughput"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["kuairand", "synthetic"], choices=["kuairand", "synthetic"])
    ap.add_argument("--experts", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quality-seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-epochs", type=int, default=5)
    ap.add_argument("--in-dim", type=int, default=224, help="Body input width of the layer part (the KuaiRand model's is 224).")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/experts.json")
    args = ap.parse_args()
    import torch

    results: dict = {"benchmark": "experts", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                     "torch_threads": torch.get_num_threads(), "batch_rows": BATCH, "tasks": TASKS,
                     "capacity_factor": {"train": 1.25, "eval": None}}
    if args.out.is_file():  # parts not run this time keep their last figures
        previous = json.loads(args.out.read_text())
        results |= {k: v for k, v in previous.items() if k in ("layer", "kernel", "models", "throughput") and k not in args.parts}
        results["dates"] = {**previous.get("dates", {}), **{p: results["date"] for p in args.parts}}
    else:
        results["dates"] = {p: results["date"] for p in args.parts}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        if "throughput" in args.parts and KUAIRAND.is_dir():
            results["throughput"] = throughput_part(tmp, args.rounds)
        if "layer" in args.parts:
            results["layer"] = layer_part(args.experts, args.ks, [[64], [256, 128]], args.in_dim, args.iters, tmp)
        if "kernel" in args.parts:
            results["kernel"] = kernel_part([16, 64], args.in_dim, args.iters, args.rounds)
        if "models" in args.parts:
            results["models"] = {}
            for dataset in args.datasets:
                if dataset == "kuairand" and not KUAIRAND.is_dir():
                    print(f"KuaiRand data not found at {KUAIRAND}: skipped")
                    continue
                results["models"][dataset] = models_part(dataset, tmp, args.experts, args.ks, args.quality_seeds,
                                                         args.max_epochs, args.iters)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
