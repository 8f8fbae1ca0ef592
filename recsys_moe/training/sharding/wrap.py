"""A model's embedding tables sharded by torchrec's ``DistributedModelParallel`` (DMP).

DMP replaces each ``EmbeddingBagCollection`` by a sharded one that holds only this rank's shards
(fused with their optimiser: the update runs inside backward, FBGEMM's table-batched kernels)
and exchanges ids and pooled embeddings between ranks with all-to-alls. It wraps the rest (the
dense layers) in DDP itself, so nothing else may wrap the model again.

Tables are built on the meta device (no memory) and allocated as shards by DMP, so no rank ever
holds a whole table it does not own. Shards are initialised from ``N(0, init_std^2)`` (the
unsharded model's rule, :class:`~recsys_moe.modules.SparseEmbedding`) with a seed per table and
shard: the same distribution as an unsharded run, not the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recsys_moe.models import MultiTaskModel

EMBEDDING_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}
"""The fused optimiser per ``training.embedding_optimizer``: FBGEMM's exact Adagrad is torch's
Adagrad on the rows a batch touched (rows it did not touch get a zero gradient, which Adagrad
leaves alone, so it equals the unsharded run's); its Adam updates touched rows only (lazy Adam)."""


def is_sharded(model: nn.Module) -> bool:
    from torchrec.distributed.model_parallel import DistributedModelParallel

    return isinstance(model, DistributedModelParallel)


def table_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
    return [p for emb in model.embedding_sets().values() for p in emb.ebc.parameters()]


def sharders() -> list[Any]:
    """What shards a model's tables: torchrec's EmbeddingBagCollection sharder (its fused
    optimiser comes from :func:`fuse_table_optimizer`)."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return [EmbeddingBagCollectionSharder()]


def fuse_table_optimizer(model: MultiTaskModel, embedding_optimizer: str, embedding_lr: float) -> None:
    """Mark every table for ``embedding_optimizer`` inside backward. Done before planning: the
    planner counts the optimiser's state in each table's memory."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    apply_optimizer_in_backward(EMBEDDING_OPTIMIZERS[embedding_optimizer], table_parameters(model), {"lr": embedding_lr})


def shard_model(model: MultiTaskModel, plan: Any, device: torch.device, seed: int,
                group: dist.ProcessGroup | None = None) -> nn.Module:
    """``model`` (tables on the meta device and marked by :func:`fuse_table_optimizer`, dense
    layers on ``device``) wrapped in DMP with ``plan``."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    init_std = _init_std_by_module(model)
    env = ShardingEnv.from_process_group(group or dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, env=env, device=device, plan=plan, sharders=sharders())
    _initialise_shards(dmp, init_std, seed)
    return dmp


def _init_std_by_module(model: MultiTaskModel) -> dict[str, float]:
    paths = {id(m): name for name, m in model.named_modules()}
    return {f"{paths[id(emb)]}.ebc.": emb.init_std for emb in model.embedding_sets().values() if emb.init_std is not None}


def local_shards(state: Mapping[str, Any]) -> list[tuple[str, Tensor, tuple[int, ...]]]:
    """``(key, local tensor, offsets)`` for every table shard this rank holds in a DMP state_dict
    (the tensors are views of the live weights)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = []
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                out.append((key, shard.tensor, tuple(shard.metadata.shard_offsets)))
    return out


@torch.no_grad()
def _initialise_shards(dmp: nn.Module, init_std: dict[str, float], seed: int) -> None:
    for key, tensor, offsets in local_shards(dmp.state_dict()):
        std = next((s for prefix, s in init_std.items() if key.startswith(prefix)), None)
        if std is None:
            continue
        digest = hashlib.sha256(f"{seed}:{key}:{offsets}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)


@torch.no_grad()
def load_full_state(dmp: nn.Module, full: Mapping[str, Tensor]) -> None:
    """Copy an unsharded model's state_dict into a sharded one: each rank takes its shards' slices
    (what a sharded run started from existing weights needs; the tests compare the two)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    state = dmp.state_dict()
    missing = sorted(set(state) - set(full))
    if missing:
        raise KeyError(f"the unsharded state lacks {missing[:5]}")
    for key, tensor, offsets in local_shards(state):
        rows, cols = tensor.shape
        tensor.copy_(full[key][offsets[0]:offsets[0] + rows, offsets[1]:offsets[1] + cols])
    for key, value in state.items():
        if not isinstance(value, ShardedTensor):
            value.copy_(full[key])


def load_module_state(module: nn.Module, state: Mapping[str, Any]) -> None:
    """``module.load_state_dict(state)`` for a module whose ``model`` may be a DMP: torch's
    loading does not pass through DMP's own ``load_state_dict``, which maps the plain key names
    (those its ``state_dict`` gives) onto the wrapped, sharded modules."""
    if not is_sharded(module.model):
        module.load_state_dict(state)
        return
    module.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    own = {k: v for k, v in state.items() if not k.startswith("model.")}
    expected = {k for k in module.state_dict() if not k.startswith("model.")}
    if set(own) != expected:
        raise KeyError(f"state_dict keys outside the model: got {sorted(own)}, expected {sorted(expected)}")
    module.load_state_dict(own, strict=False)
