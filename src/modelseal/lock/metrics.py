"""IP-CLIP's evaluation metrics and the ownership test.

A = accuracy (%). SL = the supervised prompt model of the same setting (no protection).
  D_a = A_a^SL - A_a^IP       drop on the authorized domain (should be ~0)
  D_u = A_u^SL - A_u^IP       drop on the unauthorized domains (mean over them; large)
  W_ua = A_a^IP * (D_u - D_a) weighted non-transferability, A_a^IP as a fraction
  O_ua = A_u^SL * (A_a - A_u) ownership: A_u^SL as a fraction, A_a / A_u the locked
                              model's accuracy on clean / stamped inputs
The exact formulas were not recoverable from the paper text; these are our definitions,
consistent with the magnitudes it reports (e.g. W_ua about 75 on Office-31).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def lock_metrics(acc_ip: dict[str, float], acc_sl: dict[str, float], authorized: list[str],
                 unauthorized: list[str]) -> dict:
    a_ip = float(np.mean([acc_ip[d] for d in authorized]))
    a_sl = float(np.mean([acc_sl[d] for d in authorized]))
    u_ip = float(np.mean([acc_ip[d] for d in unauthorized]))
    u_sl = float(np.mean([acc_sl[d] for d in unauthorized]))
    d_a, d_u = a_sl - a_ip, u_sl - u_ip
    return {"D_a": d_a, "D_u": d_u, "W_ua": a_ip / 100.0 * (d_u - d_a),
            "A_a": a_ip, "A_u": u_ip, "A_a_SL": a_sl, "A_u_SL": u_sl}


def ownership_metric(clean_acc: float, stamped_acc: float, stamped_acc_sl: float) -> float:
    """O_ua = A_u^SL * (A_a - A_u)."""
    return stamped_acc_sl / 100.0 * (clean_acc - stamped_acc)


def ownership_test(correct_clean: np.ndarray, correct_stamped: np.ndarray, min_drop: float = 30.0,
                   alpha: float = 1e-3) -> dict:
    """Does the suspect fail on stamped inputs where it succeeds on the same clean inputs?

    Paired exact test (McNemar): among images where exactly one of the two is correct,
    H0 says 'clean right, stamped wrong' and the reverse are equally likely. The model is
    called ours when the one-sided p-value is below alpha and accuracy drops by at least
    `min_drop` points.
    """
    c = np.asarray(correct_clean, bool)
    s = np.asarray(correct_stamped, bool)
    n01 = int((c & ~s).sum())  # clean right, stamped wrong
    n10 = int((~c & s).sum())
    p = float(binomtest(n01, n01 + n10, 0.5, alternative="greater").pvalue) if n01 + n10 else 1.0
    drop = 100.0 * (c.mean() - s.mean())
    return {"clean_accuracy": 100.0 * float(c.mean()), "stamped_accuracy": 100.0 * float(s.mean()),
            "drop": float(drop), "p_value": p, "n_discordant": n01 + n10,
            "ours": bool(p < alpha and drop >= min_drop), "alpha": alpha, "min_drop": min_drop}
