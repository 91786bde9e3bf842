"""Statistics for watermark decisions and membership audits."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binom

__all__ = [
    "binom_pvalue", "log10_binom_pvalue", "bit_threshold", "pooled_pvalue", "log10_pooled_pvalue",
    "key_null", "key_test", "key_pvalues", "bits_for_pvalue", "log10_p", "format_p", "controlled_pvalue",
    "tpr_at_threshold", "roc_curve", "auroc", "auroc_ci", "tpr_at_fpr", "calibrate_threshold",
    "empirical_pvalue", "accuracy_at_threshold", "rank_set_test", "rank_set_pvalue", "benjamini_hochberg", "holm",
    "controlled_rejections", "CONTROLS", "clopper_pearson", "fpr_key", "summarize_audit", "summarize_bits",
    "crossfit_accuracy",
]


# --------------------------------------------------------------------------- bits

def _check_prob(name: str, x: float, open_left: bool = True, open_right: bool = True) -> float:
    x = float(x)
    lo_ok = x > 0 if open_left else x >= 0
    hi_ok = x < 1 if open_right else x <= 1
    if not (lo_ok and hi_ok):
        lb, rb = "(" if open_left else "[", ")" if open_right else "]"
        raise ValueError(f"{name} must lie in {lb}0, 1{rb}, got {x}")
    return x


def _check_k(k: int) -> int:
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    return int(k)


def binom_pvalue(matches: int, k: int, p: float = 0.5) -> float:
    """Exact one-sided p-value P(X >= matches) for X ~ Binomial(k, p)."""
    k = _check_k(k)
    p = _check_prob("p", p, open_left=False, open_right=False)
    if int(matches) != matches or not 0 <= matches <= k:
        raise ValueError(f"matches must be an integer in [0, {k}], got {matches}")
    return float(binom.sf(int(matches) - 1, k, p))


def bit_threshold(k: int, fpr: float, p: float = 0.5) -> int:
    """Smallest M with P(X >= M) <= fpr for X ~ Binomial(k, p) (e.g. k=48, fpr=1e-6 -> 41).

    Returns k + 1 (a match count that can never be reached, so the test never fires)
    when even M = k is not rare enough.
    """
    k = _check_k(k)
    fpr = _check_prob("fpr", fpr)
    p = _check_prob("p", p, open_left=False, open_right=False)
    tail = binom.sf(np.arange(k + 1) - 1, k, p)  # tail[m] = P(X >= m), non-increasing
    ok = np.flatnonzero(tail <= fpr)
    return int(ok[0]) if ok.size else k + 1


def log10_binom_pvalue(matches: int, n: int, p: float = 0.5) -> float:
    """log10 of P(X >= matches), X ~ Binomial(n, p), summed in log space: finite where the
    p-value itself underflows to 0 (e.g. 1,900 of 2,048 matching bits)."""
    from scipy.special import logsumexp

    n = _check_k(n)
    p = _check_prob("p", p)
    if int(matches) != matches or not 0 <= matches <= n:
        raise ValueError(f"matches must be an integer in [0, {n}], got {matches}")
    if matches == 0:
        return 0.0
    lp = binom.logpmf(np.arange(int(matches), n + 1), n, p)
    return float(min(0.0, logsumexp(lp) / np.log(10)))


def log10_p(p: float) -> float:
    """log10 of a p-value; -inf only for an exact 0."""
    return float(np.log10(p)) if p > 0 else float("-inf")


def format_p(p: float | None, log10: float | None = None) -> str:
    """A p-value for people: 3.2e-05 (never 0.00); from its log10 where p underflowed."""
    if p is None:
        return ""
    if p == 0 and log10 is not None and np.isfinite(log10):
        e = int(np.floor(log10))
        return f"{10 ** (log10 - e):.1f}e{e:+03d}"
    return f"{p:.2g}" if p >= 0.01 else f"{p:.1e}"


def _check_reads(read) -> np.ndarray:
    r = np.asarray(read)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(f"need bits read from N >= 1 images, shape (N, k), got {r.shape}")
    if not np.all(np.isin(r, (0, 1))):
        raise ValueError("bits read must be 0 or 1")
    return r.astype(np.int64)


def key_null(read) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The key-randomization null of S(m) = sum over images of bits matching m.

    With c1_j images reading 1 at position j (c0_j = N - c1_j), S(m) = sum_j (c1_j if m_j
    else c0_j). Under H0 the message is a uniform draw independent of the images, so the
    positions are independent fair coins whatever the images share: S = sum_j min_j + sum_j
    d_j B_j with d_j = |c1_j - c0_j|, B_j ~ Bernoulli(1/2). Returns (c1, the majority bits,
    tail) where tail[t] = P(sum_j d_j B_j >= t), exact by convolution (atoms are multiples of
    2^-k, exact in float64 for k <= 256).
    """
    r = _check_reads(read)
    n = r.shape[0]
    c1 = r.sum(0)
    d = np.abs(2 * c1 - n)
    dist = np.ones(1)
    for dj in d[d > 0]:
        nxt = np.zeros(dist.size + dj)
        nxt[:dist.size] += 0.5 * dist
        nxt[dj:] += 0.5 * dist
        dist = nxt
    tail = np.cumsum(dist[::-1])[::-1]
    return c1, (2 * c1 > n).astype(np.int64), np.minimum(tail, 1.0)


def _key_stat(c1: np.ndarray, n: int, messages: np.ndarray) -> np.ndarray:
    """sum_j d_j [m_j agrees with the majority], per message row (ties count 0)."""
    d = np.abs(2 * c1 - n)
    major = 2 * c1 > n
    return ((messages.astype(bool) == major[None]) * d[None]).sum(1)


def key_pvalues(read, messages) -> np.ndarray:
    """Key-randomization p-values of many messages (K, k) against one set of reads (N, k):
    the null is computed once, so thousands of keys cost one convolution."""
    r = _check_reads(read)
    m = np.asarray(messages).reshape(-1, r.shape[1])
    c1, _, tail = key_null(r)
    return tail[_key_stat(c1, r.shape[0], m)]


def key_test(read, message) -> dict:
    """Model-level test that a message m is planted: H0 "m is independent of this model".

    Valid however alike the images read (they are the fixed part; the key is the random
    part): p = P(S(m') >= S(m)) for a uniform m', exact (see key_null). The smallest
    possible p is 2^-k' with k' the positions where the images do not split evenly, so a
    target p needs k >= log2(1/p) bits (bits_for_pvalue). Also gives the majority-vote
    message's agreement with m, the plain summary of what the images say.
    """
    r = _check_reads(read)
    m = np.asarray(message).astype(np.int64).ravel()
    if m.size != r.shape[1] or not np.all(np.isin(m, (0, 1))):
        raise ValueError(f"message must hold {r.shape[1]} bits of 0/1")
    n, k = r.shape
    c1, major, tail = key_null(r)
    p = float(tail[int(_key_stat(c1, n, m[None])[0])])
    informative = int(np.count_nonzero(2 * c1 != n))
    matches = int(np.where(m == 1, c1, n - c1).sum())
    return {
        "p_value": p,
        "log10_p_value": log10_p(p),
        "matches": matches,
        "n_images": int(n),
        "bits": int(k),
        "informative_bits": informative,
        "min_p_value": float(2.0 ** -informative),
        "majority_agreement": float(np.mean(major == m)),
    }


def bits_for_pvalue(p: float) -> int:
    """Message length k whose key test can reach p at all: 2^-k <= p."""
    p = _check_prob("p", p)
    return int(np.ceil(-np.log2(p) - 1e-12))


def pooled_pvalue(matches: Sequence[int], k: int) -> float:
    """Model-level p-value over N images: sum of matches ~ Binomial(N * k, 1/2) under H0."""
    k = _check_k(k)
    m = np.asarray(matches).ravel()
    if m.size and (np.any(m < 0) or np.any(m > k) or np.any(m != np.round(m))):
        raise ValueError(f"every match count must be an integer in [0, {k}]")
    return binom_pvalue(int(m.astype(np.int64).sum()), k * int(m.size))


def log10_pooled_pvalue(matches: Sequence[int], k: int) -> float:
    """log10 of pooled_pvalue, finite where the p-value underflows."""
    m = np.asarray(matches).ravel()
    return log10_binom_pvalue(int(m.astype(np.int64).sum()), k * int(m.size))


def controlled_pvalue(hits_trig, hits_clean) -> float:
    """Model-level p-value that the trigger raises bit matches, controlled per bit position
    by images made without it (same prompts and seeds).

    hits_* are boolean (N, k) arrays of matching bits. The pooled binomial test assumes each
    bit matches with probability 1/2, but an extractor reads some positions with a bias on
    any image, so a key whose message agrees with that bias looks significant on an
    unwatermarked model. Here each position j is its own 2x2 table (triggered / clean x
    match / not), combined by the one-sided Cochran-Mantel-Haenszel statistic
    z = sum_j (T_j - E_j) / sqrt(sum_j V_j), p = 1 - Phi(z).
    """
    from scipy.stats import norm

    a = np.asarray(hits_trig, dtype=bool)
    b = np.asarray(hits_clean, dtype=bool)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, k) and (M, k) match arrays, got {a.shape} and {b.shape}")
    n1, n2 = a.shape[0], b.shape[0]
    n = n1 + n2
    t = a.sum(0).astype(np.float64)
    m = t + b.sum(0)
    e = n1 * m / n
    v = n1 * n2 * m * (n - m) / (n ** 2 * max(n - 1, 1))
    if v.sum() <= 0:
        return 1.0
    return float(norm.sf((t - e).sum() / np.sqrt(v.sum())))


def tpr_at_threshold(matches, threshold: float) -> float:
    """Fraction of entries >= threshold (0.0 for an empty input)."""
    m = np.asarray(matches, dtype=np.float64).ravel()
    return float(np.mean(m >= threshold)) if m.size else 0.0


# --------------------------------------------------------------------------- audits

def _scores_labels(scores, labels, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (float scores, bool labels); labels must be 0/1 or bool."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y_raw = np.asarray(labels).ravel()
    if s.shape != y_raw.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y_raw.size}")
    if s.size == 0:
        raise ValueError("scores are empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or inf)")
    if not np.all(np.isin(y_raw, (0, 1))):
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    y = y_raw.astype(bool)
    if need_both and (y.all() or not y.any()):
        raise ValueError("only one class present: need both members (label 1) and "
                         "non-members (label 0)")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds); a higher score means member (positive)."""
    from sklearn.metrics import roc_curve as _sk_roc

    s, y = _scores_labels(scores, labels)
    fpr, tpr, thr = _sk_roc(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auroc(scores, labels) -> float:
    """Area under the ROC curve; ValueError when only one class is present."""
    from sklearn.metrics import roc_auc_score

    s, y = _scores_labels(scores, labels)
    return float(roc_auc_score(y, s))


def _boot_aucs(pos: np.ndarray, neg: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUROC of n_boot stratified resamples, computed exactly from resample counts.

    For a resample with multiplicities cp (positives) and cn (negatives), the AUC is
    sum_i cp_i * (#neg < pos_i + 0.5 #neg == pos_i, weighted by cn) / (P * N).
    """
    P, N = pos.size, neg.size
    neg_sorted = np.sort(neg)
    order = np.argsort(neg, kind="stable")
    lo = np.searchsorted(neg_sorted, pos, side="left")   # negatives strictly below pos_i
    hi = np.searchsorted(neg_sorted, pos, side="right")  # ... below or tied
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // (P + N + 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rows = np.arange(b)[:, None]
        ip = rng.integers(0, P, size=(b, P))
        i_n = rng.integers(0, N, size=(b, N))
        cp = np.bincount((rows * P + ip).ravel(), minlength=b * P).reshape(b, P)
        cn = np.bincount((rows * N + i_n).ravel(), minlength=b * N).reshape(b, N)
        cum = np.zeros((b, N + 1))
        np.cumsum(cn[:, order], axis=1, out=cum[:, 1:])
        less = cum[:, lo]
        ties = cum[:, hi] - less
        out[start:start + b] = (cp * (less + 0.5 * ties)).sum(axis=1) / (P * N)
    return out


def auroc_ci(scores, labels, n_boot: int = 1000, alpha: float = 0.05,
             seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap percentile CI for AUROC; deterministic for a given seed.

    Members and non-members are resampled separately (with replacement, sizes kept),
    using numpy's Generator(PCG64(seed)).
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    alpha = _check_prob("alpha", alpha)
    s, y = _scores_labels(scores, labels)
    vals = _boot_aucs(s[y], s[~y], int(n_boot), np.random.default_rng(seed))
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def tpr_at_fpr(scores, labels, fpr: float) -> float:
    """Highest TPR over ROC points whose empirical FPR is <= fpr (never exceeds the target)."""
    fpr = _check_prob("fpr", fpr, open_left=False, open_right=False)
    f, t, _ = roc_curve(scores, labels)
    ok = f <= fpr  # the (0, 0) point always qualifies
    return float(t[ok].max())


def calibrate_threshold(negative_scores, fpr: float) -> float:
    """Threshold from a calibration split of known non-members.

    Returns the smallest threshold t with #{calibration score >= t} / n <= fpr: just
    above the (a+1)-th largest score, where a = floor(fpr * n) is the number of scores
    allowed to reach t. When fpr * n < 1, this is just above the maximum.
    """
    fpr = _check_prob("fpr", fpr, open_right=False)
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())
    n = neg.size
    if n == 0:
        raise ValueError("calibration needs at least one non-member score")
    if not np.all(np.isfinite(neg)):
        raise ValueError("calibration scores must be finite (no NaN or inf)")
    allowed = int(np.floor(fpr * n))
    # Guard against float round-off in fpr * n (e.g. 0.29 * 100 = 28.999...).
    while allowed + 1 <= n and (allowed + 1) / n <= fpr:
        allowed += 1
    while allowed > 0 and allowed / n > fpr:
        allowed -= 1
    if allowed >= n:  # every score may pass: any threshold at or below the minimum works
        return float(neg[0])
    return float(np.nextafter(neg[n - allowed - 1], np.inf))


def empirical_pvalue(score: float, null_scores) -> float:
    """Conformal p-value (1 + #{null >= score}) / (1 + n)."""
    null = np.asarray(null_scores, dtype=np.float64).ravel()
    return float((1 + np.count_nonzero(null >= score)) / (1 + null.size))


def accuracy_at_threshold(scores, labels, threshold: float) -> float:
    """Fraction of samples classified correctly when predicting member iff score >= threshold."""
    s, y = _scores_labels(scores, labels, need_both=False)
    return float(np.mean((s >= threshold) == y))


def _finite(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def rank_set_test(test_scores, calib_scores, exact_max: int = 10_000, n_perm: int = 9_999,
                  seed: int = 0) -> tuple[float, str]:
    """Was this collection used? One-sided Wilcoxon rank-sum / Mann-Whitney U test that the
    test scores lie above the calibration scores (higher score = more member-like).

    Returns (p-value, method). Its null is that the test and calibration scores are
    exchangeable (an innocent model and calibration images of the same kind); the test
    images need not be independent of each other. Method, by size and ties:
      - no ties and n_test * n_calib <= exact_max: the exact null distribution of U
        (scipy.stats.mannwhitneyu, method='exact');
      - ties and n_test * n_calib <= exact_max: a permutation test of the rank sum (average
        ranks), n_perm seeded permutations, p = (1 + #{perm >= observed}) / (1 + n_perm);
      - larger sets: the normal approximation with tie and continuity corrections.
    """
    from scipy.stats import mannwhitneyu, rankdata

    t, c = _finite("test scores", test_scores), _finite("calibration scores", calib_scores)
    if t.size == 0 or c.size == 0:
        raise ValueError("the set test needs at least one test and one calibration score")
    ties = np.unique(np.r_[t, c]).size < t.size + c.size
    if t.size * c.size > exact_max:
        return float(mannwhitneyu(t, c, alternative="greater", method="asymptotic").pvalue), "asymptotic"
    if not ties:
        return float(mannwhitneyu(t, c, alternative="greater", method="exact").pvalue), "exact"
    ranks = rankdata(np.r_[t, c])  # average ranks: sums are multiples of 0.5, exact in float
    observed = ranks[:t.size].sum()
    rng = np.random.default_rng(seed)
    hits, chunk = 0, max(1, 2_000_000 // ranks.size)
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        pick = rng.random((b, ranks.size)).argsort(axis=1)[:, :t.size]
        hits += int(np.count_nonzero(ranks[pick].sum(axis=1) >= observed))
    return float((1 + hits) / (1 + n_perm)), f"permutation ({n_perm}, seed {seed})"


def rank_set_pvalue(test_scores, calib_scores, **kw) -> float:
    """The p-value of rank_set_test."""
    return rank_set_test(test_scores, calib_scores, **kw)[0]


def _pvalues(pvalues, alpha: float) -> tuple[np.ndarray, float]:
    p = _finite("p-values", pvalues)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p, _check_prob("alpha", alpha)


def benjamini_hochberg(pvalues, alpha: float) -> np.ndarray:
    """Reject mask of the Benjamini-Hochberg step-up procedure: false-discovery rate <= alpha
    for independent or PRDS p-values (conformal p-values against one calibration set are
    PRDS, Bates et al. 2023); under the global null it bounds P(any rejection) by alpha."""
    p, alpha = _pvalues(pvalues, alpha)
    m = p.size
    order = np.argsort(p, kind="stable")
    ok = np.flatnonzero(p[order] <= alpha * np.arange(1, m + 1) / max(m, 1))
    reject = np.zeros(m, dtype=bool)
    if ok.size:
        reject[order[: ok[-1] + 1]] = True
    return reject


def holm(pvalues, alpha: float) -> np.ndarray:
    """Reject mask of Holm's step-down procedure: family-wise error rate <= alpha, any dependence."""
    p, alpha = _pvalues(pvalues, alpha)
    m = p.size
    order = np.argsort(p, kind="stable")
    fail = np.flatnonzero(p[order] > alpha / (m - np.arange(m)))
    k = fail[0] if fail.size else m
    reject = np.zeros(m, dtype=bool)
    reject[order[:k]] = True
    return reject


CONTROLS = {"bh": "Benjamini-Hochberg, false-discovery rate <= alpha",
            "holm": "Holm, family-wise error rate <= alpha",
            "none": "none, each image at p <= alpha (uncontrolled)"}


def controlled_rejections(pvalues, alpha: float, control: str) -> np.ndarray:
    """Reject mask under `control`: 'bh' (benjamini_hochberg), 'holm', or 'none' (p <= alpha)."""
    if control == "bh":
        return benjamini_hochberg(pvalues, alpha)
    if control == "holm":
        return holm(pvalues, alpha)
    if control == "none":
        p, alpha = _pvalues(pvalues, alpha)
        return p <= alpha
    raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval for a rate of k in n."""
    from scipy.stats import beta

    if int(n) != n or n < 1 or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= k <= n, n >= 1; got k={k}, n={n}")
    a = (1 - _check_prob("level", level)) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


# --------------------------------------------------------------------------- summaries

def fpr_key(x: float) -> str:
    """The results-JSON key of a rate: 0.01 -> "0.01", 1e-6 -> "1e-6" (no zero-padded exponent)."""
    s = f"{x:g}"
    if "e" in s:
        mantissa, exp = s.split("e")
        s = f"{mantissa}e{int(exp)}"
    return s


def summarize_audit(scores, labels, fprs=(0.01, 0.05), n_boot: int = 1000, seed: int = 0) -> dict:
    """JSON-ready audit summary: AUROC with bootstrap CI, TPR at each FPR, class counts."""
    s, y = _scores_labels(scores, labels)
    lo, hi = auroc_ci(s, y, n_boot=n_boot, seed=seed)
    return {
        "auroc": auroc(s, y),
        "auroc_ci": [lo, hi],
        "tpr_at_fpr": {fpr_key(f): tpr_at_fpr(s, y, f) for f in fprs},
        "n_members": int(y.sum()),
        "n_nonmembers": int((~y).sum()),
    }


def summarize_bits(matches, k: int, fpr: float = 1e-6) -> dict:
    """JSON-ready watermark summary over N images' bit-match counts out of k bits."""
    m = np.asarray(matches).ravel()
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    per_image = [binom_pvalue(x, k) for x in m.tolist()]
    t = bit_threshold(k, fpr)
    return {
        "bits": int(k),
        "threshold_bits": t,
        "bit_accuracy": float(m.mean() / k) if m.size else 0.0,
        "tpr_at_fpr": {fpr_key(fpr): tpr_at_threshold(m, t)},
        "p_value": pooled_pvalue(m, k),
        "per_image_p_values": per_image,
        "n_images": int(m.size),
    }


def crossfit_accuracy(scores, labels, folds: int = 2, seed: int = 0) -> float:
    """Accuracy at a threshold never chosen on the images it is applied to: the data are
    split into stratified folds; each fold is classified at the threshold that maximises
    accuracy on the other folds (the reference picks it on the test data itself)."""
    s, y = _scores_labels(scores, labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(s), dtype=int)
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    correct = 0
    for f in range(folds):
        train, test = fold != f, fold == f
        cand = np.unique(s[train])
        cand = np.concatenate([cand, [np.inf]])
        accs = [np.mean((s[train] >= c) == y[train]) for c in cand]
        thr = cand[int(np.argmax(accs))]
        correct += int(np.sum((s[test] >= thr) == y[test]))
    return float(correct / len(s))
