"""Metrics against scikit-learn / scipy, with ties, one class and NaN inputs."""

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import log_loss, roc_auc_score

from recsys_moe.metrics.functions import MetricError, auc, average_ranks, logloss, rmse, spearman


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(float)
    p = np.round(np.clip(0.3 + 0.2 * (y - 0.3) + 0.2 * rng.standard_normal(2000), 0.01, 0.99), 2)  # many ties
    return p, y


def test_auc_matches_sklearn_with_ties(data):
    p, y = data
    assert auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_of_one_class_is_nan():
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1.0, 1.0])))


def test_logloss_matches_sklearn(data):
    p, y = data
    assert logloss(p, y) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_ranks_and_spearman_match_scipy(data):
    p, y = data
    w = y * 10 + p
    np.testing.assert_allclose(average_ranks(p), rankdata(p))
    assert spearman(p, w) == pytest.approx(spearmanr(p, w).statistic, abs=1e-12)


def test_rmse_by_hand():
    assert rmse(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == pytest.approx(np.sqrt(5.0))


@pytest.mark.parametrize("fn", [auc, logloss, rmse, spearman])
def test_nan_predictions_are_an_error(fn):
    with pytest.raises(MetricError, match="NaN"):
        fn(np.array([0.1, np.nan, 0.3]), np.array([0.0, 1.0, 1.0]))


def test_length_mismatch_is_an_error():
    with pytest.raises(MetricError, match="2 predictions for 3 labels"):
        auc(np.array([0.1, 0.2]), np.array([0.0, 1.0, 1.0]))
