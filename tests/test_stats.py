import json

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from modelseal import stats


# ----------------------------------------------------------------------------- bits

def test_bit_threshold_known_answer():
    assert stats.bit_threshold(48, 1e-6) == 41
    assert stats.binom_pvalue(41, 48) <= 1e-6 < stats.binom_pvalue(40, 48)
    assert isinstance(stats.bit_threshold(48, 1e-6), int)


def test_bit_threshold_unreachable_returns_k_plus_1():
    # 4 bits: P(X >= 4) = 1/16 > 1e-6, so no count is rare enough.
    assert stats.bit_threshold(4, 1e-6) == 5
    assert stats.bit_threshold(4, 1 / 16) == 4


def test_binom_pvalue_edges():
    assert stats.binom_pvalue(48, 48) == pytest.approx(0.5 ** 48, rel=1e-12)
    assert stats.binom_pvalue(0, 48) == 1.0
    assert stats.binom_pvalue(0, 7) == 1.0
    assert stats.binom_pvalue(3, 4) == pytest.approx(5 / 16)
    assert type(stats.binom_pvalue(10, 48)) is float


@pytest.mark.parametrize("matches,k", [(49, 48), (-1, 48), (2.5, 48)])
def test_binom_pvalue_rejects_bad_counts(matches, k):
    with pytest.raises(ValueError):
        stats.binom_pvalue(matches, k)


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 2.0])
def test_bit_threshold_rejects_bad_fpr(fpr):
    with pytest.raises(ValueError):
        stats.bit_threshold(48, fpr)


def test_pooled_pvalue():
    assert 0.4 < stats.pooled_pvalue([24] * 10, 48) < 0.6
    assert stats.pooled_pvalue(np.array([40] * 10), 48) < 1e-40
    assert stats.pooled_pvalue([30, 30], 48) == pytest.approx(binom.sf(59, 96, 0.5))
    with pytest.raises(ValueError):
        stats.pooled_pvalue([24, 49], 48)


def test_empirical_fpr_of_the_threshold_stays_under_nominal():
    rng = np.random.default_rng(0)
    m = rng.binomial(48, 0.5, size=200_000)
    t = stats.bit_threshold(48, 1e-3)
    assert (m >= t).mean() <= 1e-3
    assert stats.tpr_at_threshold(m, t) <= 1e-3
    assert binom.sf(t - 2, 48, 0.5) > 1e-3  # one bit fewer would exceed the nominal FPR


def test_tpr_at_threshold():
    assert stats.tpr_at_threshold([41, 40, 48, 10], 41) == 0.5
    assert stats.tpr_at_threshold([], 41) == 0.0


# ----------------------------------------------------------------------------- audits

def _separated():
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.linspace(1, 2, 50), np.linspace(0, 0.9, 50)]
    return s, y


def test_auroc_known_values():
    s, y = _separated()
    assert stats.auroc(s, y) == 1.0
    assert stats.auroc(-s, y) == 0.0
    assert stats.auroc(list(s), list(y.astype(int))) == 1.0
    rng = np.random.default_rng(1)
    yr = rng.integers(0, 2, 4000)
    assert abs(stats.auroc(rng.random(4000), yr) - 0.5) < 0.05
    # all tied -> 0.5
    assert stats.auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5


def test_auroc_one_class_raises():
    with pytest.raises(ValueError, match="one class"):
        stats.auroc([1, 2], [1, 1])
    with pytest.raises(ValueError, match="one class"):
        stats.auroc([1, 2], [0, 0])
    with pytest.raises(ValueError):
        stats.auroc([1, 2, 3], [0, 1])  # length mismatch
    with pytest.raises(ValueError):
        stats.auroc([1, 2], [0, 2])  # labels not 0/1


def test_roc_curve_shapes_and_orientation():
    f, t, thr = stats.roc_curve([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0])
    assert f.shape == t.shape == thr.shape
    assert f[0] == 0 and t[0] == 0 and f[-1] == 1 and t[-1] == 1
    assert np.any((f == 0) & (t == 1))  # perfectly separable: a point at (0, 1)


def test_auroc_ci_contains_estimate_and_is_deterministic():
    s, y = _separated()
    rng = np.random.default_rng(1)
    noisy = s + rng.normal(0, 0.5, 100)
    a = stats.auroc(noisy, y)
    lo, hi = stats.auroc_ci(noisy, y, n_boot=500, seed=3)
    assert 0 <= lo <= a <= hi <= 1 and hi - lo < 0.4
    assert (lo, hi) == stats.auroc_ci(noisy, y, n_boot=500, seed=3)
    assert (lo, hi) != stats.auroc_ci(noisy, y, n_boot=500, seed=4)
    # wider coverage -> wider interval
    lo90, hi90 = stats.auroc_ci(noisy, y, n_boot=500, alpha=0.10, seed=3)
    assert lo <= lo90 and hi90 <= hi
    assert stats.auroc_ci(s, y, n_boot=50) == (1.0, 1.0)


def test_bootstrap_aucs_match_sklearn_on_the_same_resamples():
    # Rebuild the resamples from the same generator stream and check against sklearn,
    # with ties both within and across the two classes.
    pos = np.array([0.3, 0.5, 0.5, 0.9, 0.2, 0.7])
    neg = np.array([0.1, 0.5, 0.3, 0.3, 0.05])
    vals = stats._boot_aucs(pos, neg, 20, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    ip = rng.integers(0, pos.size, size=(20, pos.size))
    i_n = rng.integers(0, neg.size, size=(20, neg.size))
    lab = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    ref = [roc_auc_score(lab, np.r_[pos[ip[b]], neg[i_n[b]]]) for b in range(20)]
    np.testing.assert_allclose(vals, ref, rtol=0, atol=1e-12)


def test_tpr_at_fpr_hand_example():
    # members 0.9 0.8 0.3; non-members 0.7 0.2 0.1 0.05
    s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05]
    y = [1, 1, 1, 0, 0, 0, 0]
    assert stats.tpr_at_fpr(s, y, 0.0) == pytest.approx(2 / 3)
    assert stats.tpr_at_fpr(s, y, 0.2) == pytest.approx(2 / 3)  # 1/4 FPR would exceed 0.2
    assert stats.tpr_at_fpr(s, y, 0.25) == 1.0
    assert stats.tpr_at_fpr(s, y, 1.0) == 1.0


def test_tpr_at_fpr_never_exceeds_target_fpr():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(300), np.zeros(700)]
    s = rng.normal(y, 1.0)
    neg = s[y == 0]
    for target in (0.001, 0.01, 0.05, 0.3):
        tpr = stats.tpr_at_fpr(s, y, target)
        f, t, thr = stats.roc_curve(s, y)
        i = np.flatnonzero(np.isclose(t, tpr))[0]
        assert (neg >= thr[i]).mean() <= target


def test_calibrated_threshold_controls_the_calibration_fpr():
    neg = np.random.default_rng(2).random(1000)
    t = stats.calibrate_threshold(neg, 0.05)
    frac = (neg >= t).mean()
    assert 0.04 <= frac <= 0.05
    assert frac == 0.05  # continuous scores: exactly floor(0.05 * 1000) = 50 reach it
    # fpr * n < 1 -> just above the maximum
    t_small = stats.calibrate_threshold([0.1, 0.2], 0.01)
    assert t_small > 0.2 and t_small == np.nextafter(0.2, np.inf)
    # float round-off in fpr * n must not cost a slot: 0.29 * 100 = 28.999...
    neg100 = np.arange(100.0)
    assert (neg100 >= stats.calibrate_threshold(neg100, 0.29)).sum() == 29
    # ties: never exceed the target even when many scores coincide
    tied = np.r_[np.zeros(90), np.ones(10)]
    assert (tied >= stats.calibrate_threshold(tied, 0.05)).mean() == 0.0
    assert (tied >= stats.calibrate_threshold(tied, 0.10)).mean() == 0.10
    with pytest.raises(ValueError):
        stats.calibrate_threshold([], 0.05)
    with pytest.raises(ValueError):
        stats.calibrate_threshold([0.1], 0.0)


def test_empirical_pvalue_known_values():
    assert stats.empirical_pvalue(10, [1, 2, 3]) == 0.25
    assert stats.empirical_pvalue(0, [1, 2, 3]) == 1.0
    assert stats.empirical_pvalue(2, np.array([1, 2, 3])) == 0.75  # ties count as >=
    assert stats.empirical_pvalue(5, []) == 1.0


def test_accuracy_at_threshold():
    assert stats.accuracy_at_threshold([0.9, 0.1, 0.6], [1, 0, 0], 0.5) == pytest.approx(2 / 3)
    assert stats.accuracy_at_threshold([0.5, 0.4], [1, 0], 0.5) == 1.0  # >= is member
    assert stats.accuracy_at_threshold([0.9, 0.8], [1, 1], 0.5) == 1.0  # one class is fine


# ----------------------------------------------------------------------------- summaries

def test_summarize_audit_contract():
    a = stats.summarize_audit([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], n_boot=50)
    assert set(a) == {"auroc", "auroc_ci", "tpr_at_fpr", "n_members", "n_nonmembers"}
    assert set(a["tpr_at_fpr"]) == {"0.01", "0.05"}
    assert a["auroc"] == 1.0 and a["auroc_ci"] == [1.0, 1.0]
    assert a["n_members"] == 2 and a["n_nonmembers"] == 2
    assert type(a["auroc"]) is float and type(a["n_members"]) is int
    json.dumps(a)


def test_summarize_bits_contract():
    b = stats.summarize_bits(np.array([48, 47, 20]), 48)
    assert set(b) == {"bits", "threshold_bits", "bit_accuracy", "tpr_at_fpr", "p_value",
                      "per_image_p_values", "n_images"}
    assert b["bits"] == 48 and b["threshold_bits"] == 41
    assert b["tpr_at_fpr"] == {"1e-6": pytest.approx(2 / 3)}
    assert stats.fpr_key(0.01) == "0.01" and stats.fpr_key(1e-3) == "0.001" and stats.fpr_key(2.5e-7) == "2.5e-7"
    assert b["bit_accuracy"] == pytest.approx(115 / 144)
    assert b["p_value"] == pytest.approx(binom.sf(114, 144, 0.5))
    assert b["per_image_p_values"][0] == pytest.approx(0.5 ** 48)
    assert b["n_images"] == 3 and len(b["per_image_p_values"]) == 3
    assert all(type(p) is float for p in b["per_image_p_values"])
    json.dumps(b)
    assert set(stats.summarize_bits([30], 48, fpr=1e-3)["tpr_at_fpr"]) == {"0.001"}


def test_controlled_pvalue_holds_its_level_where_the_pooled_binomial_does_not():
    """An extractor that reads some bit positions with a bias on any image: a message that
    agrees with the bias fools the pooled binomial test, not the test controlled by clean
    images; a real shift under the trigger is still found."""
    import numpy as np

    from modelseal.stats import controlled_pvalue, pooled_pvalue

    rng = np.random.default_rng(0)
    k, n, sims = 32, 50, 300
    p_match = np.where(np.arange(k) % 2 == 0, 0.6, 0.5)  # half the positions biased towards the message
    pooled_fp = controlled_fp = 0
    for _ in range(sims):
        trig = rng.random((n, k)) < p_match
        clean = rng.random((n, k)) < p_match
        pooled_fp += pooled_pvalue(trig.sum(1), k) <= 0.01
        controlled_fp += controlled_pvalue(trig, clean) <= 0.01
    assert pooled_fp / sims > 0.5
    assert controlled_fp / sims <= 0.03
    marked = rng.random((n, k)) < np.minimum(p_match + 0.15, 1)
    assert controlled_pvalue(marked, rng.random((n, k)) < p_match) < 1e-6
    with pytest.raises(ValueError):
        controlled_pvalue(np.zeros((3, 4), bool), np.zeros((3, 5), bool))


# --------------------------------------------------------------------------- the key test

def test_key_test_equals_enumerating_every_message():
    import itertools

    rng = np.random.default_rng(3)
    read = rng.integers(0, 2, (7, 8))
    read[:, 2] = 1          # a position every image reads alike
    read[:4, 5], read[4:, 5] = 0, 1
    msgs = np.array(list(itertools.product([0, 1], repeat=8)))
    s_all = (read[None] == msgs[:, None]).sum((1, 2))
    for m in msgs[::17]:
        want = np.mean(s_all >= (read == m).sum())
        assert stats.key_test(read, m)["p_value"] == pytest.approx(want)
    assert stats.key_pvalues(read, msgs) == pytest.approx([np.mean(s_all >= s) for s in s_all])


def test_key_test_holds_its_level_when_every_image_reads_the_same_bits():
    """Images of one model read nearly the same bits: the pooled binomial then passes about
    half of all random messages, the key test alpha of them."""
    rng = np.random.default_rng(0)
    planted = rng.integers(0, 2, 32)
    read = np.where(rng.random((48, 32)) < 0.9, planted, 1 - planted)
    msgs = rng.integers(0, 2, (20_000, 32))
    p = stats.key_pvalues(read, msgs)
    for alpha in (1e-3, 1e-2, 0.05):
        assert (p <= alpha).mean() <= alpha + 3 * np.sqrt(alpha / 20_000)
    pooled = np.mean([stats.pooled_pvalue((read == m).sum(1), 32) <= 1e-3 for m in msgs[:500]])
    assert pooled > 0.2
    res = stats.key_test(read, planted)
    assert res["p_value"] == res["min_p_value"] == 2.0 ** -32 and res["majority_agreement"] == 1.0
    assert stats.bits_for_pvalue(1e-6) == 20 and stats.bits_for_pvalue(2.0 ** -32) == 32


def test_key_test_rejects_malformed_reads():
    with pytest.raises(ValueError):
        stats.key_test(np.zeros((3, 4)), np.zeros(5))
    with pytest.raises(ValueError):
        stats.key_test(np.full((3, 4), 2), np.zeros(4))


def test_log10_pvalues_do_not_underflow_and_print_in_scientific_notation():
    assert stats.binom_pvalue(1900, 2048) == 0.0
    lg = stats.log10_binom_pvalue(1900, 2048)
    assert -400 < lg < -300
    assert stats.log10_binom_pvalue(30, 48) == pytest.approx(np.log10(stats.binom_pvalue(30, 48)), rel=1e-9)
    assert stats.format_p(0.0, lg).endswith(f"e{int(np.floor(lg)):+03d}")
    assert stats.format_p(3.2e-5) == "3.2e-05" and stats.format_p(0.5) == "0.5"
