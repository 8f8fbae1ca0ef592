"""Multi-layer perceptron: Linear -> ReLU -> Dropout per hidden layer, optional linear output."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] [-> out_dim]``.

    With ``out_dim`` the last layer is linear (logits, regression heads); without it the output is
    the last hidden activation (bottoms, towers feeding a head)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
