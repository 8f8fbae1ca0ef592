"""The serving contract: output names, the ranking score and its exponents."""

import numpy as np
import pytest

from recsys_moe import contract
from recsys_moe.config import TaskConfig
from recsys_moe.tasks import build_task


def test_output_names_round_trip_and_match_the_tasks():
    for cfg in (TaskConfig(name="ctr", kind="binary"), TaskConfig(name="watch_time", kind="watch_time")):
        name = build_task(cfg).prediction_name
        assert name == contract.prediction_name(cfg.name, cfg.kind)
        assert contract.task_of_output(name) == (cfg.name, cfg.kind)
    assert contract.task_of_output(contract.SCORE) is None and contract.task_of_output("logits_ctr") is None
    assert contract.input_names(["a", "b"]) == ["ids", "list_a", "list_b", "dense"]


def test_score_is_the_product_of_powered_floored_predictions():
    preds = {"ctr": np.array([0.5, 0.1, 0.0]), "watch_time": np.array([10.0, 40.0, 3.0])}
    got = contract.ranking_score(preds, {"ctr": 1.0, "watch_time": 0.5})
    np.testing.assert_allclose(got, [0.5 * 10**0.5, 0.1 * 40**0.5, 1e-12 * 3**0.5])
    np.testing.assert_allclose(contract.ranking_score(preds, {"ctr": 1.0, "watch_time": 0.0}), [0.5, 0.1, 1e-12])
    np.testing.assert_allclose(contract.ranking_score(preds, {}), [1.0, 1.0, 1.0])
    with pytest.raises(contract.ContractError, match="needs task 'likes'"):
        contract.ranking_score(preds, {"likes": 1.0})


def test_exponents_travel_as_text_and_a_mismatch_is_refused():
    exps = {"ctr": 1.0, "watch_time": 0.5}
    assert contract.parse_exponents(contract.format_exponents(exps)) == exps
    with pytest.raises(contract.ContractError, match="not TASK=NUMBER"):
        contract.parse_exponents("ctr=1,watch_time")
    assert contract.exponents_for(["ctr", "watch_time"], {"ctr": 2.0}) == {"ctr": 2.0, "watch_time": 0.0}
    contract.check_exponents({"ctr": 1.0, "watch_time": 0.0}, {"ctr": 1.0}, "m.onnx")  # an omitted task is 0
    with pytest.raises(contract.ContractError, match=r"m.onnx: the model's score is ctr=1,watch_time=1 but .* ctr=1,watch_time=0.5"):
        contract.check_exponents({"ctr": 1.0, "watch_time": 1.0}, exps, "m.onnx")
    with pytest.raises(contract.ContractError, match="unknown tasks"):
        contract.exponents_for(["ctr"], exps)
