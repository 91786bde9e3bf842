"""Statistics for watermark decisions and membership audits (numpy + scipy only).

Watermark bits: under H0 (no watermark) each of k decoded bits matches the owner's
message with probability 1/2, so the number of matches M ~ Binomial(k, 1/2).
Audits: scores where higher means "member"; ROC, AUROC with a bootstrap CI, TPR at a
target FPR, and thresholds calibrated on a separate split of known non-members.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binom


def binom_pvalue(matches: int, k: int, p: float = 0.5) -> float:
    """Exact one-sided P(X >= matches) for X ~ Binomial(k, p)."""
    if not 0 <= matches <= k:
        raise ValueError(f"matches must lie in [0, {k}], got {matches}")
    return float(binom.sf(matches - 1, k, p))


def bit_threshold(k: int, fpr: float, p: float = 0.5) -> int:
    """Smallest M with P(X >= M) <= fpr under Binomial(k, p); k + 1 when even M = k is
    not rare enough (the test can then never fire). 48 bits at 1e-6 -> 41."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    tail = binom.sf(np.arange(k + 1) - 1, k, p)  # tail[m] = P(X >= m), decreasing in m
    ok = np.flatnonzero(tail <= fpr)
    return int(ok[0]) if len(ok) else k + 1


def pooled_pvalue(matches: Sequence[int], k: int) -> float:
    """Model-level test over N images: the sum of matches ~ Binomial(N k, 1/2) under H0."""
    m = np.asarray(matches, dtype=np.int64)
    return binom_pvalue(int(m.sum()), int(k * len(m)))


def tpr_at_threshold(matches: Sequence[int], threshold: float) -> float:
    m = np.asarray(matches)
    return float((m >= threshold).mean()) if len(m) else 0.0


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {s.shape} vs {y.shape}")
    if y.all() or not y.any():
        raise ValueError("need both members (label 1) and non-members (label 0) to measure a ROC")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds); higher score = member."""
    from sklearn.metrics import roc_curve as _roc

    s, y = _scores_labels(scores, labels)
    fpr, tpr, thr = _roc(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auroc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    s, y = _scores_labels(scores, labels)
    return float(roc_auc_score(y, s))


def auroc_ci(scores, labels, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap percentile interval (members and non-members resampled apart)."""
    from sklearn.metrics import roc_auc_score

    s, y = _scores_labels(scores, labels)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    lab = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    vals = np.empty(n_boot)
    for i in range(n_boot):
        vals[i] = roc_auc_score(lab, np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def tpr_at_fpr(scores, labels, fpr: float) -> float:
    """Highest TPR among ROC points whose empirical FPR does not exceed `fpr`."""
    f, t, _ = roc_curve(scores, labels)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def calibrate_threshold(negative_scores, fpr: float) -> float:
    """Threshold from known non-members: at most a fraction `fpr` of them score >= it."""
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))
    if len(neg) == 0:
        raise ValueError("calibration needs at least one non-member score")
    n = len(neg)
    allowed = int(np.floor(fpr * n))  # how many calibration scores may reach the threshold
    if allowed < 1:
        return float(np.nextafter(neg[-1], np.inf))
    # The threshold sits just above the (allowed+1)-th largest score, so exactly `allowed`
    # (or fewer, with ties) calibration scores reach it.
    return float(np.nextafter(neg[n - allowed - 1], np.inf))


def empirical_pvalue(score: float, null_scores) -> float:
    """Conformal p-value of one score against null (non-member) scores."""
    null = np.asarray(null_scores, dtype=np.float64)
    return float((1 + np.sum(null >= score)) / (1 + len(null)))


def accuracy_at_threshold(scores, labels, threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    return float(((s >= threshold) == y).mean())


def _key(x: float) -> str:
    return f"{x:g}"


def summarize_audit(scores, labels, fprs=(0.01, 0.05), n_boot: int = 1000, seed: int = 0) -> dict:
    s, y = _scores_labels(scores, labels)
    lo, hi = auroc_ci(s, y, n_boot=n_boot, seed=seed)
    return {"auroc": auroc(s, y), "auroc_ci": [lo, hi],
            "tpr_at_fpr": {_key(f): tpr_at_fpr(s, y, f) for f in fprs},
            "n_members": int(y.sum()), "n_nonmembers": int((~y).sum())}


def summarize_bits(matches, k: int, fpr: float = 1e-6) -> dict:
    m = np.asarray(matches, dtype=np.int64)
    t = bit_threshold(k, fpr)
    return {"bits": int(k), "threshold_bits": t,
            "bit_accuracy": float(m.mean() / k) if len(m) else 0.0,
            "tpr_at_fpr": {_key(fpr): tpr_at_threshold(m, t)},
            "p_value": pooled_pvalue(m, k) if len(m) else 1.0,
            "per_image_p_values": [binom_pvalue(int(x), k) for x in m],
            "n_images": int(len(m))}
