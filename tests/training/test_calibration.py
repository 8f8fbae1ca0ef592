"""Post-training calibration: Platt scaling of the click logit, expected seconds for watch time."""

import numpy as np
import pytest
import torch

from recsys_moe.config import TaskConfig
from recsys_moe.metrics.functions import spearman
from recsys_moe.tasks import WatchTimeTask
from recsys_moe.training.artifacts import load_model
from recsys_moe.training.calibration import fit_task, platt, seconds_shift
from recsys_moe.training.train import train
from tests.conftest import one_epoch


def test_platt_recovers_a_known_scale_and_shift():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 200_000)
    y = rng.random(z.size) < 1 / (1 + np.exp(-(0.6 * z - 0.4)))
    a, b = platt(z, y)
    assert a == pytest.approx(0.6, abs=0.02) and b == pytest.approx(-0.4, abs=0.02)
    assert platt(z, np.zeros_like(z)) == (1.0, 0.0)  # one class only: identity


@pytest.mark.parametrize("loss", ["log1p_mse", "ziln", "weighted_logistic"])
def test_the_shift_makes_mean_predicted_seconds_the_observed_mean(loss):
    """A log-scale regression's expm1 is a geometric mean, far under the mean of heavy-tailed
    seconds; after the shift the mean matches, and the ranking is unchanged."""
    rng = np.random.default_rng(1)
    mu = rng.normal(2.0, 1.0, 50_000)
    y = np.expm1(np.clip(mu + rng.normal(0, 1.2, mu.size), 0, None))  # heavy tail around exp(mu)
    task = WatchTimeTask(TaskConfig(name="watch_time", kind="watch_time", loss=loss))
    raw = {"log1p_mse": mu[:, None], "weighted_logistic": mu[:, None] - 0.5,
           "ziln": np.stack([np.full_like(mu, 2.0), mu - 1.0, np.zeros_like(mu)], 1)}[loss]
    before = task.outputs(torch.from_numpy(raw))["pred_watch_time"].numpy()
    scale, shift = fit_task(task, raw, y)
    assert scale == 1.0
    t = torch.from_numpy(raw)
    after = task.outputs(task.calibrate(t, torch.tensor(scale), torch.tensor(shift)))["pred_watch_time"].numpy()
    assert abs(before.mean() / y.mean() - 1) > 0.2, "the uncalibrated mean should be off for this test to mean anything"
    assert after.mean() == pytest.approx(y.mean(), rel=1e-4)
    # monotone: the ranking is the same up to float32 ties (and expm1's clamp at 0 s)
    assert spearman(after, y) == pytest.approx(spearman(before, y), abs=1e-4)


def test_no_positive_seconds_means_no_shift():
    task = WatchTimeTask(TaskConfig(name="watch_time", kind="watch_time"))
    assert seconds_shift(task, np.ones((10, 1)), np.zeros(10)) == 0.0


@pytest.mark.slow
def test_calibrate_false_keeps_the_identity(small_features, tmp_path):
    cfg, _ = small_features
    tasks = cfg.tasks.model_copy(update={"tasks": [t.model_copy(update={"calibrate": False}) for t in cfg.tasks.tasks]})
    result = train(one_epoch(cfg).model_copy(update={"tasks": tasks}), output_dir=tmp_path / "run", progress=False,
                   evaluate_test=False)
    model, _, meta = load_model(result.model_dir)
    assert meta["calibration"] == {}
    assert model.calibration_scale.tolist() == [1.0, 1.0] and model.calibration_shift.tolist() == [0.0, 0.0]

