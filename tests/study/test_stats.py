"""The study's statistics against scipy and a hand-computed AUC."""
import math

import numpy as np
import pytest
from scipy import stats

from mimjax.study.stats import paired_difference, roc_auc, summary

GPA = [71.2, 73.9, 72.4, 70.8]
MAE = [70.1, 72.0, 72.9, 69.5]


def test_paired_interval_matches_scipy_ttest_rel():
    got = paired_difference(GPA, MAE)
    ci = stats.ttest_rel(GPA, MAE).confidence_interval(0.95)
    assert got["ci"] == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert got["mean"] == pytest.approx(np.mean(np.subtract(GPA, MAE)))
    assert got["n"] == 4 and got["significant"] is bool(ci.low > 0 or ci.high < 0) is False


def test_interval_covering_zero_is_not_significant_and_a_clear_one_is():
    assert paired_difference([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])["significant"] is False
    clear = paired_difference([5.0, 5.2, 4.9], [1.0, 1.1, 1.0])
    assert clear["significant"] is True and clear["ci"][0] > 0
    assert paired_difference([1.0], [0.0]) == {"mean": 1.0, "std": 0.0, "n": 1, "ci": None, "significant": False}


def test_summary_uses_the_sample_std():
    s = summary([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert summary([])["n"] == 0


def test_auc_by_hand():
    # positives 0.9, 0.4, 0.4; negatives 0.4, 0.1: pairs (9 pos-neg pairs... 3 x 2 = 6):
    # 0.9 beats both (2); each 0.4 ties 0.4 (0.5) and beats 0.1 (1) -> 1.5 each; total 5 / 6.
    assert roc_auc([0.9, 0.4, 0.4, 0.4, 0.1], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert roc_auc([0.1, 0.2], [0, 1]) == 1.0 and roc_auc([0.1, 0.2], [1, 0]) == 0.0
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
