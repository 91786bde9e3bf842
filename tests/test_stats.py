import numpy as np
import pytest
from scipy.stats import binom

from modelseal import stats


def test_bit_threshold_known_answer():
    assert stats.bit_threshold(48, 1e-6) == 41
    assert stats.binom_pvalue(41, 48) <= 1e-6 < stats.binom_pvalue(40, 48)
    assert stats.bit_threshold(4, 1e-6) == 5  # 4 bits can never reach 1e-6


def test_binom_pvalue_edges():
    assert stats.binom_pvalue(48, 48) == pytest.approx(0.5 ** 48, rel=1e-9)
    assert stats.binom_pvalue(0, 48) == 1.0
    with pytest.raises(ValueError):
        stats.binom_pvalue(49, 48)


def test_pooled_pvalue():
    assert 0.4 < stats.pooled_pvalue([24] * 10, 48) < 0.6
    assert stats.pooled_pvalue([40] * 10, 48) < 1e-40


def test_empirical_fpr_of_the_threshold_stays_under_nominal():
    rng = np.random.default_rng(0)
    m = rng.binomial(48, 0.5, size=200_000)
    t = stats.bit_threshold(48, 1e-3)
    assert (m >= t).mean() <= 1e-3
    assert binom.sf(t - 2, 48, 0.5) > 1e-3  # one bit less would be too lenient


def test_auroc_and_ci():
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.linspace(1, 2, 50), np.linspace(0, 0.9, 50)]
    assert stats.auroc(s, y) == 1.0
    assert stats.auroc(-s, y) == 0.0
    rng = np.random.default_rng(1)
    yr = rng.integers(0, 2, 4000)
    assert abs(stats.auroc(rng.random(4000), yr) - 0.5) < 0.05
    noisy = s + rng.normal(0, 0.5, 100)
    a = stats.auroc(noisy, y)
    lo, hi = stats.auroc_ci(noisy, y, n_boot=300, seed=3)
    assert lo <= a <= hi and hi - lo < 0.4
    assert (lo, hi) == stats.auroc_ci(noisy, y, n_boot=300, seed=3)
    with pytest.raises(ValueError, match="both"):
        stats.auroc([1, 2], [1, 1])


def test_tpr_at_fpr_hand_example():
    # members 0.9 0.8 0.3; non-members 0.7 0.2 0.1 0.05
    s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05]
    y = [1, 1, 1, 0, 0, 0, 0]
    assert stats.tpr_at_fpr(s, y, 0.0) == pytest.approx(2 / 3)
    assert stats.tpr_at_fpr(s, y, 0.25) == 1.0


def test_calibrated_threshold_controls_the_calibration_fpr():
    neg = np.random.default_rng(2).random(1000)
    t = stats.calibrate_threshold(neg, 0.05)
    frac = (neg >= t).mean()
    assert 0.04 <= frac <= 0.05
    assert stats.calibrate_threshold([0.1, 0.2], 0.01) > 0.2


def test_empirical_pvalue_and_accuracy():
    assert stats.empirical_pvalue(10, [1, 2, 3]) == 0.25
    assert stats.empirical_pvalue(0, [1, 2, 3]) == 1.0
    assert stats.accuracy_at_threshold([0.9, 0.1, 0.6], [1, 0, 0], 0.5) == pytest.approx(2 / 3)


def test_summaries_have_the_contract_keys():
    a = stats.summarize_audit([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], n_boot=50)
    assert set(a["tpr_at_fpr"]) == {"0.01", "0.05"} and a["auroc"] == 1.0
    b = stats.summarize_bits([48, 47, 20], 48)
    assert b["threshold_bits"] == 41 and b["tpr_at_fpr"]["1e-06"] == pytest.approx(2 / 3)
    assert b["n_images"] == 3 and len(b["per_image_p_values"]) == 3
