"""The statistic an audit decides with (`--score`).

CGI-DM's recovered picture is always the evidence shown; the number that ranks the images
and feeds the verdicts can be:

  combined    (default) S(cgi-dm) + S(calibrated), below
  cgi-dm      the CGI-DM similarity of the recovered image to the original (--metric), the
              paper's score
  calibrated  L_pre(z0) - L_ft(z0): the denoising loss of the suspect calibrated by the
              pretrained model, on the whole image with shared (t, noise) draws; the same
              access to the two models as CGI-DM, no inversion needed for the number
  combined    S(cgi-dm) + S(calibrated) with S a robust scaler (median, interquartile range)
              fitted on every image scored together, without labels. Fixed equal weights: no
              weight is fitted on the images being audited, and because the scaler treats
              the images symmetrically, test and calibration images stay exchangeable under
              the null (conformal p-values keep their level)

The default was chosen by benchmarks/audit_suspects.py (the mean TPR at 1 % FPR over
realistic suspects on real-photo subjects, then checked on subjects never looked at while
choosing); its figures are in the docs' audit benchmark page.
"""
from __future__ import annotations

import numpy as np
import torch

from .baselines import robust_scale

def robust_z(x) -> np.ndarray:
    """(x - median) / interquartile range, over the values given together (CLiD's scaler)."""
    return robust_scale(torch.as_tensor(np.asarray(x, dtype=np.float64))).double().numpy()


def decision_scores(cgi_dm, l_pre, l_ft) -> dict[str, np.ndarray]:
    """Every decision statistic (higher = member) for images scored together."""
    cgi = np.asarray(cgi_dm, dtype=np.float64)
    cal = np.asarray(l_pre, dtype=np.float64) - np.asarray(l_ft, dtype=np.float64)
    return {"cgi-dm": cgi, "calibrated": cal, "combined": robust_z(cgi) + robust_z(cal)}


def row_scores(rows: list[dict], metric: str = "ssim_removed") -> dict[str, np.ndarray]:
    """Every decision statistic for per-image rows of an audit's results (`scores`: the CGI-DM
    metrics, L_pre, L_ft), the rows scored together as one audit call scores its images."""
    col = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
    return decision_scores(col(metric), col("L_pre"), col("L_ft"))
