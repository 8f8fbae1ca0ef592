"""Task kinds: how many outputs a tower has, the loss, and the prediction in user units.

Output names are the serving contract's (:mod:`recsys_moe.contract`): ``logits_<t>`` /
``probs_<t>`` for binary tasks, ``pred_<t>`` (expected seconds) for watch time; losses
``loss_<t>``; metrics ``<t>/<metric>`` (:mod:`recsys_moe.metrics.names`).

Watch-time losses:

- ``log1p_mse``: regress ``log1p(seconds)``; prediction ``expm1(output)`` (a geometric-mean-like
  estimate, the right target for RMSE on log1p seconds).
- ``weighted_logistic``: YouTube's weighted logistic regression (Covington, Adams & Sargin,
  RecSys 2016): a watch (seconds > 0) is a positive weighted by its seconds, a non-watch a
  negative with weight 1; the odds ``exp(logit)`` then estimate expected watch time.
- ``ziln``: zero-inflated lognormal (Wang, Liu & Miao, 2019, "A Deep Probabilistic Model for
  Customer Lifetime Value Prediction"): outputs ``(logit p, mu, sigma)``; loss is the BCE of
  "watched" plus the lognormal negative log-likelihood of the positive seconds; prediction
  ``sigmoid(p) * exp(mu + sigma^2 / 2)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys_moe import contract
from recsys_moe.config import TaskConfig


class Task:
    """Base: subclasses set ``output_dim`` and implement ``loss`` / ``outputs``."""

    output_dim = 1

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.label = cfg.label_column
        self.weight = cfg.weight

    def loss(self, raw: Tensor, label: Tensor) -> Tensor:
        raise NotImplementedError

    calibrated_column = 0
    """The output column that post-training calibration maps (see :meth:`calibrate`)."""

    def calibrate(self, raw: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``raw`` with its :attr:`calibrated_column` mapped to ``scale * column + shift``: a
        monotone map, so rankings are unchanged (fitted on the validation split by
        :mod:`recsys_moe.training.calibration`; identity until then)."""
        c = self.calibrated_column
        col = raw[:, c: c + 1] * scale.to(raw.dtype) + shift.to(raw.dtype)
        return torch.cat([raw[:, :c], col, raw[:, c + 1:]], dim=1) if raw.shape[1] > 1 else col

    def outputs(self, raw: Tensor) -> dict[str, Tensor]:
        """Named outputs of one tower (``raw: [B, output_dim]``)."""
        raise NotImplementedError

    @property
    def prediction_name(self) -> str:
        """The output holding the prediction in user units (probability or seconds)."""
        raise NotImplementedError


class BinaryTask(Task):
    """Click-through: BCE on logits (never sigmoid + BCELoss, which breaks under autocast)."""

    def loss(self, raw: Tensor, label: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(raw[:, 0].float(), label.float())

    def outputs(self, raw: Tensor) -> dict[str, Tensor]:
        logits = raw[:, 0].float()
        return {contract.logits_name(self.name): logits, self.prediction_name: torch.sigmoid(logits)}

    @property
    def prediction_name(self) -> str:
        return contract.prediction_name(self.name, contract.BINARY)


class WatchTimeTask(Task):
    """Expected watch time in seconds, learned with one of three losses (see module docstring)."""

    MIN_SIGMA = 1e-3

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self.kind = cfg.loss_name
        self.output_dim = 3 if self.kind == "ziln" else 1
        self.calibrated_column = 1 if self.kind == "ziln" else 0  # ziln: shift mu, i.e. scale the seconds

    def loss(self, raw: Tensor, label: Tensor) -> Tensor:
        raw, y = raw.float(), label.float().clamp_min(0.0)
        if self.kind == "log1p_mse":
            return F.mse_loss(raw[:, 0], torch.log1p(y))
        if self.kind == "weighted_logistic":
            positive = (y > 0).float()
            weight = torch.where(y > 0, y, torch.ones_like(y))
            return F.binary_cross_entropy_with_logits(raw[:, 0], positive, weight=weight)
        return ziln_loss(raw, y, self.MIN_SIGMA)

    def outputs(self, raw: Tensor) -> dict[str, Tensor]:
        raw = raw.float()
        if self.kind == "log1p_mse":
            seconds = torch.expm1(raw[:, 0]).clamp_min(0.0)
        elif self.kind == "weighted_logistic":
            seconds = torch.exp(raw[:, 0])
        else:
            p = torch.sigmoid(raw[:, 0])
            sigma = F.softplus(raw[:, 2]) + self.MIN_SIGMA
            seconds = p * torch.exp(raw[:, 1] + 0.5 * sigma * sigma)
        return {self.prediction_name: seconds}

    @property
    def prediction_name(self) -> str:
        return contract.prediction_name(self.name, contract.WATCH_TIME)


def ziln_loss(raw: Tensor, y: Tensor, min_sigma: float = 1e-3) -> Tensor:
    """Mean over rows of BCE(watched) + [y > 0] * lognormal NLL(y; mu, sigma)."""
    positive = (y > 0).float()
    bce = F.binary_cross_entropy_with_logits(raw[:, 0], positive, reduction="none")
    mu, sigma = raw[:, 1], F.softplus(raw[:, 2]) + min_sigma
    log_y = torch.log(torch.where(y > 0, y, torch.ones_like(y)))
    nll = log_y + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + (log_y - mu) ** 2 / (2 * sigma * sigma)
    return (bce + positive * nll).mean()


def build_task(cfg: TaskConfig) -> Task:
    return BinaryTask(cfg) if cfg.kind == contract.BINARY else WatchTimeTask(cfg)


def build_tasks(cfgs: list[TaskConfig]) -> list[Task]:
    return [build_task(c) for c in cfgs]
