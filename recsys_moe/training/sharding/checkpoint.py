"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a folder (named like a Lightning checkpoint, ``last.ckpt/``): DCP's
files hold the tensors (each rank writes its own shards, in parallel) and ``trainer.pt`` holds
the rest of Lightning's checkpoint (epoch, step, loops, callbacks). DCP records every shard's
offsets, so the folder loads into any world size and any plan: resharded into 2 or 8 ranks, or
whole into one process without a process group (:func:`load_tensors` with ``no_dist``).

The folder is written under a temporary name and renamed when every rank has finished, so a
killed save never leaves a torn checkpoint. Every rank must see the same folder: one machine,
or a shared file system for several.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

TRAINER_FILE = "trainer.pt"
METADATA_FILE = ".metadata"


def is_sharded_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file() and (p / TRAINER_FILE).is_file()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(path: str | Path, tensors: dict[str, Any], trainer_state: dict[str, Any]) -> None:
    """Collective: every rank calls it with its own shards; rank 0 writes ``trainer_state``."""
    final = Path(path)
    token = [uuid.uuid4().hex if _rank() == 0 else None]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(token, src=0)
    tmp = final.with_name(f".{final.name}.{token[0]}.tmp")
    dcp.save(tensors, checkpoint_id=str(tmp))
    if _rank() == 0:
        torch.save(trainer_state, tmp / TRAINER_FILE)
        old = final.with_name(f".{final.name}.{token[0]}.old")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_tensors(path: str | Path, tensors: dict[str, Any], no_dist: bool = False) -> None:
    """Fill ``tensors`` (a state_dict of this rank's shards, or of whole tensors) in place from
    the checkpoint at ``path``; ``no_dist`` reads it in this process alone."""
    if not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a sharded checkpoint folder (no {METADATA_FILE} and {TRAINER_FILE})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(tensors, checkpoint_id=str(path), no_dist=no_dist)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAINER_FILE, map_location="cpu", weights_only=True)


def load_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Load a sharded checkpoint's ``state_dict`` into an unsharded ``module`` (a LightningModule
    built as for training), in this process alone: the gathered model export and scoring use."""
    state = {"state_dict": module.state_dict()}
    load_tensors(path, state, no_dist=True)
    module.load_state_dict(state["state_dict"])


def read_model_state(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """The checkpoint's weights for ``model`` (an unsharded MultiTaskModel), as its state_dict."""
    state = {"state_dict": {f"model.{k}": v.clone() for k, v in model.state_dict().items()}}
    load_tensors(path, state, no_dist=True)
    return {k.removeprefix("model."): v for k, v in state["state_dict"].items()}


def remove(path: str | Path) -> None:
    if _rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
