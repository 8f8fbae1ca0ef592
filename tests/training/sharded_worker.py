"""Run by ``test_sharding.py`` under ``torchrun --nproc-per-node 2`` (gloo, CPU): the model's tables
sharded table-wise by DMP, compared on each rank's own batch with the unsharded model

1. from the same fresh weights (copied into the shards), and
2. restored from a sharded checkpoint (DCP resharded into this world), against the same
   checkpoint loaded whole into one unsharded model without a process group.

Writes ``<out>/rank<r>.json`` with the largest absolute differences and the tables this rank holds.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.training.sharded_worker CONFIG SPEC DATA CKPT OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from recsys_moe.config import load_config
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import build_model
from recsys_moe.training.datamodule import FeatureDataModule
from recsys_moe.training.module import MultiTaskModule
from recsys_moe.training.sharding import checkpoint as sharded_ckpt
from recsys_moe.training.sharding.plan import dense_bytes, make_planner, run_planner, table_sizes
from recsys_moe.training.sharding.wrap import (
    fuse_table_optimizer,
    load_full_state,
    load_module_state,
    local_shards,
    shard_model,
)


@torch.no_grad()
def _max_diff(a: MultiTaskModule, b: MultiTaskModule, batch) -> float:
    """The largest difference of any output, absolute below 1 and relative above (watch-time
    predictions are in seconds, where float32 rounding alone exceeds 1e-5)."""
    a, b = a(batch), b(batch)
    keys = [k for k in a if k.startswith(("raw_", "probs_", "pred_", "gate_weights"))]
    assert keys, f"no outputs to compare in {sorted(a)}"
    return max(float(((a[k].float() - b[k].float()).abs() / b[k].float().abs().clamp_min(1.0)).max()) for k in keys)


def _sharded_module(cfg, spec) -> MultiTaskModule:
    model = build_model(cfg.model, cfg.tasks, spec, embedding_device="meta")
    t = cfg.training
    fuse_table_optimizer(model, t.embedding_optimizer, t.embedding_learning_rate or t.learning_rate)
    world = dist.get_world_size()
    planner = make_planner(t.sharding, table_sizes(model), world, world, "cpu", 8 * 1024**3, t.batch_size, dense_bytes(model))
    plan = run_planner(planner, model, dist.GroupMember.WORLD)
    module = MultiTaskModule(model, cfg.tasks, t, cfg.model.gate)
    module.model = shard_model(model, plan, torch.device("cpu"), cfg.experiment.seed)
    return module.eval()


def main(config: str, spec_dir: str, data_dir: str, ckpt: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = load_config(config)
    spec = FeatureSpec.load(spec_dir)
    dm = FeatureDataModule(data_dir, spec, cfg.training.batch_size, 256, cfg.experiment.seed)
    dm.setup("validate")
    batches = iter(dm.loader("validation", sharded=False))
    batch = [next(batches) for _ in range(rank + 1)][-1]  # each rank its own batch: ids cross ranks in the all-to-all

    torch.manual_seed(rank)  # unsharded weights differ per rank unless copied: the copy is what is tested
    full = MultiTaskModule(build_model(cfg.model, cfg.tasks, spec), cfg.tasks, cfg.training, cfg.model.gate).eval()
    source = [full.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(source, src=0)
    full.load_state_dict(source[0])
    sharded = _sharded_module(cfg, spec)
    load_full_state(sharded.model, {k.removeprefix("model."): v for k, v in full.state_dict().items() if k.startswith("model.")})
    fresh = _max_diff(sharded, full, batch)

    restored_full = MultiTaskModule(build_model(cfg.model, cfg.tasks, spec), cfg.tasks, cfg.training, cfg.model.gate).eval()
    sharded_ckpt.load_weights(ckpt, restored_full)
    restored = _sharded_module(cfg, spec)
    state = {"state_dict": restored.state_dict()}
    sharded_ckpt.load_tensors(ckpt, state)
    load_module_state(restored, state["state_dict"])
    restored_diff = _max_diff(restored, restored_full, batch)
    # the checkpoint's weights, not fresh ones: the restored model must differ from a fresh one
    moved = _max_diff(restored, sharded, batch)

    tables = sorted({key.split(".")[-2] for key, _, _ in local_shards(restored.model.state_dict())})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "fresh": fresh, "restored": restored_diff, "restored_vs_fresh": moved, "tables": tables, "rows": len(batch)}))
    dist.barrier()  # every rank done before the group goes: a rank leaving early can hang the other's teardown
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6])
