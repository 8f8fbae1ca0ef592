"""Evaluation metrics against scikit-learn, scipy and brute-force references, with edge cases."""

import itertools

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from recsys_moe.evaluation.bootstrap import SortedAUC, auc_delta_ci
from recsys_moe.metrics import functions as m


@pytest.fixture
def grouped():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 2000)
    pred = np.round(rng.random(2000), 2)  # rounding makes ties inside users
    label = (rng.random(2000) < 0.2 + 0.5 * pred).astype(float)
    label[users == 7] = 1.0  # one user with one class only
    return users, pred, label


def test_gauc_equals_impression_weighted_sklearn_auc_per_user(grouped):
    users, pred, label = grouped
    num = den = 0.0
    skipped = 0
    for u in np.unique(users):
        sel = users == u
        if len(set(label[sel])) < 2:
            skipped += 1
            continue
        num += roc_auc_score(label[sel], pred[sel]) * sel.sum()
        den += sel.sum()
    got = m.gauc(pred, label, users)
    assert got.value == pytest.approx(num / den, abs=1e-12)
    assert got.groups_skipped == skipped >= 1
    assert got.groups_used == np.unique(users).size - skipped


def test_gauc_with_only_one_class_everywhere_is_nan_not_an_error():
    got = m.gauc(np.array([0.1, 0.2, 0.3]), np.ones(3), np.array([1, 1, 2]))
    assert np.isnan(got.value) and got.groups_used == 0 and got.groups_skipped == 2


def test_normalized_entropy_is_logloss_over_base_rate_entropy(grouped):
    _, pred, label = grouped
    pred = np.clip(pred, 0.01, 0.99)  # away from the clipping where the two logloss eps differ
    p = label.mean()
    want = log_loss(label, pred) / -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert m.normalized_entropy(pred, label) == pytest.approx(want, rel=1e-6)
    assert m.normalized_entropy(np.full(label.size, p), label) == pytest.approx(1.0, rel=1e-9)
    assert np.isnan(m.normalized_entropy(pred, np.zeros(label.size)))


def test_calibration_matches_sklearn_curve_and_hand_ece(grouped):
    _, pred, label = grouped
    cal = m.calibration(pred, label, bins=10)
    prob_true, prob_pred = calibration_curve(label, pred, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(cal.bin_observed, prob_true, atol=1e-12)
    np.testing.assert_allclose(cal.bin_pred, prob_pred, atol=1e-12)
    assert cal.ece == pytest.approx(np.sum(cal.bin_count / pred.size * np.abs(prob_pred - prob_true)))
    assert cal.ratio == pytest.approx(pred.mean() / label.mean())
    perfect = m.calibration(np.full(1000, 0.25), np.r_[np.ones(250), np.zeros(750)])
    assert perfect.ece == pytest.approx(0.0) and perfect.ratio == pytest.approx(1.0)


def _brute_xauc(pred, target, users):
    agree = total = 0.0
    for u in np.unique(users):
        idx = np.flatnonzero(users == u)
        for i, j in itertools.combinations(idx, 2):
            if target[i] == target[j]:
                continue
            total += 1
            dp = pred[i] - pred[j]
            agree += 0.5 if dp == 0 else float(np.sign(dp) == np.sign(target[i] - target[j]))
    return agree / total, int(total)


def test_xauc_all_pairs_equals_brute_force_with_ties(grouped):
    users, pred, _ = grouped
    users, pred = users[:400], pred[:400]
    target = np.round(np.random.default_rng(5).exponential(10, 400))  # ties in the truth
    want, pairs = _brute_xauc(pred, target, users)
    got = m.xauc(pred, target, users)
    assert not got.sampled and got.pairs == pairs
    assert got.value == pytest.approx(want, abs=1e-12)


def test_xauc_sampled_is_close_and_reproducible(grouped):
    users, pred, _ = grouped
    target = pred + np.random.default_rng(6).normal(0, 0.3, pred.size)
    exact = m.xauc(pred, target, users)
    a, b = m.xauc(pred, target, users, max_pairs=20_000, seed=1), m.xauc(pred, target, users, max_pairs=20_000, seed=1)
    assert a.sampled and a.value == b.value
    assert a.value == pytest.approx(exact.value, abs=0.01)


def test_xauc_users_with_one_row_give_no_pairs():
    got = m.xauc(np.array([0.1, 0.2]), np.array([1.0, 2.0]), np.array([1, 2]))
    assert got.pairs == 0 and np.isnan(got.value)


def test_ndcg_equals_sklearn_per_user_mean():
    rng = np.random.default_rng(8)
    users = rng.integers(0, 30, 600)
    score = rng.random(600)
    gain = np.where(rng.random(600) < 0.4, 0.0, rng.exponential(20, 600))
    gain[users == 3] = 0.0  # no ideal ranking: left out
    for k in (1, 5, 10):
        per = [ndcg_score([gain[users == u]], [score[users == u]], k=k)
               for u in np.unique(users) if gain[users == u].sum() > 0]
        value, counted = m.ndcg_at_k(score, gain, users, k)
        assert counted == len(per) == np.unique(users).size - 1
        assert value == pytest.approx(np.mean(per), abs=1e-12)


def test_ndcg_refuses_negative_gains():
    with pytest.raises(m.MetricError, match="non-negative"):
        m.ndcg_at_k(np.ones(2), np.array([1.0, -1.0]), np.zeros(2), 5)


@pytest.mark.parametrize("fn", [
    lambda p, y: m.gauc(p, y, np.zeros(p.size)),
    lambda p, y: m.xauc(p, y, np.zeros(p.size)),
    lambda p, y: m.ndcg_at_k(p, y, np.zeros(p.size), 3),
    lambda p, y: m.calibration(p, y),
    m.normalized_entropy, m.mae,
])
def test_nan_predictions_are_an_error_not_a_nan_metric(fn):
    with pytest.raises(m.MetricError, match="NaN"):
        fn(np.array([0.1, np.nan, 0.3]), np.array([0.0, 1.0, 1.0]))


def test_weighted_sorted_auc_equals_sklearn_with_sample_weights(grouped):
    _, pred, label = grouped
    w = np.random.default_rng(9).poisson(1.0, pred.size).astype(float)
    assert SortedAUC(pred, label)(w) == pytest.approx(roc_auc_score(label, pred, sample_weight=w), abs=1e-12)
    assert SortedAUC(pred, label)(np.ones(pred.size)) == pytest.approx(m.auc(pred, label), abs=1e-12)


def test_bootstrap_interval_covers_the_delta_and_flags_a_real_difference(grouped):
    users, pred, label = grouped
    noisy = pred + np.random.default_rng(10).normal(0, 0.5, pred.size)
    ci = auc_delta_ci(pred, noisy, label, users, samples=200)
    assert ci.delta == pytest.approx(m.auc(pred, label) - m.auc(noisy, label))
    assert ci.low <= ci.delta <= ci.high and ci.significant and ci.low > 0
    same = auc_delta_ci(pred, pred.copy(), label, users, samples=50)
    assert same.delta == 0 and same.low == 0 and same.high == 0 and not same.significant
