"""Each loss against a value computed by hand on a two-row example."""

import math

import pytest
import torch

from recsys_moe.config import TaskConfig
from recsys_moe.tasks import build_task


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def watch(loss: str):
    return build_task(TaskConfig(name="watch_time", kind="watch_time", loss=loss))


def test_bce_on_logits():
    task = build_task(TaskConfig(name="ctr", kind="binary"))
    raw = torch.tensor([[0.5], [-1.0]])
    label = torch.tensor([1.0, 0.0])
    expected = -(math.log(sigmoid(0.5)) + math.log(1 - sigmoid(-1.0))) / 2
    assert float(task.loss(raw, label)) == pytest.approx(expected, rel=1e-6)
    out = task.outputs(raw)
    assert set(out) == {"logits_ctr", "probs_ctr"}
    assert float(out["probs_ctr"][0]) == pytest.approx(sigmoid(0.5))


def test_log1p_mse():
    raw = torch.tensor([[1.0], [2.0]])
    label = torch.tensor([0.0, math.e - 1])  # log1p -> 0, 1
    assert float(watch("log1p_mse").loss(raw, label)) == pytest.approx((1.0 + 1.0) / 2)
    assert float(watch("log1p_mse").outputs(raw)["pred_watch_time"][1]) == pytest.approx(math.e**2 - 1, rel=1e-6)


def test_weighted_logistic_weights_positives_by_seconds():
    raw = torch.tensor([[0.2], [-0.3]])
    label = torch.tensor([12.0, 0.0])
    expected = (12.0 * -math.log(sigmoid(0.2)) + 1.0 * -math.log(1 - sigmoid(-0.3))) / 2
    assert float(watch("weighted_logistic").loss(raw, label)) == pytest.approx(expected, rel=1e-6)
    assert float(watch("weighted_logistic").outputs(raw)["pred_watch_time"][0]) == pytest.approx(math.exp(0.2), rel=1e-6)


def test_ziln_loss_and_expected_value():
    task = watch("ziln")
    assert task.output_dim == 3
    raw = torch.tensor([[0.4, 1.5, 0.3], [-0.7, 0.2, -0.5]])
    label = torch.tensor([5.0, 0.0])
    sig = math.log1p(math.exp(0.3)) + task.MIN_SIGMA
    nll = math.log(5.0) + math.log(sig) + 0.5 * math.log(2 * math.pi) + (math.log(5.0) - 1.5) ** 2 / (2 * sig * sig)
    bce = -math.log(sigmoid(0.4)) - math.log(1 - sigmoid(-0.7))
    assert float(task.loss(raw, label)) == pytest.approx((bce + nll) / 2, rel=1e-5)
    pred = float(task.outputs(raw)["pred_watch_time"][0])
    assert pred == pytest.approx(sigmoid(0.4) * math.exp(1.5 + sig * sig / 2), rel=1e-5)


def test_loss_must_fit_the_task_kind():
    with pytest.raises(ValueError, match="does not fit"):
        TaskConfig(name="ctr", kind="binary", loss="ziln")
