"""A Lightning strategy that trains with torchrec's ``DistributedModelParallel``.

Lightning ships no torchrec strategy. This one is Lightning's DDP strategy (same launcher,
process group and ranks) with three changes:

- **setup** plans the tables (:mod:`~recsys_moe.training.sharding.plan`, every rank gets rank
  0's plan) and wraps the LightningModule's ``model`` in DMP, which shards the tables and puts
  the dense layers under DDP itself; the LightningModule is not wrapped again. Parameters of the
  LightningModule outside the model (the learned task weights) get their gradients averaged here.
- **optimiser**: the tables' optimiser runs fused in backward; the LightningModule returns
  ``CombinedOptimizer([fused, dense])`` (:func:`combined_optimizer`), whose ``step`` runs
  Lightning's closure once (the fused part ignores it) and then steps the dense Adam.
- **checkpoints** are DCP folders (:mod:`~recsys_moe.training.sharding.checkpoint`), written by
  every rank and restored after setup into whatever world size resumes the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from recsys_moe.config import ShardingConfig
from recsys_moe.training.sharding import checkpoint as sharded_ckpt
from recsys_moe.training.sharding.plan import (
    PlanSummary,
    dense_bytes,
    device_memory_bytes,
    make_planner,
    run_planner,
    summarize,
    table_sizes,
)
from recsys_moe.training.sharding.wrap import (
    fuse_table_optimizer,
    is_sharded,
    load_module_state,
    shard_model,
)

log = logging.getLogger(__name__)


def combined_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The fused table optimiser of ``module.model`` (a DMP) and Adam over every other parameter."""
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    dmp = module.model
    params = dict(in_backward_optimizer_filter(dmp.named_parameters(prefix="model")))
    params |= {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    dense = KeyedOptimizerWrapper(params, lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay))
    return CombinedOptimizer([("tables", dmp.fused_optimizer), ("dense", dense)])


def _to_device_but_meta(module: nn.Module, device: torch.device) -> None:
    """Move every tensor but those on the meta device (the tables DMP allocates as shards)."""
    module._apply(lambda t: t if t.is_meta else t.to(device))


class TorchrecStrategy(DDPStrategy):
    strategy_name = "torchrec_dmp"

    def __init__(self, sharding: ShardingConfig, batch_size: int, embedding_optimizer: str, embedding_lr: float,
                 seed: int, reason: str = "", on_plan: Callable[[PlanSummary], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sharding = sharding
        self.batch_size = batch_size
        self.embedding_optimizer = embedding_optimizer
        self.embedding_lr = embedding_lr
        self.seed = seed
        self.reason = reason
        self.on_plan = on_plan
        self.plan_summary: PlanSummary | None = None

    def setup(self, trainer: L.Trainer) -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        module = self.lightning_module
        if not is_sharded(module.model):
            _to_device_but_meta(module, self.root_device)
            module.model = self._shard(module.model)
        self.model = module
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def _shard(self, model: nn.Module) -> nn.Module:
        tables = table_sizes(model)
        device = self.root_device
        compute = "cuda" if device.type == "cuda" else "cpu"
        memory = device_memory_bytes(self.sharding, device, self.num_processes)
        fuse_table_optimizer(model, self.embedding_optimizer, self.embedding_lr)
        planner = make_planner(self.sharding, tables, self.world_size, self.num_processes, compute, memory, self.batch_size, dense_bytes(model))
        plan = run_planner(planner, model, dist.GroupMember.WORLD)
        self.plan_summary = summarize(plan, model, self.world_size, compute, memory, self.reason, self.embedding_optimizer)
        if self.global_rank == 0:
            log.info("%s", self.plan_summary.format())
            if self.on_plan is not None:
                self.on_plan(self.plan_summary)
        return shard_model(model, plan, device, self.seed)

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        """Average the gradients of the LightningModule's own parameters (outside DMP's DDP)."""
        if self.world_size == 1:
            return
        for p in self.lightning_module.parameters(recurse=False):
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    # checkpoints: DCP folders, written by every rank, restored after setup
    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True

    @property
    def lightning_restore_optimizer(self) -> bool:
        return False

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        checkpoint = dict(checkpoint)
        tensors = {"state_dict": checkpoint.pop("state_dict")}
        optimizers = checkpoint.pop("optimizer_states", [])
        if optimizers:
            tensors["optimizer"] = optimizers[0]
        sharded_ckpt.save(filepath, tensors, checkpoint)

    def remove_checkpoint(self, filepath: Any) -> None:
        sharded_ckpt.remove(filepath)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        module = self.lightning_module
        tensors: dict[str, Any] = {"state_dict": module.state_dict()}
        if self.optimizers:
            optimizer = self.optimizers[0]
            optimizer.init_state()  # the dense optimiser's state exists only after a step: create it to load into
            tensors["optimizer"] = optimizer.state_dict()
        sharded_ckpt.load_tensors(checkpoint_path, tensors)
        load_module_state(module, tensors["state_dict"])
        if self.optimizers:
            self.optimizers[0].load_state_dict(tensors["optimizer"])
        return sharded_ckpt.load_trainer_state(checkpoint_path)

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """Loaded by :meth:`load_checkpoint` already."""

    def teardown(self) -> None:
        # Not Strategy.teardown's ``module.cpu()``: the tables are this rank's shards (still on the
        # meta device if sharding failed) and nothing uses the module on this rank afterwards.
        self.model = self.lightning_module
        assert self.cluster_environment is not None and self.accelerator is not None
        self.cluster_environment.teardown()
        self.precision_plugin.teardown()
        self.accelerator.teardown()
        self.checkpoint_io.teardown()
