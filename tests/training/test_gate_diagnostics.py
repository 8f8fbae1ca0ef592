import logging

import numpy as np
import pytest
import torch

from recsys_moe.training.gate_diagnostics import GateAccumulator, GateSummary


def test_summary_means_entropy_and_collapse(tmp_path, caplog):
    acc = GateAccumulator()
    # task 0 uses experts 0/1 evenly, task 1 only expert 0; expert 2 never gets weight.
    w = torch.tensor([[[0.5, 0.5, 0.0]] * 4, [[1.0, 0.0, 0.0]] * 4])
    acc.update(w[:, :2])
    acc.update(w[:, 2:])
    s = acc.summary(["ctr", "watch_time"], threshold=0.05)
    np.testing.assert_allclose(s.mean_weights, [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(s.entropy, [np.log(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(s.utilisation, [0.75, 0.25, 0.0])
    assert s.collapsed_experts == [2]
    with caplog.at_level(logging.WARNING):
        s.warn_collapse()
    assert "expert collapse" in caplog.text and "[2]" in caplog.text
    m = s.metrics("val/")
    assert m["val/gate/ctr/expert1"] == pytest.approx(0.5) and m["val/gate/collapsed_experts"] == 1.0
    png = s.heatmap(tmp_path / "gates.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = GateSummary.from_json(s.to_json())
    np.testing.assert_allclose(back.mean_weights, s.mean_weights, atol=1e-6)
    assert back.task_names == s.task_names and back.collapsed_experts == [2] and back.threshold == 0.05


def test_no_collapse_when_every_expert_serves_some_task():
    acc = GateAccumulator()
    acc.update(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert acc.summary(["a", "b"], 0.05).collapsed_experts == []
