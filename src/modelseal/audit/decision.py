"""The statistic an audit decides with (`--score`).

CGI-DM's recovered picture is always the evidence shown; the number that ranks the images
and feeds the verdicts can be:

  calibrated  (default) L_pre(z0) - L_ft(z0): the denoising loss of the suspect calibrated
              by the pretrained model, on the whole image with shared (t, noise) draws; the
              same access to the two models as CGI-DM, no inversion needed for the number
  cgi-dm      the CGI-DM similarity of the recovered image to the original (--metric), the
              paper's score
  pia         PIA (Kong et al., ICLR 2024) on the suspect alone: -|| eps(z_t, t, c) - eps(z0, 0, c) ||_4
              at t = 200 (audit/baselines.py), a one-model statistic
  pia-calibrated  PIA of the suspect minus PIA of the pretrained model on the same image: the part
              of the image's fit the fine-tuning added (a LoRA suspect's adapter on, then off)
  combined    S(cgi-dm) + S(calibrated) with S a robust scaler (median, interquartile range)
              fitted on every image scored together, without labels. Fixed equal weights: no
              weight is fitted on the images being audited, and because the scaler treats
              the images symmetrically, test and calibration images stay exchangeable under
              the null (conformal p-values keep their level)

Evaluation mode reports its figures with their sample sizes in mind (evaluation_summary): an
audit with fewer than MIN_PER_SIDE members or hold-out images is refused (check_evaluation_size,
before any model loads); the AUROC's interval is the stratified bootstrap's widened to Newcombe's score interval (which
does not collapse to a point on a few perfectly separated images); TPR at an FPR is reported
only where the hold-out images can show that FPR (at least 1 / FPR of them), else None with a
note; and a small sample (one where even a perfect separation happens by chance more often
than SMALL_SAMPLE) is said in results.json and in the log, with a stronger word where no AUROC
of its sizes can be told from chance at the 5 % level.

The default was chosen by benchmarks/audit_lora.py (the collection test's power over the
suspects that learned subjects no setting was tuned on: LoRA, light and heavy fine-tunes)
and checked on subjects no session had used (benchmarks/audit_fresh.py); `combined` keeps
more single images at a low false-positive rate on heavy suspects. The figures are in the
docs' audit benchmark page.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch

from .. import stats
from ..errors import InputError
from .baselines import robust_scale

FPRS = (0.01, 0.05)  # the false-positive rates evaluation mode reports TPR at
MIN_PER_SIDE = 2  # fewest members and hold-out images an evaluation takes
SMALL_SAMPLE = 1e-3  # said to be small where a perfect separation happens by chance more often than this

def robust_z(x) -> np.ndarray:
    """(x - median) / interquartile range, over the values given together (CLiD's scaler)."""
    return robust_scale(torch.as_tensor(np.asarray(x, dtype=np.float64))).double().numpy()


def decision_scores(cgi_dm, l_pre, l_ft, pia_pre=None, pia_ft=None) -> dict[str, np.ndarray]:
    """Every decision statistic (higher = member) for images scored together; the PIA ones when
    both models' PIA scores are given."""
    cgi = np.asarray(cgi_dm, dtype=np.float64)
    cal = np.asarray(l_pre, dtype=np.float64) - np.asarray(l_ft, dtype=np.float64)
    out = {"cgi-dm": cgi, "calibrated": cal, "combined": robust_z(cgi) + robust_z(cal)}
    if pia_pre is not None and pia_ft is not None:
        ft = np.asarray(pia_ft, dtype=np.float64)
        out.update({"pia": ft, "pia-calibrated": ft - np.asarray(pia_pre, dtype=np.float64)})
    return out


def row_scores(rows: list[dict], metric: str = "ssim_removed") -> dict[str, np.ndarray]:
    """Every decision statistic for per-image rows of an audit's results (`scores`: the CGI-DM
    metrics, L_pre, L_ft and, where recorded, PIA_pre, PIA_ft), the rows scored together as one
    audit call scores its images."""
    col = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
    pia = all("PIA_pre" in r and "PIA_ft" in r for r in rows)
    return decision_scores(col(metric), col("L_pre"), col("L_ft"), col("PIA_pre") if pia else None,
                           col("PIA_ft") if pia else None)


def audit_decisions(test_scores, calib_scores, alpha: float, control: str, seed: int = 0) -> dict:
    """Audit mode's decisions from scores: the collection's rank test (set_p_value, set_used) and
    per image a conformal p-value against the calibration scores, rejected under `control`."""
    test = np.asarray(test_scores, dtype=np.float64)
    p = np.array([stats.empirical_pvalue(s, calib_scores) for s in test])
    set_p, method = stats.rank_set_test(test, calib_scores, seed=seed)
    return {"p_values": p, "member": stats.controlled_rejections(p, alpha, control), "uncontrolled": p <= alpha,
            "set_p_value": set_p, "set_test": method, "set_used": set_p <= alpha}


def audit_summary(res: dict) -> list[str]:
    """The audit-mode verdict in two lines: the collection first, then the images."""
    lines = [f"[audit] collection: {res['set_verdict']} (rank-sum p = {stats.format_p(res['set_p_value'])}, "
             f"{res['n_images']} images vs {res['n_calibration']} calibration, {res['set_test']}; alpha {res['alpha']})",
             f"[audit] images: {res['members_found']} of {res['n_images']} found members; control: "
             f"{res['control_note']}"]
    if res["control"] == "none":
        lines[1] += f": about {res['alpha'] * res['n_images']:.2g} false members expected on an innocent model"
    else:
        lines[1] += f" ({res['members_uncontrolled']} at p <= alpha without control)"
    return lines


def detection_scores(decision: dict[str, np.ndarray], labels) -> dict[str, dict]:
    """Evaluation mode: AUROC and TPR at 1 % / 5 % FPR of every decision statistic (None where
    the hold-out images are too few to show that FPR)."""
    return {k: {"auroc": stats.auroc(v, labels), "tpr_at_fpr": tpr_at_fprs(v, labels)} for k, v in decision.items()}


# --------------------------------------------------------------------------- evaluation mode's honesty

def perfect_by_chance(n_members: int, n_holdout: int) -> float:
    """The probability that chance alone ranks every member above every hold-out image:
    1 / C(m + n, m), the smallest p-value any AUROC of these sizes can have."""
    return 1.0 / math.comb(n_members + n_holdout, n_members)


def check_evaluation_size(n_members: int, n_holdout: int) -> None:
    """Refuse an evaluation with fewer than MIN_PER_SIDE members or hold-out images: its AUROC
    takes only its extreme values (one member against two hold-out images: 0, 0.5 or 1)."""
    if min(n_members, n_holdout) < MIN_PER_SIDE:
        odds = round(1 / perfect_by_chance(n_members, n_holdout))
        raise InputError(f"{n_members} member{'s' if n_members != 1 else ''} and {n_holdout} hold-out "
                         f"image{'s' if n_holdout != 1 else ''} are too few for an AUROC: chance alone separates "
                         f"them perfectly 1 time in {odds}",
                         f"give at least {MIN_PER_SIDE} images in --members and {MIN_PER_SIDE} in --holdout, better "
                         f"many more (e.g. 10 members and {fpr_needs(0.05)} hold-out images, the fewest for TPR at "
                         "5 % FPR)")


def fpr_needs(fpr: float) -> int:
    """The hold-out images an empirical FPR of `fpr` needs: one false positive among them is
    then at most `fpr`."""
    return math.ceil(1 / fpr - 1e-9)


def tpr_at_fprs(scores, labels, fprs=FPRS) -> dict[str, float | None]:
    """TPR at each FPR where the hold-out images can show it, else None."""
    n_neg = int(np.sum(np.asarray(labels) == 0))
    return {stats.fpr_key(f): stats.tpr_at_fpr(scores, labels, f) if n_neg >= fpr_needs(f) else None for f in fprs}


def score_interval(auc: float, n_members: int, n_holdout: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's score interval for an AUROC (Stat. Med. 2006, Part 2, method 5): the values
    theta with (A - theta)^2 <= z^2 V(theta), V the Hanley-McNeil variance with both sample
    sizes set to their mean. Unlike a bootstrap or a Wald interval it keeps a width on small or
    perfectly separated samples (A = 1 gives [lo, 1] with lo < 1)."""
    z2 = NormalDist().inv_cdf(1 - alpha / 2) ** 2
    k = (n_members + n_holdout) / 2 - 1  # N* - 1

    def excess(theta: float) -> float:
        v = theta * (1 - theta) * (1 + k * (1 - theta) / (2 - theta) + k * theta / (1 + theta))
        return (auc - theta) ** 2 - z2 * v / (n_members * n_holdout)

    def root(a: float, b: float) -> float:  # excess changes sign on [a, b]: bisection
        fa = excess(a)
        for _ in range(100):
            mid = (a + b) / 2
            if (excess(mid) > 0) == (fa > 0):
                a, fa = mid, excess(mid)
            else:
                b = mid
        return (a + b) / 2

    lo = 0.0 if auc <= 0 else root(0.0, auc)
    hi = 1.0 if auc >= 1 else root(auc, 1.0)
    return lo, hi


def evaluation_summary(scores, labels, seed: int = 0) -> dict:
    """Evaluation mode's figures (stats.summarize_audit's keys) told honestly for the sample:
    `auroc_ci` the bootstrap interval widened to the score interval, `auroc_p_value` (the
    exact rank-sum test of members above hold-out images), TPR only at the FPRs the hold-out
    images can show (`tpr_at_fpr_notes` say why the others are None), `small_sample` and
    `notes`."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    res = stats.summarize_audit(s, y, fprs=FPRS, seed=seed)
    m, n = int(y.sum()), int((~y).sum())
    lo, hi = score_interval(res["auroc"], m, n)
    boot = res["auroc_ci"]
    res["auroc_ci_bootstrap"] = list(boot)
    res["auroc_ci"] = [min(boot[0], lo), max(boot[1], hi)]
    res["auroc_ci_method"] = "stratified bootstrap, widened to Newcombe's score interval where that is wider"
    res["auroc_p_value"] = stats.rank_set_test(s[y], s[~y], seed=seed)[0]
    res["tpr_at_fpr"] = tpr_at_fprs(s, y)
    res["tpr_at_fpr_notes"] = {stats.fpr_key(f): f"needs >= {fpr_needs(f)} hold-out images for FPR {f} ({n} given)"
                               for f in FPRS if res["tpr_at_fpr"][stats.fpr_key(f)] is None}
    chance = perfect_by_chance(m, n)
    res["small_sample"] = chance > SMALL_SAMPLE
    weak = "; no AUROC of these sizes can be told from chance at the 5 % level" if chance > 0.05 else ""
    res["notes"] = ([f"small sample ({m} members, {n} hold-out images): even a perfect separation happens by "
                     f"chance with probability {stats.format_p(chance)}{weak}; read the AUROC with its interval"]
                    if res["small_sample"] else []) + [f"TPR at FPR {k} not reported: {v}" for k, v in
                                                        res["tpr_at_fpr_notes"].items()]
    return res


def evaluation_lines(res: dict, score: str) -> list[str]:
    """Evaluation mode's result in log lines: the AUROC with its interval and p-value, the TPRs
    that can be shown, then each note."""
    tpr = ", ".join(f"TPR at {float(k):.0%} FPR {'n/a' if v is None else f'{v:.2f}'}"
                    for k, v in res["tpr_at_fpr"].items())
    lo, hi = res["auroc_ci"]
    return ([f"[audit] members vs hold-out by {score}: AUROC {res['auroc']:.3f} (95% CI {lo:.2f}-{hi:.2f}, rank-sum "
             f"p = {stats.format_p(res['auroc_p_value'])}); {tpr}"]
            + [f"[audit] note: {note}" for note in res["notes"]])


def audit_mode_result(names: list[str], primary, n_img: int, alpha: float, control: str, seed: int,
                      evidence: list, extra_rows: list[dict], log=print) -> dict:
    """Audit mode's part of results.json: the collection's verdict and, per image (the first
    n_img audited, the rest calibration), its p-value and verdict beside `extra_rows[i]`; the
    verdict (audit_summary) and, if too few calibration images, a note go to `log`."""
    calib = primary[n_img:]
    d = audit_decisions(primary[:n_img], calib, alpha, control, seed)
    rows = []
    for i in range(len(names)):
        test = i < n_img
        rows.append({"image": names[i], "role": "test" if test else "calibration", "score": float(primary[i]),
                     "p_value": float(d["p_values"][i]) if test else None,
                     "verdict": ("member" if d["member"][i] else "not shown") if test else None,
                     "evidence": evidence[i], **extra_rows[i]})
    res = {"alpha": alpha, "control": control, "control_note": stats.CONTROLS[control],
           "set_p_value": d["set_p_value"], "set_test": d["set_test"],
           "set_verdict": "used" if d["set_used"] else "not shown to be used",
           "members_found": int(d["member"].sum()), "members_uncontrolled": int(d["uncontrolled"].sum()),
           "threshold": stats.calibrate_threshold(calib, alpha), "n_images": n_img,
           "n_calibration": len(calib), "scores": rows}
    for line in audit_summary(res):
        log(line)
    note = calibration_note(len(calib), n_img, alpha, control)
    if note:
        log(note)
    return res


def calibration_note(n_calib: int, n_img: int, alpha: float, control: str) -> str | None:
    """A line when too few calibration images make a lone member impossible to find."""
    m = n_img if control != "none" else 1  # a lone member needs p <= alpha / m
    if 1 / (n_calib + 1) > alpha / m:
        return (f"[audit] note: with {n_calib} calibration images the smallest per-image p-value is "
                f"{stats.format_p(1 / (n_calib + 1))}, above alpha / {m}: a member is found only beside others (or "
                f"never); give at least {int(np.ceil(m / alpha)) - 1} calibration images")
    return None
