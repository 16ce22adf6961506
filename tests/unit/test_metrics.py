import numpy as np
import pytest
from sklearn import metrics as skm

from fedtl.shared import metrics as M


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert M.macro_f1(y, p, 4) == pytest.approx(skm.f1_score(y, p, average="macro"))


def test_macro_f1_ignores_absent_classes_like_sklearn():
    y, p = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert M.macro_f1(y, p, 5) == pytest.approx(skm.f1_score(y, p, average="macro"))


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 2, (40, 5)), rng.integers(0, 2, (40, 5))
    micro, macro = M.multilabel_f1(y, p)
    assert micro == pytest.approx(skm.f1_score(y, p, average="micro"))
    assert macro == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=60), rng.normal(size=60)
    out = M.regression_metrics(y, p)
    assert out["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert out["r2"] == pytest.approx(skm.r2_score(y, p))
