"""A shallow tower for position bias (Zhao et al., "Recommending What Video to Watch Next",
RecSys 2019, the YouTube ranking system).

Clicks depend on where an item was shown as well as on the item: the top slot gets clicks a
lower slot would not. Fed to the main model, position would be learned tangled with relevance.
Here a small separate tower reads only the slot features (position, surface); its logit is
added to the click logit in training, so it absorbs the slot's effect, and is replaced by one
learned constant outside training, so every candidate is scored as if it sat in the same slot.
The constant is trained on a share of training rows whose slot is hidden (the paper's position
dropout), so it is the logit of an average slot and the probabilities stay calibrated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

from recsys_moe.modules.embeddings import SparseEmbedding
from recsys_moe.modules.mlp import MLP


class PositionTower(nn.Module):
    """``forward(sparse)`` -> position logit ``[B]`` (training: the tower's, or ``unknown`` for a
    ``dropout`` share of rows; otherwise ``unknown`` for every row)."""

    def __init__(self, embedding: SparseEmbedding, hidden: Sequence[int] = (8,), dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"position dropout must be in [0, 1), got {dropout}")
        self.embedding = embedding
        self.mlp = MLP(embedding.out_dim, hidden, out_dim=1)
        self.unknown = nn.Parameter(torch.zeros(()))
        """The logit of an unknown slot: what scoring adds for every candidate."""
        self.dropout = dropout

    def forward(self, sparse: KeyedJaggedTensor) -> Tensor:
        if not self.training:
            return self.unknown.expand(sparse.stride())
        logit = self.mlp(self.embedding(sparse))[:, 0]
        if self.dropout:
            hidden = torch.rand(logit.shape, device=logit.device) < self.dropout
            logit = torch.where(hidden, self.unknown.to(logit.dtype), logit)
        return logit
