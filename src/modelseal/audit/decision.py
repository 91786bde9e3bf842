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

The default was chosen by benchmarks/audit_lora.py (the collection test's power over the
suspects that learned subjects no setting was tuned on: LoRA, light and heavy fine-tunes)
and checked on subjects no session had used (benchmarks/audit_fresh.py); `combined` keeps
more single images at a low false-positive rate on heavy suspects. The figures are in the
docs' audit benchmark page.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from .baselines import robust_scale

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
    """Evaluation mode: AUROC and TPR at 1 % / 5 % FPR of every decision statistic."""
    return {k: {"auroc": stats.auroc(v, labels), "tpr_at_fpr": {
        stats.fpr_key(f): stats.tpr_at_fpr(v, labels, f) for f in (0.01, 0.05)}} for k, v in decision.items()}


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
