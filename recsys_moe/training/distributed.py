"""Training in several processes: the world torchrun describes, and gathering what each rank saw.

``recsys-moe train`` started by ``torchrun --nproc-per-node N [--nnodes M ...]`` reads the world
from torchrun's environment and trains with Lightning's DDP on it (gloo on CPU, NCCL on GPU). Each
rank trains and validates on its own shard of every split; validation metrics are computed from
every rank's predictions gathered together, so they are exact over the whole split and the same
on every rank (checkpointing and early stopping agree). Rank 0 alone writes the run folder, the
MLflow run, the calibration and the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    local_world_size: int
    world_size: int

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size


def torchrun_world() -> World | None:
    """The world of a process started by torchrun (or any launcher setting its variables), else None."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    if size % local:
        raise ValueError(f"WORLD_SIZE {size} is not a multiple of LOCAL_WORLD_SIZE {local}: start every node with the same --nproc-per-node")
    return World(int(os.environ.get("RANK", "0")), local, size)


def process_rank() -> int:
    """This process's global rank (0 when not launched by torchrun)."""
    world = torchrun_world()
    return world.rank if world else 0


def group_size() -> int:
    """Processes in the default process group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gathered(obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (``[obj]`` outside a process group)."""
    if group_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_range(rows: int, rank: int, world: int, drop_remainder: bool) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``rows`` rows. With
    ``drop_remainder`` every rank gets ``rows // world`` (equal step counts: training); without,
    the first ``rows % world`` ranks get one more, so every row is covered (evaluation)."""
    if drop_remainder:
        share = rows // world
        return rank * share, (rank + 1) * share
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
