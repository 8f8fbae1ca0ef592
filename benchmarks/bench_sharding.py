"""Embedding tables sharded (torchrec DMP) against replicated (DDP), as the tables grow.

Measured, on this machine: ``torchrun --nproc-per-node 2`` (gloo, CPU) trains the default model
(configs/synthetic.yaml) whose user and item tables are resized to ROWS x 64 each, for a few
steps on random batches of the config's batch size, two ways:

- ``ddp``: every rank holds both tables whole; their gradients are dense (torch's EmbeddingBag
  under DDP) and all-reduced every step; Adagrad keeps a sum per value (the replicated path).
- ``dmp``: the tables placed table-wise, one per rank, updated by FBGEMM's fused exact Adagrad
  inside backward; only ids and pooled embeddings cross ranks (all-to-all).

Per run: samples/s over both ranks (median of the timed steps) and each rank's peak RSS.
Computed, not run: the planner's plan for one item table of 10M to 1B rows x 64 on 8 GPUs of
80 GB (sharding type, the largest rank's bytes), from ``recsys-moe train --plan-only``'s code.
Writes benchmarks/results/sharding.json.

    python benchmarks/bench_sharding.py [--rows 250000 1000000 2000000] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, run_cli, write_results  # noqa: E402

CONFIG = "configs/synthetic.yaml"
DIM = 64
HISTORY = 20
PLAN_ROWS = (10_000_000, 50_000_000, 200_000_000, 1_000_000_000)
FAILURES: list[dict] = []


def _batch(spec, rows: dict[str, int], tasks, batch_size: int, gen):
    """A random batch in the model's input layout: ids uniform over each table, history lists of
    0..HISTORY ids."""
    import torch
    from torchrec import KeyedJaggedTensor

    from recsys_moe.training.batches import Batch

    keys, values, lengths = [], [], []
    for f in spec.features.features:
        if f.kind == "numeric":
            continue
        n = rows.get(f.table_name) or spec.tables[f.table_name].num_embeddings
        length = (torch.randint(0, HISTORY + 1, (batch_size,), generator=gen) if f.kind == "id_list"
                  else torch.ones(batch_size, dtype=torch.long))
        keys.append(f.name)
        lengths.append(length)
        values.append(torch.randint(0, n, (int(length.sum()),), generator=gen))
    sparse = KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(values), torch.cat(lengths).int())
    dense = torch.randn(batch_size, len(spec.dense_columns), generator=gen)
    labels = {t.label: (torch.rand(batch_size, generator=gen) < 0.2).float() if t.cfg.kind == "binary"
              else torch.rand(batch_size, generator=gen) * 60 for t in tasks}
    return Batch(sparse, dense, labels)


def worker(mode: str, rows: int, spec_dir: str, steps: int, out: str) -> None:
    """One rank of one run (started by torchrun)."""
    import torch
    import torch.distributed as dist

    from recsys_moe.config import load_config
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.models import build_model
    from recsys_moe.training.module import MultiTaskModule
    from recsys_moe.training.optim import build_optimizer
    from recsys_moe.training.sharding.plan import (
        dense_bytes,
        make_planner,
        run_planner,
        table_sizes,
    )
    from recsys_moe.training.sharding.wrap import fuse_table_optimizer, shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(ROOT / CONFIG, ["training.embedding_optimizer=adagrad", "training.sharding.sharding_types=[table_wise]"])
    t = cfg.training
    spec = FeatureSpec.load(spec_dir)
    resize = {"user": (rows, DIM), "item": (rows, DIM)}
    torch.manual_seed(0)
    if mode == "dmp":
        model = build_model(cfg.model, cfg.tasks, spec, embedding_device="meta", resize=resize)
        fuse_table_optimizer(model, t.embedding_optimizer, t.embedding_learning_rate)
        planner = make_planner(t.sharding, table_sizes(model), world, world, "cpu", 8 * 1024**3, t.batch_size, dense_bytes(model))
        plan = run_planner(planner, model, dist.GroupMember.WORLD)
        module = MultiTaskModule(model, cfg.tasks, t, cfg.model.gate)
        module.model = shard_model(model, plan, torch.device("cpu"), cfg.experiment.seed)
        step_module = module
        optimizer = module.configure_optimizers()
    else:
        module = MultiTaskModule(build_model(cfg.model, cfg.tasks, spec, resize=resize), cfg.tasks, t, cfg.model.gate)
        step_module = torch.nn.parallel.DistributedDataParallel(module)
        optimizer = build_optimizer(module.named_parameters(), t.learning_rate, t.weight_decay, t.embedding_optimizer,
                                    t.embedding_learning_rate)
    gen = torch.Generator().manual_seed(rank)
    batches = [_batch(spec, {"user": rows, "item": rows}, module.net.tasks, t.batch_size, gen) for _ in range(4)]
    times = []
    for i in range(steps + 3):  # three warm-up steps
        batch = batches[i % len(batches)]
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, _ = module.compute_loss(step_module(batch), batch)
        loss.backward()
        optimizer.step()
        dist.barrier()
        if i >= 3:
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "peak_rss_mib": rss, "step_s_median": statistics.median(times)})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.barrier()  # every rank done before the group goes: a rank leaving early can hang the other's teardown
    dist.destroy_process_group()


def run(mode: str, rows: int, spec_dir: Path, steps: int, batch_size: int, tmp: Path) -> dict:
    out = tmp / f"{mode}-{rows}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--worker", mode, "--rows", str(rows), "--spec", str(spec_dir), "--steps", str(steps), "--worker-out", str(out)]
    for attempt in range(2):  # a crashed run is retried once and recorded (FAILURES)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  timeout=900)
            if proc.returncode == 0:
                break
            tail = proc.stderr[-1500:]
        except subprocess.TimeoutExpired as exc:
            tail = f"timed out after {exc.timeout:.0f} s"
        FAILURES.append({"mode": mode, "rows": rows, "attempt": attempt, "stderr_tail": tail})
        print(f"{mode} at {rows:,} rows failed (attempt {attempt + 1}):\n{tail}", flush=True)
    else:
        raise SystemExit(f"{mode} at {rows:,} rows failed twice")
    ranks = json.loads(out.read_text())
    step = max(r["step_s_median"] for r in ranks)
    return {"samples_per_s": 2 * batch_size / step, "peak_rss_mib_per_rank": [r["peak_rss_mib"] for r in ranks]}


def planned(spec_dir: Path) -> list[dict]:
    from recsys_moe.config import load_config
    from recsys_moe.features.spec import FeatureSpec
    from recsys_moe.training.sharding.plan import plan_for

    cfg = load_config(ROOT / CONFIG, ["training.embedding_optimizer=adagrad"])
    spec = FeatureSpec.load(spec_dir)
    out = []
    for rows in PLAN_ROWS:
        s = plan_for(cfg.model, cfg.tasks, spec, cfg.training.sharding, world_size=8, local_world_size=8, compute_device="cuda",
                     memory_bytes=80 * 1024**3, batch_size=cfg.training.batch_size, embedding_optimizer="adagrad",
                     sizes={"item": (rows, DIM)})
        item = next(t for t in s.tables if t.table == "item")
        out.append({"item_rows": rows, "sharding_type": item.sharding_type, "compute_kernel": item.compute_kernel,
                    "ranks": len(item.ranks), "max_rank_weights_gib": max(s.weight_bytes_per_rank()) / 1024**3,
                    "max_rank_with_state_gib": max(s.state_bytes_per_rank()) / 1024**3})
        print(f"plan, item {rows:>13,} x {DIM}: {item.sharding_type:<14} {item.compute_kernel:<18} over {len(item.ranks)} ranks, "
              f"largest rank {out[-1]['max_rank_with_state_gib']:.1f} GiB with Adagrad's state", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sharding.json")
    ap.add_argument("--worker", choices=["ddp", "dmp"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.rows[0], args.spec, args.steps, args.worker_out)
        return
    from recsys_moe.config import load_config

    batch_size = load_config(ROOT / CONFIG).training.batch_size
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        flags = ["--set", "data.synthetic.num_impressions=20000", "--set", f"data.raw_dir={tmp / 'raw'}",
                 "--set", f"experiment.work_dir={tmp / 'work'}"]
        run_cli("data", "synth", "-c", CONFIG, *flags)
        run_cli("features", "fit", "-c", CONFIG, *flags)
        spec_dir = tmp / "work/features/spec"
        plans = planned(spec_dir)
        sizes = []
        for rows in args.rows:
            entry: dict = {"rows_per_table": rows, "dim": DIM, "table_mib": rows * DIM * 4 / 1024**2}
            for mode in ("ddp", "dmp"):
                runs = [run(mode, rows, spec_dir, args.steps, batch_size, tmp) for _ in range(args.repeats)]
                entry[mode] = {"samples_per_s_median": statistics.median(r["samples_per_s"] for r in runs),
                               "peak_rss_mib_max_rank_median": statistics.median(max(r["peak_rss_mib_per_rank"]) for r in runs),
                               "runs": runs}
                print(f"{rows:>10,} rows x 2 tables  {mode}: {entry[mode]['samples_per_s_median']:>8,.0f} samples/s  "
                      f"largest rank {entry[mode]['peak_rss_mib_max_rank_median']:,.0f} MiB", flush=True)
            sizes.append(entry)
    write_results(args.out, {"benchmark": "sharding", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "config": CONFIG,
                             "world_size": 2, "backend": "gloo", "batch_size": batch_size, "steps": args.steps,
                             "repeats": args.repeats, "sizes": sizes, "plans_8x80gb": plans,
                             "failed_attempts": FAILURES})


if __name__ == "__main__":
    main()
