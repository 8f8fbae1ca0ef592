"""torchrec's planner fed from ``training.sharding``: the decision to shard, constraints, and the
plan for a catalogue larger than any here (computed on the meta device, not run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torchrec.distributed.planner.types import PlannerError

from recsys_moe.config import ConfigError, ShardingConfig, load_config
from recsys_moe.models import build_model
from recsys_moe.training.sharding.plan import (
    TableSize,
    parse_table_size,
    plan_for,
    shard_decision,
    table_sizes,
)
from recsys_moe.training.train import TrainError, sharding_decision

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


def _plan(cfg, spec, sharding: ShardingConfig | None = None, gb: float = 80, **sizes):
    return plan_for(cfg.model, cfg.tasks, spec, sharding or ShardingConfig(), world_size=8, local_world_size=8, compute_device="cuda",
                    memory_bytes=int(gb * GIB), batch_size=2048, embedding_optimizer="adagrad", sizes=sizes)


def test_table_sizes_parse_and_bad_ones_name_the_expected_form():
    assert parse_table_size("item=50000000x64") == ("item", 50_000_000, 64)
    assert parse_table_size("user=1_000_000") == ("user", 1_000_000, None)
    for bad in ("item", "item=", "item=50Mx64", "=5x4", "item=0"):
        with pytest.raises(ValueError, match="NAME=ROWSxDIM"):
            parse_table_size(bad)


def test_the_decision_follows_the_mode_the_budget_and_the_world():
    big, small = TableSize("embeddings.0.ebc", "item", 10_000_000, 64), TableSize("embeddings.0.ebc", "user", 1000, 16)
    assert not shard_decision(ShardingConfig(), [big], 8, 80 * GIB, "adagrad")[0]
    assert shard_decision(ShardingConfig(mode="always"), [small], 1, 80 * GIB, "adagrad")[0]
    auto = ShardingConfig(mode="auto", table_budget_mb=4096)  # item: 2.4 GiB weights, 4.8 GiB with Adagrad's state
    shard, why = shard_decision(auto, [big, small], 2, 80 * GIB, "adagrad")
    assert shard and "item" in why and "user" not in why
    assert not shard_decision(auto.model_copy(update={"table_budget_mb": 6144}), [big, small], 2, 80 * GIB, "adagrad")[0]
    assert shard_decision(auto.model_copy(update={"table_budget_mb": 6144}), [big, small], 2, 80 * GIB, "adam")[0]  # 7.2 GiB
    assert not shard_decision(auto, [big], 1, 80 * GIB, "adagrad")[0]  # one process: nothing to shard over
    # the default budget is a quarter of a device
    assert shard_decision(ShardingConfig(mode="auto"), [big], 2, 16 * GIB, "adagrad")[0]
    assert not shard_decision(ShardingConfig(mode="auto"), [big], 2, 32 * GIB, "adagrad")[0]


def test_a_50m_item_table_on_8_gpus_of_80_gb(small_features):
    cfg, spec = small_features
    summary = _plan(cfg, spec, item=(50_000_000, 64))
    item = next(t for t in summary.tables if t.table == "item")
    assert (item.rows, item.dim) == (50_000_000, 64)
    assert sum(s["sizes"][0] for s in item.shards) == 50_000_000 or item.sharding_type == "data_parallel"
    names = {t.name for t in table_sizes(build_model(cfg.model, cfg.tasks, spec, "meta"))}
    assert {t.table for t in summary.tables} == names  # every table placed
    weights = summary.weight_bytes_per_rank()
    assert len(weights) == 8 and sum(weights) >= 50_000_000 * 64 * 4 and max(summary.state_bytes_per_rank()) < 80 * GIB * 0.85
    text = summary.format()
    assert "50,000,000 x 64" in text and "rank 7" in text

    rows = _plan(cfg, spec, ShardingConfig(tables={"item": ["row_wise"]}), item=(50_000_000, 64))
    item = next(t for t in rows.tables if t.table == "item")
    assert item.sharding_type == "row_wise" and item.ranks == list(range(8))
    starts = sorted(s["offsets"][0] for s in item.shards)
    assert starts[0] == 0 and sum(s["sizes"][0] for s in item.shards) == 50_000_000  # the rows split, none twice
    assert max(rows.weight_bytes_per_rank()) < max(weights)  # spread instead of one rank holding it


def test_a_plan_that_cannot_fit_and_unknown_tables_are_errors(small_features):
    cfg, spec = small_features
    with pytest.raises(PlannerError):
        _plan(cfg, spec, item=(5_000_000_000, 64))  # 1.2 TiB of weights (2.4 with Adagrad's) on 8 x (80 GiB + 128 GiB host)
    with pytest.raises(ValueError, match=r"\['film'\] are not tables of this model"):
        _plan(cfg, spec, film=(10, 4))
    with pytest.raises(ValueError, match=r"training.sharding.tables: \['film'\]"):
        _plan(cfg, spec, ShardingConfig(tables={"film": ["row_wise"]}))


def test_sharding_config_names_a_bad_type(tmp_path):
    with pytest.raises(ConfigError, match="training.sharding.sharding_types"):
        load_config("configs/synthetic.yaml", ["training.sharding.sharding_types=[diagonal]"])
    with pytest.raises(ConfigError, match="training.sharding.mode"):
        load_config("configs/synthetic.yaml", ["training.sharding.mode=sometimes"])


def test_the_training_job_decides_from_torchruns_world(small_features, monkeypatch):
    cfg, spec = small_features
    sharding = cfg.training.sharding.model_copy(update={"mode": "auto", "device_memory_gb": 1e-4})  # a 26 KiB budget
    auto = cfg.model_copy(update={"training": cfg.training.model_copy(update={"sharding": sharding, "embedding_optimizer": "adagrad"})})
    assert not sharding_decision(auto, spec)[0]  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shard, why = sharding_decision(auto, spec)
    assert shard and "user" in why
    adam = auto.model_copy(update={"training": auto.training.model_copy(update={"embedding_optimizer": "adam"})})
    with pytest.raises(TrainError, match="no fused Adam"):
        sharding_decision(adam, spec)


def test_plan_only_prints_the_plan_and_writes_json(small_features, tmp_path):
    cfg, _ = small_features
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = subprocess.run([sys.executable, "-m", "recsys_moe.cli", "train", "-c", str(path), "--plan-only", "--world-size", "4",
                          "--device-memory-gb", "16", "--table", "item=20000000x32", "--plan-json", str(tmp_path / "plan.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sharding plan: 4 ranks (cuda, 16.0 GiB each)" in out.stdout and "20,000,000 x 32" in out.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["world_size"] == 4 and len(plan["weight_bytes_per_rank"]) == 4
    assert not (cfg.experiment.work_dir / "train").exists()  # nothing trained
    bad = subprocess.run([sys.executable, "-m", "recsys_moe.cli", "train", "-c", str(path), "--plan-only", "--table", "film=10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "film" in bad.stderr and "Traceback" not in bad.stderr
