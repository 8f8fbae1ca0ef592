"""Per-model summaries: segments, ranking score, quality gates (no model needed)."""

import numpy as np
import pytest

from recsys_moe.config import ConfigError, EvaluationConfig, QualityGate, load_config
from recsys_moe.evaluation.summary import (
    EvalRows,
    check_gates,
    evaluate_predictions,
    headline,
    segment_labels,
)
from recsys_moe.metrics.functions import auc
from tests.conftest import ROOT


def _rows(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 100, n)
    click = (rng.random(n) < 0.3).astype(float)
    watch = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(15, n))
    counts = np.where(user < 10, 0, user * 3)  # users 0-9 are cold
    return EvalRows(np.arange(n), user, rng.integers(0, 50, n), click, watch, counts, np.full(n, 5)), rng


def test_segments_partition_the_rows_and_empty_buckets_report_size_only():
    rows, rng = _rows()
    preds = {"ctr": np.clip(rows.click * 0.3 + rng.random(rows.click.size) * 0.5, 0.01, 0.99),
             "watch_time": rows.watch_time_s * 0.5 + 1}
    kinds = {"ctr": "binary", "watch_time": "watch_time"}
    cfg = EvaluationConfig(item_popularity_edges=[1, 10, 100])
    out = evaluate_predictions(preds, kinds, rows, cfg)
    users = out["segments"]["user_activity"]
    assert sum(b["rows"] for b in users.values()) == len(rows)
    assert users["0 (cold)"]["rows"] == int((rows.user < 10).sum())
    cold = rows.user_train_count == 0
    assert users["0 (cold)"]["ctr/auc"] == pytest.approx(auc(preds["ctr"][cold], rows.click[cold]))
    items = out["segments"]["item_popularity"]
    assert items["1-9"]["rows"] == len(rows)  # every item has 5 train impressions
    assert items["0 (cold)"] == {"rows": 0} and items["100+"] == {"rows": 0}
    flat = headline(out)
    assert {"ctr/auc", "ctr/gauc", "ctr/ece", "watch_time/xauc", "ranking/ndcg_at_10"} <= set(flat)


def test_segment_names_follow_the_edges():
    idx, names = segment_labels(np.array([0, 1, 9, 10, 49, 50, 10_000]), [1, 10, 50])
    assert names == ["0 (cold)", "1-9", "10-49", "50+"]
    assert idx.tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_ranking_uses_the_given_score_not_the_predictions():
    rows, rng = _rows()
    preds = {"ctr": rng.random(len(rows)), "watch_time": rng.random(len(rows)) * 30}
    kinds = {"ctr": "binary", "watch_time": "watch_time"}
    cfg = EvaluationConfig(score_exponents={"ctr": 1.0, "watch_time": 0.5})
    default = evaluate_predictions(preds, kinds, rows, cfg, with_segments=False)
    same = evaluate_predictions(preds, kinds, rows, cfg, with_segments=False,
                                score=preds["ctr"] * np.sqrt(preds["watch_time"]))
    ideal = evaluate_predictions(preds, kinds, rows, cfg, with_segments=False, score=rows.watch_time_s)
    assert same["ranking"]["ndcg_at_10"] == pytest.approx(default["ranking"]["ndcg_at_10"])
    assert ideal["ranking"]["ndcg_at_10"] == pytest.approx(1.0) and default["ranking"]["ndcg_at_10"] < 0.99
    assert default["ranking"]["score"] == "ctr^1 * watch_time^0.5"


def test_gates_name_the_failed_metric_and_bound():
    cfg = EvaluationConfig(gates=[QualityGate(metric="ctr/auc", min=0.7), QualityGate(metric="ctr/ece", max=0.01)],
                           fail_on_collapse=True)
    failed = check_gates({"ctr/auc": 0.65, "ctr/ece": 0.005}, cfg, collapsed=[2])
    assert failed[0].startswith("ctr/auc = 0.6500 is below the minimum 0.7")
    assert any("expert(s) [2] collapsed" in f for f in failed) and len(failed) == 2
    assert check_gates({"ctr/auc": 0.75, "ctr/ece": 0.005}, cfg, collapsed=[]) == []
    assert check_gates({"ctr/auc": float("nan"), "ctr/ece": 0.0}, cfg, None) == ["ctr/auc: no value on this split"]


@pytest.mark.parametrize(("override", "message"), [
    ("evaluation.gates=[{metric: ctr/auc_typo, min: 0.5}]", "unknown metric 'ctr/auc_typo'"),
    ("evaluation.gates=[{metric: ctr/auc}]", "give min, max or both"),
    ("evaluation.score_exponents={click: 1.0}", "unknown tasks ['click']"),
    ("evaluation.user_activity_edges=[10, 5]", "strictly increasing"),
])
def test_bad_evaluation_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(ROOT / "configs/synthetic.yaml", [override])
