"""Where each embedding table lives: torchrec's sharding planner, fed from the config, and a
readable summary of its plan (which table, which sharding type, which ranks, bytes per rank).

The planner (``EmbeddingShardingPlanner``) enumerates the sharding types each table allows on
the compute device, estimates every option's memory and time on a ``Topology`` (world size,
device memory, batch size) and picks a plan that fits. Constraints from ``training.sharding``
narrow the types per table. The same code plans a real run (``collective_plan``: rank 0 plans,
every rank gets the same plan) and a hypothetical one (``recsys-moe train --plan-only``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recsys_moe.config import ModelConfig, ShardingConfig, TasksConfig
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.models import MultiTaskModel, build_model
from recsys_moe.training.sharding.wrap import fuse_table_optimizer, sharders

FP32_BYTES = 4
OPTIMIZER_STATE_FACTOR = {"adagrad": 1.0, "adam": 2.0}
"""Optimiser state per table, as a multiple of the weights (Adagrad: one sum per value; Adam: two moments)."""


def with_state(embedding_optimizer: str) -> float:
    """A table's bytes with its optimiser state, as a multiple of its weights' bytes."""
    return 1.0 + OPTIMIZER_STATE_FACTOR.get(embedding_optimizer, 2.0)


@dataclass(frozen=True)
class TableSize:
    module: str
    """The path of the table's EmbeddingBagCollection in the model."""
    name: str
    rows: int
    dim: int

    @property
    def weight_bytes(self) -> int:
        return self.rows * self.dim * FP32_BYTES


def table_sizes(model: MultiTaskModel) -> list[TableSize]:
    """Every embedding table of ``model`` (works on a model built on the meta device)."""
    paths = {id(m): name for name, m in model.named_modules()}
    out = []
    for emb in model.embedding_sets().values():
        for t in emb.tables:
            out.append(TableSize(f"{paths[id(emb)]}.ebc", t.name, t.num_embeddings, t.dim))
    return out


def device_memory_bytes(cfg: ShardingConfig, device: torch.device, local_world_size: int) -> int:
    """The memory the planner may use per rank: the config's, the GPU's, or the host's share."""
    if cfg.device_memory_gb is not None:
        return int(cfg.device_memory_gb * 1024**3)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // max(local_world_size, 1)


def shard_decision(cfg: ShardingConfig, tables: list[TableSize], world_size: int, device_bytes: int,
                   embedding_optimizer: str) -> tuple[bool, str]:
    """Whether to shard, and why (printed and logged)."""
    if cfg.mode == "none":
        return False, "training.sharding.mode is none: every rank holds every table"
    if cfg.mode == "always":
        return True, "training.sharding.mode is always"
    budget = (cfg.table_budget_mb * 1024**2) if cfg.table_budget_mb else device_bytes // 4
    factor = with_state(embedding_optimizer)
    big = [t for t in tables if t.weight_bytes * factor > budget]
    if not big:
        return False, f"no table with its optimiser state exceeds the budget of {budget / 1024**2:,.0f} MiB"
    names = ", ".join(f"{t.name} ({t.weight_bytes * factor / 1024**2:,.0f} MiB)" for t in big)
    if world_size == 1:
        return False, f"{names} exceed the budget of {budget / 1024**2:,.0f} MiB, but one process has nothing to shard over"
    return True, f"{names} exceed the budget of {budget / 1024**2:,.0f} MiB"


def constraints(cfg: ShardingConfig, tables: list[TableSize]) -> dict[str, Any]:
    """torchrec ``ParameterConstraints`` per table name from ``sharding_types`` and ``tables``."""
    from torchrec.distributed.planner import ParameterConstraints

    names = {t.name for t in tables}
    unknown = sorted(set(cfg.tables) - names)
    if unknown:
        raise ValueError(f"training.sharding.tables: {unknown} are not tables of this model; tables are {sorted(names)}")
    out = {}
    for name in sorted(names):
        types = cfg.tables.get(name, cfg.sharding_types)
        if types:
            out[name] = ParameterConstraints(sharding_types=list(types))
    return out


DENSE_STATE_FACTOR = 4
"""Dense parameters, their gradients and Adam's two moments."""
RESERVED_SHARE = 0.15
"""Of each rank's memory, kept for activations, input batches and the allocator (torchrec's default)."""


class _NoSpecNotice(logging.Filter):
    """torchrec warns on the root logger for every data-parallel table that it has no sharding
    spec; a data-parallel table has none by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found")


def run_planner(planner: Any, model: nn.Module, group: Any = None) -> Any:
    """``planner``'s plan for ``model``: collective (rank 0 plans, every rank receives it) when a
    process ``group`` is given, else computed here."""
    notice = _NoSpecNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        if group is not None:
            return planner.collective_plan(model, sharders(), group)
        return planner.plan(model, sharders())
    finally:
        root.removeFilter(notice)


def dense_bytes(model: nn.Module) -> int:
    """What the dense layers take on every rank: the parameters outside embedding tables, with
    their gradients and Adam's state (the planner reserves it before placing tables)."""
    return sum(p.numel() * FP32_BYTES for n, p in model.named_parameters() if ".ebc." not in f".{n}") * DENSE_STATE_FACTOR


def make_planner(cfg: ShardingConfig, tables: list[TableSize], world_size: int, local_world_size: int,
                 compute_device: str, memory_bytes: int, batch_size: int, dense: int = 0) -> Any:
    """An ``EmbeddingShardingPlanner`` on a topology of ``world_size`` ranks of ``memory_bytes``,
    reserving ``dense`` bytes per rank for the dense layers."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
    from torchrec.distributed.planner.types import (
        HardwareConfig,
        KernelConfig,
        TopologyFactory,
        TrainerConfig,
    )

    cap = {"hbm_cap_bytes": memory_bytes} if compute_device == "cuda" else {"ddr_cap_bytes": memory_bytes}
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size, local_world_size=local_world_size),
        hardware_config=HardwareConfig(**cap),
        kernel_config=KernelConfig(compute_device=compute_device),
    )
    with warnings.catch_warnings():  # it warns of dry runs without a dense estimate; this one has it
        warnings.filterwarnings("ignore", message=".*HeuristicalStorageReservation is known to cause issues.*")
        reservation = HeuristicalStorageReservation(percentage=RESERVED_SHARE, dense_tensor_estimate=dense)
    return EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints(cfg, tables),
                                    storage_reservation=reservation, debug=False)


@dataclass
class PlacedTable:
    module: str
    table: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    shards: list[dict[str, Any]] = field(default_factory=list)
    """Each shard: ``rank``, ``offsets`` and ``sizes`` (rows, columns)."""


@dataclass
class PlanSummary:
    """A sharding plan in plain data: printed, written as JSON and logged to MLflow."""

    world_size: int
    compute_device: str
    memory_bytes_per_rank: int
    tables: list[PlacedTable]
    reason: str = ""
    embedding_optimizer: str = "adagrad"

    def weight_bytes_per_rank(self) -> list[int]:
        out = [0] * self.world_size
        for t in self.tables:
            for s in t.shards:
                out[s["rank"]] += s["sizes"][0] * s["sizes"][1] * FP32_BYTES
        return out

    def state_bytes_per_rank(self) -> list[int]:
        """Weights plus their optimiser state."""
        factor = with_state(self.embedding_optimizer)
        return [int(b * factor) for b in self.weight_bytes_per_rank()]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "weight_bytes_per_rank": self.weight_bytes_per_rank(),
                "state_bytes_per_rank": self.state_bytes_per_rank()}

    def table_rows(self) -> list[list[str]]:
        """One row per table: table, size, sharding type, kernel, ranks."""
        return [[f"{t.module}:{t.table}", f"{t.rows:,} x {t.dim}", t.sharding_type, t.compute_kernel, _ranks(t.ranks)]
                for t in self.tables]

    def format(self) -> str:
        lines = [f"sharding plan: {self.world_size} ranks ({self.compute_device}, {self.memory_bytes_per_rank / 1024**3:,.1f} GiB each)"]
        if self.reason:
            lines.append(f"why: {self.reason}")
        rows = [["table", "rows x dim", "sharding", "kernel", "ranks"], *self.table_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        weights, state = self.weight_bytes_per_rank(), self.state_bytes_per_rank()
        lines.append("per rank: weights / with optimiser state (" + self.embedding_optimizer + ")")
        lines += [f"  rank {r}: {_size(w)} / {_size(s)}" for r, (w, s) in enumerate(zip(weights, state, strict=True))]
        if any("uvm" in t.compute_kernel for t in self.tables):
            lines.append("(*_uvm* kernels keep a table in host memory with a cache in the device's)")
        return "\n".join(lines)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n / 1024:,.1f} KiB"


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 3 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def summarize(plan: Any, model: nn.Module, world_size: int, compute_device: str, memory_bytes: int,
              reason: str = "", embedding_optimizer: str = "adagrad") -> PlanSummary:
    """A torchrec ``ShardingPlan`` for ``model`` as a :class:`PlanSummary`."""
    sizes = {(t.module, t.name): t for t in table_sizes(model)} if isinstance(model, MultiTaskModel) else {}
    placed = []
    for module, tables in sorted(plan.plan.items()):
        for name, ps in sorted(tables.items()):
            size = sizes.get((module, name))
            rows, dim = (size.rows, size.dim) if size else (0, 0)
            shards = []
            if ps.sharding_spec is not None:
                for s in ps.sharding_spec.shards:
                    shards.append({"rank": s.placement.rank(), "offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes)})
            else:  # data parallel: a full copy on every rank
                shards = [{"rank": r, "offsets": [0, 0], "sizes": [rows, dim]} for r in range(world_size)]
            ranks = sorted({s["rank"] for s in shards})
            placed.append(PlacedTable(module, name, rows, dim, ps.sharding_type, ps.compute_kernel, ranks, shards))
    return PlanSummary(world_size, compute_device, memory_bytes, placed, reason, embedding_optimizer)


def parse_table_size(text: str) -> tuple[str, int, int | None]:
    """``item=50000000x64`` (or ``item=50000000``, keeping the dim) -> ``("item", 50000000, 64)``."""
    name, sep, size = text.partition("=")
    rows, _, dim = size.lower().replace("_", "").partition("x")
    if not sep or not name or not rows.isdigit() or (dim and not dim.isdigit()) or int(rows) < 1:
        raise ValueError(f"--table {text!r}: expected NAME=ROWS or NAME=ROWSxDIM, e.g. item=50000000x64")
    return name, int(rows), int(dim) if dim else None


def plan_for(model_cfg: ModelConfig, tasks_cfg: TasksConfig, spec: FeatureSpec, sharding: ShardingConfig, *,
             world_size: int, local_world_size: int, compute_device: str, memory_bytes: int, batch_size: int,
             embedding_optimizer: str, embedding_lr: float = 0.05,
             sizes: Mapping[str, tuple[int, int | None]] | None = None) -> PlanSummary:
    """The plan the planner would make for this model on a hypothetical cluster, computed here
    without running anything (tables on the meta device). ``sizes``: table -> (rows, dim or None)."""
    model = build_model(model_cfg, tasks_cfg, spec, embedding_device="meta")
    names = {t.name: t for t in table_sizes(model)}
    unknown = sorted(set(sizes or {}) - set(names))
    if unknown:
        raise ValueError(f"--table: {unknown} are not tables of this model; tables are {sorted(names)}")
    if sizes:
        resize = {n: (rows, dim if dim is not None else names[n].dim) for n, (rows, dim) in sizes.items()}
        model = build_model(model_cfg, tasks_cfg, spec, embedding_device="meta", resize=resize)
    fuse_table_optimizer(model, embedding_optimizer, embedding_lr)
    tables = table_sizes(model)
    planner = make_planner(sharding, tables, world_size, local_world_size, compute_device, memory_bytes, batch_size, dense_bytes(model))
    plan = run_planner(planner, model)
    return summarize(plan, model, world_size, compute_device, memory_bytes, "--plan-only: computed, not run", embedding_optimizer)
