"""All evaluation numbers of one model on one split, as a JSON-ready dict, plus comparisons and
quality gates. Every metric is vectorised over rows (see :mod:`recsys_moe.metrics.functions`);
names follow :mod:`recsys_moe.metrics.names`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_moe import contract
from recsys_moe.config import EvaluationConfig
from recsys_moe.evaluation.bootstrap import auc_delta_ci
from recsys_moe.metrics import functions as m
from recsys_moe.metrics.names import RANKING, key


@dataclass
class EvalRows:
    """Keys and labels of the evaluated rows, in prediction order."""

    impression_id: np.ndarray
    user: np.ndarray
    item: np.ndarray
    click: np.ndarray
    watch_time_s: np.ndarray
    user_train_count: np.ndarray
    item_train_count: np.ndarray

    def __len__(self) -> int:
        return int(self.click.size)

    def label(self, kind: str) -> np.ndarray:
        return self.click if kind == contract.BINARY else self.watch_time_s


def clean(value: Any) -> Any:
    """NaN -> None (JSON has no NaN); numpy scalars -> Python numbers; recurse into containers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def binary_metrics(prob: np.ndarray, label: np.ndarray, users: np.ndarray, bins: int) -> dict[str, Any]:
    g = m.gauc(prob, label, users)
    cal = m.calibration(prob, label, bins)
    return {
        "auc": m.auc(prob, label), "gauc": g.value, "gauc_users": g.groups_used, "gauc_skipped_users": g.groups_skipped,
        "logloss": m.logloss(prob, label), "ne": m.normalized_entropy(prob, label),
        "mean_pred": float(prob.mean()), "observed_rate": float(label.mean()),
        "calibration": cal.ratio, "ece": cal.ece,
        "reliability": {"pred": cal.bin_pred, "observed": cal.bin_observed, "count": cal.bin_count},
    }


def watch_metrics(seconds: np.ndarray, label: np.ndarray, users: np.ndarray, max_pairs: int, seed: int) -> dict[str, Any]:
    p, y = np.log1p(np.clip(seconds, 0, None)), np.log1p(np.clip(label, 0, None))
    x = m.xauc(seconds, label, users, max_pairs, seed)
    # predicted vs observed seconds in 20 bins of equal row count along the prediction
    order = np.argsort(seconds)
    chunks = np.array_split(order, min(20, seconds.size))
    return {
        "rmse_log1p": m.rmse(p, y), "mae_log1p": m.mae(p, y), "spearman": m.spearman(p, y),
        "xauc": x.value, "xauc_pairs": x.pairs, "xauc_sampled": x.sampled,
        "mean_pred_s": float(seconds.mean()), "mean_observed_s": float(label.mean()),
        "binned": {"pred_s": [float(seconds[c].mean()) for c in chunks], "observed_s": [float(label[c].mean()) for c in chunks]},
    }


def segment_labels(counts: np.ndarray, edges: list[int]) -> tuple[np.ndarray, list[str]]:
    """Bucket index per row and bucket names: ``[0, e0)`` is "cold", then ``[e_i, e_{i+1})``."""
    names = ["0 (cold)" if edges[0] == 1 else f"<{edges[0]}"]
    names += [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=False)] + [f"{edges[-1]}+"]
    return np.searchsorted(np.asarray(edges), counts, side="right"), names


def _segment(preds: dict[str, np.ndarray], kinds: dict[str, str], rows: EvalRows, mask: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": int(mask.sum())}
    if not out["rows"]:
        return out  # an empty segment reports its size only
    for t, kind in kinds.items():
        p, y = preds[t][mask], rows.label(kind)[mask]
        if kind == contract.BINARY:
            out[f"{t}/auc"] = m.auc(p, y)
            out[f"{t}/logloss"] = m.logloss(p, y)
            out[f"{t}/calibration"] = float(p.mean() / y.mean()) if y.mean() > 0 else float("nan")
        else:
            lp, ly = np.log1p(np.clip(p, 0, None)), np.log1p(np.clip(y, 0, None))
            out[f"{t}/rmse_log1p"] = m.rmse(lp, ly)
            out[f"{t}/spearman"] = m.spearman(lp, ly)
            out[f"{t}/mean_pred_s"], out[f"{t}/mean_observed_s"] = float(p.mean()), float(y.mean())
    return out


def evaluate_predictions(preds: dict[str, np.ndarray], kinds: dict[str, str], rows: EvalRows, cfg: EvaluationConfig,
                         seed: int = 0, with_segments: bool = True, score: np.ndarray | None = None) -> dict[str, Any]:
    """Per task, ranking and (optionally) segment metrics of one model's predictions; ``score``
    is the model's ranking score (default: :func:`recsys_moe.contract.ranking_score` of the
    predictions with ``cfg.score_exponents``)."""
    for t, p in preds.items():
        if p.size != len(rows):
            raise m.MetricError(f"task {t!r}: {p.size} predictions for {len(rows)} rows")
    out: dict[str, Any] = {"rows": len(rows), "users": int(np.unique(rows.user).size), "tasks": {}}
    for t, kind in kinds.items():
        if kind == contract.BINARY:
            out["tasks"][t] = binary_metrics(preds[t], rows.click, rows.user, cfg.calibration_bins)
        else:
            out["tasks"][t] = watch_metrics(preds[t], rows.watch_time_s, rows.user, cfg.xauc_max_pairs, seed)
    if score is None:
        score = contract.ranking_score(preds, cfg.score_exponents)
    elif score.size != len(rows):
        raise m.MetricError(f"{score.size} scores for {len(rows)} rows")
    ranking: dict[str, Any] = {"score": " * ".join(f"{t}^{a:g}" for t, a in cfg.score_exponents.items() if a),
                               "gain": contract.LABEL_OF_KIND[contract.WATCH_TIME]}
    for k, (value, users) in m.ndcg_at_ks(score, rows.watch_time_s, rows.user, list(cfg.ndcg_k)).items():
        ranking[f"ndcg_at_{k}"] = value
        ranking["users"] = users
    out["ranking"] = ranking
    if with_segments:
        out["segments"] = {}
        for name, counts, edges in (("user_activity", rows.user_train_count, cfg.user_activity_edges),
                                    ("item_popularity", rows.item_train_count, cfg.item_popularity_edges)):
            bucket, names = segment_labels(counts, edges)
            out["segments"][name] = {label: _segment(preds, kinds, rows, bucket == i) for i, label in enumerate(names)}
    return out


def headline(result: dict[str, Any]) -> dict[str, float]:
    """Flat ``<task>/<metric>`` and ``ranking/ndcg_at_k`` numbers (what gates and MLflow see)."""
    flat: dict[str, float] = {}
    for t, block in result["tasks"].items():
        for k, v in block.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                flat[key(t, k)] = float(v)
    for k, v in result.get("ranking", {}).items():
        if k.startswith("ndcg_at_"):
            flat[f"{RANKING}/{k}"] = float(v)
    return flat


def compare_models(primary: dict[str, np.ndarray], other: dict[str, np.ndarray], kinds: dict[str, str], rows: EvalRows,
                   cfg: EvaluationConfig, seed: int = 0) -> dict[str, Any]:
    """Bootstrap intervals for AUC(primary) - AUC(other) of every binary task both models have."""
    out: dict[str, Any] = {}
    for t, kind in kinds.items():
        if kind != contract.BINARY or t not in other:
            continue
        ci = auc_delta_ci(primary[t], other[t], rows.click, rows.user, cfg.bootstrap_samples, cfg.confidence, seed)
        out[key(t, "auc")] = {"delta": ci.delta, "low": ci.low, "high": ci.high, "samples": ci.samples,
                           "level": ci.level, "significant": ci.significant}
    return out


def check_gates(flat: dict[str, float], cfg: EvaluationConfig, collapsed: list[int] | None) -> list[str]:
    """One line per failed quality gate (empty when all pass)."""
    failed = []
    for gate in cfg.gates:
        value = flat.get(gate.metric)
        if value is None or math.isnan(value):
            failed.append(f"{gate.metric}: no value on this split")
            continue
        if gate.min is not None and value < gate.min:
            failed.append(f"{gate.metric} = {value:.4f} is below the minimum {gate.min:g}")
        if gate.max is not None and value > gate.max:
            failed.append(f"{gate.metric} = {value:.4f} is above the maximum {gate.max:g}")
    if cfg.fail_on_collapse and collapsed:
        failed.append(f"gates: expert(s) {collapsed} collapsed (under the collapse threshold for every task)")
    return failed
