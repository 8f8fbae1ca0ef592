"""When a newly trained model replaces the champion: a pure decision on evaluation numbers.

The pipeline evaluates the new model and the current champion on the same test rows, then asks
:func:`decide`. The rule, in order:

1. a failed quality gate keeps the champion;
2. with no champion yet, the new model is promoted;
3. the new model must beat the champion on ``pipeline.promotion.metric`` by more than
   ``margin`` (in the metric's better direction, from :mod:`recsys_moe.metrics.names`);
4. with ``require_significant``, the bootstrap interval of that metric's delta must also
   exclude 0 (the evaluation computes intervals for AUC metrics only; elsewhere this fails).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys_moe.config import PromotionConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(rule: PromotionConfig, value: float | None, failed_gates: Sequence[str], champion_value: float | None = None,
           has_champion: bool = False, interval: Mapping[str, Any] | None = None) -> Decision:
    """``value``/``champion_value``: ``rule.metric`` of the new model and of the champion on the
    same rows; ``interval``: the bootstrap interval of the delta (``significant`` key), if any."""
    metric = rule.metric
    if failed_gates:
        return Decision(False, "quality gates failed: " + "; ".join(failed_gates))
    if not has_champion:
        return Decision(True, "no champion yet")
    if value is None or champion_value is None or math.isnan(value) or math.isnan(champion_value):
        return Decision(False, f"{metric} is missing for one of the models")
    gain = value - champion_value if rule.higher_is_better else champion_value - value
    if gain <= rule.margin:
        return Decision(False, f"{metric} {value:.4f} does not beat the champion's {champion_value:.4f} by more than {rule.margin:g}")
    if rule.require_significant and not (interval and interval.get("significant")):
        why = "bootstrap interval includes 0" if interval else "no bootstrap interval for this metric"
        return Decision(False, f"{metric} gain {gain:+.4f} is not significant ({why})")
    return Decision(True, f"{metric} {value:.4f} beats the champion's {champion_value:.4f} by {gain:+.4f}")
