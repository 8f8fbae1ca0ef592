"""Model-only scoring throughput: ONNX Runtime (CPU) vs torch eager, same model, same rows.

The model is the KuaiRand MMoE of configs/kuairand_mmoe.yaml built on a FeatureSpec fitted on
KuaiRand's train window; weights are random (throughput does not depend on them). Inputs are
real KuaiRand test rows, repeated to fill the largest batch. Batch sizes 512, 4096 and 32768;
five engines:

- ``torch_torchrec``: the trained model's own forward (KeyedJaggedTensor -> EmbeddingBagCollection);
- ``torch_twin``: the export twin in torch eager (padded ids, same graph as the ONNX file);
- ``ort_default``: ONNX Runtime with default session options;
- ``ort_tuned``: ``serving.session.make_session(...).run``, what the scoring and evaluation jobs
  call: all graph optimisations, row chunks of up to 2,048 run two at a time on single-threaded runs;
- ``torch_torchrec_chunks``: torch given the same scheme (one intra-op thread, chunks of up to
  2,048 rows forwarded on two Python threads), timed with glibc's heap kept only (below).

Each engine is timed in its own fresh process, as a deployment runs one of them, and the
repeats go round-robin over the engines so that drift in the machine's speed hits all alike.
(Timed in one process, the engines change each other's speed: torch's large temporaries go
through glibc malloc, whose dynamic mmap threshold depends on what ran before, and torch at
4,096 rows measured anywhere from 200k to 400k rows/s with that history.) A figure is the
median over ``--repeats`` processes of rows/s over ``--iters`` batches after a warm-up; the
spread (min-max over the processes) is kept beside it. The torch engines run (again) with
glibc's mmap threshold fixed at 32 MiB (``*_keep_heap``, through ``GLIBC_TUNABLES``), torch's
best cases here; ORT, with its own memory arena, does not care. Input preparation is excluded
(model-only). Writes benchmarks/results/onnx.json.

``--part compression`` times the smaller serving copies instead (writes
benchmarks/results/onnx_compression.json): for a trained KuaiRand MMoE (the default config's
training) and a synthetic model with a 1M x 64 item table (trained one epoch): the float32
export, the row-wise INT8 copy (and the one with a scale per table), the copy with pruned
experts and both together (``export --int8 --prune-experts``; when no expert is under the
default threshold for every task, the least-used expert is pruned with the gate's limits
lifted, and the gate's figures say what it cost), each with its quality gate against float32
on the validation split, and the float16 copy (parity within 2e-3; ONNX Runtime runs float16
slower on CPU: it is for GPUs); ONNX Runtime rows/s at each batch size, and the peak RSS of a fresh process that loads the model
and scores the batches, median over ``--repeats`` processes.

    python benchmarks/bench_onnx.py [--repeats 5] [--iters 20] [--part engines|compression]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import LAUNCHER, machine, write_results  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"
BATCHES = (512, 4096, 32768)
ENGINES = ("torch_torchrec", "torch_twin", "ort_default", "ort_tuned", "torch_torchrec_chunks")
# torch again with glibc's mmap threshold fixed high, so its large temporaries are reused from the
# heap instead of being mapped and faulted in on every call: torch's best case on this machine.
KEEP_HEAP = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"
RUNS = {**{e: (e, None) for e in ENGINES[:4]}, "torch_torchrec_keep_heap": ("torch_torchrec", KEEP_HEAP),
        "torch_twin_keep_heap": ("torch_twin", KEEP_HEAP),
        "torch_torchrec_chunks_keep_heap": ("torch_torchrec_chunks", KEEP_HEAP)}


def _config(work: Path):
    from recsys_moe.config import load_config

    return load_config(ROOT / "configs/kuairand_mmoe.yaml", [f"data.kuairand.path={KUAIRAND}", f"experiment.work_dir={work}"])


def prepare(work: Path) -> str:
    """Fit, transform, build the model (seed 0), export it with its parity gate; save the rows
    and the weights for the worker processes. Returns the parity summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.data.raw import load_raw
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.features import fit, transform
    from recsys_moe.models import build_model

    cfg = _config(work)
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    spec.save(work / "spec")
    transform(raw, spec, cfg.split, work / "data")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.tasks, spec).eval()
    torch.save(model.state_dict(), work / "model.pt")
    test = pq.read_table(work / "data/test")
    big = pa.concat_tables([test] * (-(-max(BATCHES) // test.num_rows))).slice(0, max(BATCHES))
    pq.write_table(big, work / "rows.parquet")
    _, report = export_onnx(model, spec, work / "model.onnx", big.slice(0, 10_000))
    return report.summary()


def worker(engine: str, work: Path, iters: int) -> dict[int, float]:
    """rows/s of ``engine`` at every batch size, in this (fresh) process."""
    import pyarrow.parquet as pq

    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.serving.inputs import onnx_inputs

    spec = FeatureSpec.load(work / "spec")
    big = pq.read_table(work / "rows.parquet")
    if engine.startswith("ort"):
        import onnxruntime as ort

        from recsys_moe.serving.session import make_session

        if engine == "ort_default":
            session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
            run = lambda feeds: session.run(None, feeds)  # noqa: E731
        else:  # what the scoring and evaluation jobs call
            run = make_session(work / "model.onnx", providers="cpu").run

        def make(rows):
            feeds = onnx_inputs(rows, spec)
            return lambda: run(feeds)
    else:
        import torch

        from recsys_moe.export.twin import OnnxTwin
        from recsys_moe.models import build_model
        from recsys_moe.training.batches import ColumnarSplit

        torch.set_grad_enabled(False)
        cfg = _config(work)
        model = build_model(cfg.model, cfg.tasks, spec).eval()
        model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
        twin = OnnxTwin(model, spec).eval()

        if engine == "torch_torchrec_chunks":  # the serving session's scheme, in torch
            from concurrent.futures import ThreadPoolExecutor

            from recsys_moe.serving.session import parallel_chunk_rows

            workers = torch.get_num_threads()
            torch.set_num_threads(1)
            pool = ThreadPoolExecutor(workers)

            def forward(batch):
                with torch.no_grad():  # grad mode is per thread
                    return model(batch.sparse, batch.dense)

        def make(rows):
            if engine == "torch_twin":
                feeds = onnx_inputs(rows, spec)
                args = tuple(torch.from_numpy(feeds[n]) for n in twin.input_names)
                return lambda: twin(*args)
            if engine == "torch_torchrec_chunks":
                size = parallel_chunk_rows(rows.num_rows, workers)
                chunks = [ColumnarSplit(spec, rows.slice(i, size), "bench", label_columns=()).batch(torch.arange(min(size, rows.num_rows - i)))
                          for i in range(0, rows.num_rows, size)]
                return lambda: list(pool.map(forward, chunks))
            batch = ColumnarSplit(spec, rows, "bench", label_columns=()).batch(torch.arange(rows.num_rows))
            return lambda: model(batch.sparse, batch.dense)

    rates = {}
    for b in BATCHES:
        fn = make(big.slice(0, b))
        n = max(2, iters * 4096 // b)
        for _ in range(3):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rates[b] = b * n / (time.perf_counter() - start)
    return rates


COMPRESSED_MODELS = ("kuairand", "synthetic-1m-items")
ITEM_TABLE_ROWS = 1_000_000


def _compression_config(name: str, work: Path):
    from recsys_moe.config import load_config

    if name == "kuairand":
        return _config(work)
    cfg = load_config(ROOT / "configs/synthetic.yaml", [
        "data.synthetic.num_items=1000000", "data.synthetic.num_impressions=3000000", f"data.raw_dir={work / 'raw'}",
        f"experiment.work_dir={work}", "training.max_epochs=1"])
    # the item table (item id and the history lists) at dim 64
    feats = [f.model_copy(update={"dim": 64}) if f.table_name == "item" else f for f in cfg.features.features]
    return cfg.model_copy(update={"features": cfg.features.model_copy(update={"features": feats})})


def prepare_compression(name: str, work: Path) -> dict:
    """Data, a trained model and its exports: plain (fp32 + INT8) and pruned (fp32 + INT8)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_moe.data.raw import load_raw
    from recsys_moe.export.bundle import export_bundle
    from recsys_moe.features import fit, transform
    from recsys_moe.layout import WorkDir
    from recsys_moe.training.train import train

    cfg = _compression_config(name, work)
    layout = WorkDir.of(cfg)
    if name != "kuairand":
        from recsys_moe.data.synthetic import generate

        generate(cfg.data.synthetic, cfg.experiment.seed, cfg.data.raw_dir)
    raw = load_raw(cfg.data)
    spec = fit(raw, cfg)
    if name != "kuairand":  # the items seen in training plus hash buckets: exactly 1M rows
        buckets = ITEM_TABLE_ROWS - 1 - len(spec.tables["item"].vocab)
        feats = [f.model_copy(update={"hash_buckets": buckets}) if f.name == "item_id" else f for f in cfg.features.features]
        cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"features": feats})})
        spec = fit(raw, cfg)
        assert spec.tables["item"].num_embeddings == ITEM_TABLE_ROWS
    spec.save(layout.spec_dir)
    transform(raw, spec, cfg.split, layout.features_dir)
    r = train(cfg, output_dir=work / "train", resume=False, progress=False)
    info: dict = {"trained": {"epochs": r.epochs, "train_rows": spec.rows_fitted, "test": r.test},
                  "tables": {n: [t.num_embeddings, t.dim] for n, t in spec.tables.items()}, "exports": {}}
    for variant, prune in (("plain", False), ("pruned", True)):
        out = work / f"export_{variant}"
        b = export_bundle(cfg, model_dir=r.model_dir, output=out, register=False, int8=True, prune_experts=prune, fp16=not prune)
        forced = None
        if not prune:  # the same INT8 copy with one scale per table: cheaper lookups
            cfg_table = cfg.model_copy(update={"export": cfg.export.model_copy(update={"int8_scales": "table"})})
            t = export_bundle(cfg_table, model_dir=r.model_dir, output=work / "export_table", register=False, int8=True,
                              prune_experts=False, fp16=False)
            info["exports"]["table"] = {"notes": t.notes, "int8_quality": t.int8_quality.to_json() if t.int8_quality else None,
                                        "files": {p.name: p.stat().st_size for p in (work / "export_table").glob("*.onnx")}}
        if prune and not b.pruned_experts:
            cfg_forced, forced = _force_pruning(cfg, out)
            b = export_bundle(cfg_forced, model_dir=r.model_dir, output=out, register=False, int8=True, prune_experts=True, fp16=False)
        info["exports"][variant] = {"pruned_experts": b.pruned_experts, "notes": b.notes, "forced": forced,
                                    "fp16_parity": b.fp16_parity.__dict__ if b.fp16_parity else None,
                                    "int8_quality": b.int8_quality.to_json() if b.int8_quality else None,
                                    "prune_quality": b.prune_quality.to_json() if b.prune_quality else None,
                                    "files": {p.name: p.stat().st_size for p in out.glob("*.onnx")}, "cost": b.cost}
        if forced and b.prune_quality:
            forced["passes_default_gate"] = not b.prune_quality.failures(**forced["default_limits"])
    test = pq.read_table(layout.split_dir("test"))
    big = pa.concat_tables([test] * (-(-max(BATCHES) // test.num_rows))).slice(0, max(BATCHES))
    pq.write_table(big, work / "rows.parquet")
    return info


def _force_pruning(cfg, export_dir: Path):
    """A config that prunes the least-used expert of the export in ``export_dir``.

    A trained model rarely has an expert under the default threshold for every task (then the
    export prunes nothing and there is no pruned model to time). To measure what pruning buys and
    costs anyway, the threshold is set just above the least-used expert's largest mean gate weight,
    and the gate's limits are lifted so the copy is written; the gate's figures are kept, with
    whether the default limits would have served it."""
    usage = json.loads((export_dir / "compression.json").read_text())["prune"]["usage"]
    per_expert = [max(col) for col in zip(*usage, strict=True)]
    least = min(range(len(per_expert)), key=per_expert.__getitem__)
    threshold = min(per_expert[least] * 1.0001 + 1e-9, 0.999)
    ecfg = cfg.export
    forced = {"expert": least, "threshold": threshold, "default_threshold": ecfg.prune_threshold,
              "default_limits": {"max_auc_drop": ecfg.max_auc_drop, "max_spearman_drop": ecfg.max_spearman_drop}}
    ecfg = ecfg.model_copy(update={"prune_threshold": threshold, "max_auc_drop": 1.0, "max_spearman_drop": 1.0})
    return cfg.model_copy(update={"export": ecfg}), forced


def compression_worker(path: Path, work: Path, iters: int) -> dict:
    """rows/s at every batch size, scoring with ``path`` (peak RSS: measured by the launcher)."""
    import pyarrow.parquet as pq

    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.serving.inputs import onnx_inputs
    from recsys_moe.serving.session import make_session

    spec = FeatureSpec.load(path.parent / "feature_spec")
    big = pq.read_table(work / "rows.parquet")
    session = make_session(path, providers="cpu")
    rates = {}
    for b in BATCHES:
        feeds = onnx_inputs(big.slice(0, b), spec)
        n = max(2, iters * 4096 // b)
        for _ in range(3):
            session.run(feeds)
        start = time.perf_counter()
        for _ in range(n):
            session.run(feeds)
        rates[b] = b * n / (time.perf_counter() - start)
    return {"rates": rates}


def compression_main(args) -> None:
    import onnxruntime as ort

    results: dict = {"benchmark": "onnx_compression", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                     "onnxruntime": ort.__version__, "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        for name in COMPRESSED_MODELS:
            if name == "kuairand" and not KUAIRAND.is_dir():
                print(f"KuaiRand data not found at {KUAIRAND}: skipped")
                continue
            work = tmp / name
            info = prepare_compression(name, work)
            variants = {"fp32": work / "export_plain/model.onnx", "fp16": work / "export_plain/model.fp16.onnx",
                        "int8": work / "export_plain/model.int8.onnx", "int8_table": work / "export_table/model.int8.onnx"}
            if info["exports"]["pruned"]["pruned_experts"]:
                variants |= {"pruned": work / "export_pruned/model.onnx", "pruned_int8": work / "export_pruned/model.int8.onnx"}
            variants = {k: v for k, v in variants.items() if v.is_file()}
            runs: dict[str, list[dict]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for k, path in variants.items():
                    # through the launcher: a child of this (large) process would inherit its peak RSS
                    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, __file__, "--compression-worker", str(path),
                                          "--work", str(work), "--iters", str(args.iters)], cwd=ROOT, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"{name} {k} worker failed:\n{out.stderr}")
                    tagged = dict(line.split("=", 1) for line in out.stderr.splitlines() if line.startswith("RECSYS_"))
                    runs[k].append({**json.loads(out.stdout.splitlines()[-1]), "peak_rss_mib": int(tagged["RECSYS_MAXRSS_KB"]) / 1024})
            rows = {}
            for k, rs in runs.items():
                rows[k] = {"file_bytes": variants[k].stat().st_size,
                           "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                           "rows_per_s": {b: statistics.median(r["rates"][str(b)] for r in rs) for b in BATCHES}}
                print(f"{name} {k:<12} {rows[k]['file_bytes'] / 2**20:8.1f} MiB file, peak RSS {rows[k]['peak_rss_mib']:7.1f} MiB, "
                      + "  ".join(f"{b}: {v:,.0f}/s" for b, v in rows[k]["rows_per_s"].items()), flush=True)
            results["models"][name] = {**info, "variants": rows}
    write_results(ROOT / "benchmarks/results/onnx_compression.json", results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--part", choices=["engines", "compression"], default="engines")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/onnx.json")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--compression-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.iters)))
        return
    if args.compression_worker:
        print(json.dumps(compression_worker(args.compression_worker, args.work, args.iters)))
        return
    if args.part == "compression":
        compression_main(args)
        return
    import onnxruntime as ort
    import torch

    runs: dict[str, list[dict[int, float]]] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as tmp_name:
        work = Path(tmp_name)
        print(prepare(work), flush=True)
        for r in range(args.repeats):
            for name, (engine, tunables) in RUNS.items():
                env = {**os.environ, "GLIBC_TUNABLES": tunables} if tunables else None
                out = subprocess.run([sys.executable, __file__, "--worker", engine, "--work", str(work), "--iters", str(args.iters)],
                                     cwd=ROOT, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"{name} worker failed:\n{out.stderr}")
                runs[name].append({int(k): v for k, v in json.loads(out.stdout.splitlines()[-1]).items()})
            print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    results = []
    for b in BATCHES:
        row: dict[str, object] = {"batch_size": b}
        for e in RUNS:
            rates = [run[b] for run in runs[e]]
            row[e] = statistics.median(rates)
            row[f"{e}_range"] = [min(rates), max(rates)]
        row["ort_tuned_over_torch_twin"] = row["ort_tuned"] / row["torch_twin"]
        row["ort_tuned_over_torch_torchrec"] = row["ort_tuned"] / row["torch_torchrec"]
        row["ort_tuned_over_best_torch"] = row["ort_tuned"] / max(row[e] for e in RUNS if e.startswith("torch"))
        results.append(row)
        print(f"batch {b:>6}: " + "  ".join(f"{e} {row[e]:,.0f}" for e in RUNS) + " rows/s; "
              f"ORT tuned over torchrec {row['ort_tuned_over_torch_torchrec']:.2f}x, over the best torch "
              f"{row['ort_tuned_over_best_torch']:.2f}x", flush=True)
    write_results(args.out, {"benchmark": "onnx_model_only", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__,
                             "model": "KuaiRand default MMoE (28 features, 4 experts [64], towers [32])",
                             "method": "each engine in a fresh process; median (and range) over the repeats",
                             "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
