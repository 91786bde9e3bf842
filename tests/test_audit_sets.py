"""Audit mode's statistics: the collection's rank test and the per-image error controls."""
import numpy as np
import pytest
from scipy.stats import binom, mannwhitneyu

from modelseal import stats
from modelseal.stats import format_p
from modelseal.audit.decision import audit_decisions, audit_summary


def _within(rejections: int, n: int, alpha: float = 0.05) -> bool:
    """At most the 99.9% binomial quantile of n tests at size alpha."""
    return rejections <= binom.ppf(0.999, n, alpha)


# ----------------------------------------------------------------------------- the set test

def test_rank_set_test_exact_values():
    p, method = stats.rank_set_test([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert method == "exact" and p == pytest.approx(1 / 20)  # one of C(6, 3) orderings
    assert stats.rank_set_pvalue([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=10), rng.normal(size=20)
    assert stats.rank_set_pvalue(a, b) == pytest.approx(
        mannwhitneyu(a, b, alternative="greater", method="exact").pvalue)


def test_rank_set_test_ties_use_a_seeded_permutation_and_large_sets_the_normal_approximation():
    t, c = [1, 2, 2, 3, 3], [0, 1, 1, 2, 0, 1]
    p, method = stats.rank_set_test(t, c, n_perm=999, seed=3)
    assert method.startswith("permutation") and p == stats.rank_set_pvalue(t, c, n_perm=999, seed=3)
    assert (p * 1000) == pytest.approx(round(p * 1000))  # (1 + hits) / (1 + B)
    assert p == pytest.approx(mannwhitneyu(t, c, alternative="greater", method="asymptotic").pvalue, abs=0.03)
    rng = np.random.default_rng(1)
    big = stats.rank_set_test(rng.normal(size=150), rng.normal(size=150))
    assert big[1] == "asymptotic" and 0 < big[0] < 1
    with pytest.raises(ValueError):
        stats.rank_set_test([], [1.0])
    with pytest.raises(ValueError):
        stats.rank_set_test([np.nan], [1.0])


def test_rank_set_test_holds_its_level_on_exchangeable_draws():
    rng = np.random.default_rng(2024)
    n = 2000
    rej = sum(stats.rank_set_pvalue(*np.split(rng.normal(size=30), [10])) <= 0.05 for _ in range(n))
    assert _within(rej, n) and rej >= binom.ppf(0.001, n, 0.04)  # exact: neither liberal nor far below
    # dependent images (one shared offset per draw, heavy tails) stay exchangeable: still valid
    rej = sum(stats.rank_set_pvalue(*np.split(rng.standard_t(2, size=30) + rng.normal() * 5, [10])) <= 0.05
              for _ in range(n))
    assert _within(rej, n)
    # ties: the permutation test
    m = 600
    rej = sum(stats.rank_set_pvalue(*np.split(rng.integers(0, 4, size=30).astype(float), [10]), n_perm=199,
                                    seed=k) <= 0.05 for k in range(m))
    assert _within(rej, m)


def test_rank_set_test_has_power_on_shifted_scores():
    rng = np.random.default_rng(7)
    hits = sum(stats.rank_set_pvalue(rng.normal(1.5, 1, 10), rng.normal(0, 1, 20)) <= 0.05 for _ in range(200))
    assert hits >= 180
    # a collection where only 3 of 10 images were used (strongly) is found only about a third of
    # the time: the rank-sum test is built for a collection mostly used
    hits = sum(stats.rank_set_pvalue(np.r_[rng.normal(3, 1, 3), rng.normal(0, 1, 7)], rng.normal(0, 1, 40)) <= 0.05
               for _ in range(200))
    assert hits >= 50


# ----------------------------------------------------------------------------- per-image control

def test_bh_and_holm_known_values():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert stats.benjamini_hochberg(p, 0.05).tolist() == [True, True, True, True, False]
    assert stats.holm(p, 0.05).tolist() == [True, False, False, True, False]
    assert stats.controlled_rejections(p, 0.05, "none").tolist() == [True, True, True, True, False]
    assert stats.controlled_rejections(p, 0.05, "bh").tolist() == stats.benjamini_hochberg(p, 0.05).tolist()
    assert stats.benjamini_hochberg([0.04] * 10, 0.05).all()  # step-up: all at 0.04 <= 10 x 0.005
    assert not stats.holm([0.04] * 10, 0.05).any()
    assert stats.benjamini_hochberg([], 0.05).size == 0 and stats.holm([], 0.05).size == 0
    with pytest.raises(ValueError):
        stats.controlled_rejections(p, 0.05, "bonferroni")
    with pytest.raises(ValueError):
        stats.benjamini_hochberg([1.5], 0.05)


def test_controls_on_conformal_p_values_under_the_global_null():
    """10 innocent images, 199 calibration images: BH and Holm keep P(any false member) <= 0.05,
    per-image testing without control does not (about 1 - 0.95^10)."""
    rng = np.random.default_rng(11)
    n = 2000
    anyfalse = {"bh": 0, "holm": 0, "none": 0}
    for _ in range(n):
        s = rng.normal(size=209)
        p = [stats.empirical_pvalue(x, s[10:]) for x in s[:10]]
        for c in anyfalse:
            anyfalse[c] += bool(stats.controlled_rejections(p, 0.05, c).any())
    assert _within(anyfalse["bh"], n) and _within(anyfalse["holm"], n)
    assert anyfalse["none"] / n > 0.3


def test_audit_decisions_and_summary():
    rng = np.random.default_rng(5)
    d = audit_decisions(rng.normal(4, 1, 8), rng.normal(0, 1, 30), 0.05, "bh")
    assert d["set_used"] and d["set_p_value"] < 1e-5 and d["set_test"] == "exact"
    assert d["member"].all() and d["p_values"].tolist() == [1 / 31] * 8
    res = {"set_verdict": "used", "set_p_value": d["set_p_value"], "n_images": 8, "n_calibration": 30,
           "set_test": "exact", "alpha": 0.05, "members_found": 8, "members_uncontrolled": 8, "control": "bh",
           "control_note": stats.CONTROLS["bh"]}
    first, second = audit_summary(res)
    assert first.startswith("[audit] collection: used (rank-sum p = ") and "e-0" in first
    assert "8 of 8" in second and "Benjamini-Hochberg" in second
    assert format_p(3.2e-05) == "3.2e-05" and format_p(0.0004) == "4.0e-04" and format_p(None) == ""


def test_clopper_pearson():
    lo, hi = stats.clopper_pearson(0, 200)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 200))
    lo, hi = stats.clopper_pearson(10, 200)
    assert lo < 0.05 < hi and stats.clopper_pearson(200, 200)[1] == 1.0
    with pytest.raises(ValueError):
        stats.clopper_pearson(3, 2)
