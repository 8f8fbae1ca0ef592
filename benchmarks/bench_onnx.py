"""Model-only scoring throughput: ONNX Runtime (CPU) vs torch eager, same model, same rows.

The model is the default KuaiRand MMoE (configs/kuairand.yaml) built on a FeatureSpec fitted on
KuaiRand's train window; weights are random (throughput does not depend on them). Inputs are
real KuaiRand test rows, repeated to fill the largest batch. Compared in one process, for batch
sizes 512, 4096 and 32768:

- ``torch_torchrec``: the trained model's own forward (KeyedJaggedTensor -> EmbeddingBagCollection);
- ``torch_twin``: the export twin in torch eager (padded ids, same graph as the ONNX file);
- ``ort_default``: ONNX Runtime with default session options;
- ``ort_tuned``: serving.session.make_session (all graph optimisations, intra-op threads = cores,
  sequential execution).

Each figure is the median rows/s over ``--repeats`` timed runs of ``--iters`` batches after a
warm-up; the runs go round-robin over the four, so drift in the machine's speed hits all alike. Input preparation is excluded (model-only). Writes benchmarks/results/onnx.json.

    python benchmarks/bench_onnx.py [--repeats 5] [--iters 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

KUAIRAND = ROOT.parent / "shared" / "data" / "kuairand"
BATCHES = (512, 4096, 32768)


def timed(fns: dict, repeats: int, iters: int, rows: int) -> dict[str, float]:
    """Median rows/s of each function; the repeats go round-robin over the functions, so a
    machine that slows down or speeds up during the run weighs on all of them alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            rates[name].append(rows * iters / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/onnx.json")
    args = ap.parse_args()
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from recsys_moe.config import load_config
    from recsys_moe.data.raw import load_raw
    from recsys_moe.export.onnx_export import export_onnx
    from recsys_moe.export.twin import OnnxTwin
    from recsys_moe.features import fit, transform
    from recsys_moe.models import build_model
    from recsys_moe.training.batches import ColumnarSplit
    from serving.inputs import onnx_inputs
    from serving.session import make_session

    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = load_config(ROOT / "configs/kuairand.yaml", [f"data.kuairand.path={KUAIRAND}", f"experiment.work_dir={tmp}"])
        raw = load_raw(cfg.data)
        spec = fit(raw, cfg)
        transform(raw, spec, cfg.split, tmp / "data")
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.tasks, spec).eval()
        test = pq.read_table(tmp / "data/test")
        big = pa.concat_tables([test] * (-(-max(BATCHES) // test.num_rows))).slice(0, max(BATCHES))
        path, report = export_onnx(model, spec, tmp / "model.onnx", big.slice(0, 10_000))
        print(report.summary())
        twin = OnnxTwin(model, spec).eval()
        default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        tuned = make_session(path, providers="cpu").session
        for b in BATCHES:
            rows = big.slice(0, b)
            feeds = onnx_inputs(rows, spec)
            split = ColumnarSplit(spec, rows, "bench", label_columns=())
            batch = split.batch(torch.arange(b))
            targs = tuple(torch.from_numpy(feeds[n]) for n in twin.input_names)
            iters = max(2, args.iters * 4096 // b)
            row = {"batch_size": b}
            with torch.no_grad():
                row |= timed({
                    "torch_torchrec": lambda batch=batch: model(batch.sparse, batch.dense),
                    "torch_twin": lambda targs=targs: twin(*targs),
                    "ort_default": lambda feeds=feeds: default.run(None, feeds),
                    "ort_tuned": lambda feeds=feeds: tuned.run(None, feeds),
                }, args.repeats, iters, b)
            row["ort_tuned_over_torch_twin"] = row["ort_tuned"] / row["torch_twin"]
            row["ort_tuned_over_torch_torchrec"] = row["ort_tuned"] / row["torch_torchrec"]
            results.append(row)
            print(f"batch {b:>6}: torchrec {row['torch_torchrec']:>10,.0f}  twin {row['torch_twin']:>10,.0f}  "
                  f"ORT default {row['ort_default']:>10,.0f}  ORT tuned {row['ort_tuned']:>10,.0f} rows/s  "
                  f"(tuned/twin {row['ort_tuned_over_torch_twin']:.2f}x, tuned/torchrec {row['ort_tuned_over_torch_torchrec']:.2f}x)", flush=True)
    write_results(args.out, {"benchmark": "onnx_model_only", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                             "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__,
                             "model": "KuaiRand default MMoE (28 features, 4 experts [64], towers [32])",
                             "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
