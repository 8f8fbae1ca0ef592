"""One optimiser object that steps two inner optimisers: embeddings and dense layers.

Lightning's automatic optimisation wants exactly one optimiser whose ``step`` runs the closure
(forward + backward) once. Two torch optimisers each given the closure would run it twice and
step twice per batch. :class:`SplitOptimizer` runs it once, then steps both inner optimisers.

Why two: embedding tables get dense gradients from an unsharded ``EmbeddingBagCollection``, so
Adam's momentum keeps moving rows that were not in the batch; Adagrad leaves a row with a zero
gradient where it is (the rule torchrec's fused row-wise Adagrad applies to sharded tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


class SplitOptimizer(torch.optim.Optimizer):
    """``param_groups`` is the union of the inner optimisers' groups (so gradient clipping and
    LR schedulers see every parameter); state is saved per inner optimiser."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = {k: o for k, o in optimizers.items() if o is not None}
        params = [p for o in self.optimizers.values() for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers.values() for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers.values():
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state_dict[k])


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
    embedding_optimizer: str, embedding_lr: float,
) -> torch.optim.Optimizer:
    """Adam for dense layers (``weight_decay`` applies there only); ``embedding_optimizer``
    (``adagrad`` or ``adam``) for embedding tables: parameters under an ``embeddings`` module or
    a torchrec collection (``ebc``, wherever it sits: task tables, the position tower)."""
    emb, dense = [], []
    for name, p in named_params:
        if p.requires_grad:
            path = f".{name}"
            (emb if ".embeddings." in path or ".ebc." in path else dense).append(p)
    dense_opt = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay) if dense else None
    if not emb:
        return dense_opt
    if embedding_optimizer == "adagrad":
        emb_opt = torch.optim.Adagrad(emb, lr=embedding_lr)
    else:
        emb_opt = torch.optim.Adam(emb, lr=embedding_lr)
    return SplitOptimizer({"embeddings": emb_opt, "dense": dense_opt})
