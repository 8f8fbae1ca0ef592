"""The promotion rule as a pure function: every branch, both metric directions."""

import pytest

from recsys_moe.config import PromotionConfig
from recsys_moe.promotion import decide

AUC = PromotionConfig(metric="ctr/auc")


def test_failed_gates_keep_the_champion_even_without_one():
    d = decide(AUC, 0.9, ["ctr/auc = 0.9 is below the minimum 0.95"], has_champion=False)
    assert not d.promote and d.reason.startswith("quality gates failed: ctr/auc")


def test_first_model_is_promoted():
    assert decide(AUC, 0.7, [], has_champion=False).promote


@pytest.mark.parametrize(("mine", "theirs", "margin", "promote"), [
    (0.75, 0.74, 0.0, True),
    (0.74, 0.74, 0.0, False),  # a tie does not replace the champion
    (0.745, 0.74, 0.01, False),  # better, but not by more than the margin
    (0.751, 0.74, 0.01, True),
    (0.73, 0.74, 0.0, False),
])
def test_margin(mine, theirs, margin, promote):
    d = decide(PromotionConfig(metric="ctr/auc", margin=margin), mine, [], champion_value=theirs, has_champion=True)
    assert d.promote is promote
    assert ("beats the champion's" in d.reason) if promote else (f"by more than {margin:g}" in d.reason)


def test_lower_is_better_metrics_promote_on_a_decrease():
    rule = PromotionConfig(metric="ctr/logloss", margin=0.001)
    assert decide(rule, 0.500, [], champion_value=0.510, has_champion=True).promote
    assert not decide(rule, 0.5095, [], champion_value=0.510, has_champion=True).promote
    assert not decide(rule, 0.520, [], champion_value=0.510, has_champion=True).promote


def test_require_significant():
    rule = PromotionConfig(metric="ctr/auc", require_significant=True)
    gain = {"value": 0.75, "failed_gates": [], "champion_value": 0.74, "has_champion": True}
    assert decide(rule, **gain, interval={"significant": True, "low": 0.002, "high": 0.018}).promote
    noisy = decide(rule, **gain, interval={"significant": False, "low": -0.001, "high": 0.021})
    assert not noisy.promote and "bootstrap interval includes 0" in noisy.reason
    none = decide(PromotionConfig(metric="ctr/logloss", require_significant=True), 0.5, [], champion_value=0.6, has_champion=True)
    assert not none.promote and "no bootstrap interval" in none.reason
    assert decide(PromotionConfig(metric="ctr/auc"), **gain, interval={"significant": False}).promote  # not required


def test_missing_values_keep_the_champion():
    assert not decide(AUC, None, [], champion_value=0.7, has_champion=True).promote
    assert not decide(AUC, 0.7, [], champion_value=float("nan"), has_champion=True).promote
