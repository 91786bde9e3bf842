"""`modelseal audit --generated DIR`: the black-box audit, for a suspect that only serves images.

No weights: the user asks the suspect's service for images under the fine-tuning prompt
(--generated) and, where possible, under a neutral prompt without the identifier (--neutral).
Each audited image is scored by how near its nearest generated image is (audit/generated.py),
minus how near its nearest neutral-prompt image is when those are given. The rest is the
gray-box audit's: AUROC and TPR at FPR in evaluation mode; in audit mode the rank test of the
collection and per-image conformal p-values against calibration images (comparable images
that were never published), with the same control of false members. The evidence strip of
each image is the image beside its nearest generated image.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..data.folders import load_image, require_images
from ..errors import InputError
from .decision import audit_mode_result, detection_scores, evaluation_lines, evaluation_summary
from .evidence import roc_figure_file, write_report, write_strips
from .generated import Similarity, blackbox_scores
from .inputs import check_sets, read_set, read_sets
from .scoring import FeatureExtractor


def _check_folders(cfg) -> None:
    audited = [f for f in (cfg.members, cfg.holdout, cfg.images, cfg.calibration) if f is not None]
    pairs = [("--generated", cfg.generated)] + ([("--neutral", cfg.neutral)] if cfg.neutral is not None else [])
    for opt, folder in pairs:
        for a in audited:
            if Path(folder).resolve() == Path(a).resolve():
                raise InputError(f"{opt} is one of the audited folders ('{folder}')",
                                 f"give as {opt} the images the suspect's service returned, in a folder of their own")
    if cfg.neutral is not None and Path(cfg.neutral).resolve() == Path(cfg.generated).resolve():
        raise InputError("--generated and --neutral are the same folder",
                         "give the fine-tuning prompt's images as --generated and a neutral prompt's as --neutral")


def _side(folder: Path) -> int:
    """The side of the first generated image: the size every set is read at by default."""
    return int(min(load_image(require_images(folder, "--generated")[0], None).shape[:2]))


def blackbox_command(cfg, out: Path, mode: str, device: str, log=print) -> dict:
    out = Path(out)
    check_sets(cfg, mode, generated=cfg.generated, neutral=cfg.neutral)
    _check_folders(cfg)
    gen_x, _ = read_set(cfg.generated, cfg.size or _side(cfg.generated), "generated")
    size = cfg.size or gen_x.shape[-1]
    neu_x = read_set(cfg.neutral, size, "neutral")[0] if cfg.neutral is not None else None
    sets = read_sets(cfg, mode, size)
    if cfg.similarity == "features" and not cfg.features:
        raise InputError("--similarity features needs a feature model",
                         "give --features tiny:clip or a DINO/CLIP checkpoint, or use --similarity ssim")
    features = FeatureExtractor(cfg.features, device, cfg.local_files_only) if cfg.similarity == "features" else None
    sim = Similarity(cfg.similarity, features)
    names = [n for _, ns in sets.values() for n in ns]
    images = torch.cat([x for x, _ in sets.values()])
    log(f"[audit] black-box {mode}: {', '.join(f'{len(v[0])} {k}' for k, v in sets.items())}; {len(gen_x)} generated"
        + (f", {len(neu_x)} neutral-prompt" if neu_x is not None else "") + f" images at {size} px; similarity "
        f"{cfg.similarity}")
    t0 = time.time()
    sc = blackbox_scores(images, gen_x, neu_x, sim)
    score = "near-calibrated" if neu_x is not None else "near"
    primary = (sc["calibrated"] if neu_x is not None else sc["near"]).double().numpy()
    evidence = [None] * len(names)
    if cfg.evidence:
        strips = [[images[i], gen_x[sc["nearest"][i]]] + ([neu_x[sc["nearest_neutral"][i]]] if neu_x is not None
                                                          else []) for i in range(len(names))]
        evidence = write_strips(out / "evidence", names, strips)
    res = {"mode": mode, "access": "black-box", "prompt": cfg.prompt, "generated": str(cfg.generated),
           "n_generated": len(gen_x), "neutral": str(cfg.neutral) if cfg.neutral is not None else None,
           "n_neutral": len(neu_x) if neu_x is not None else 0, "similarity": cfg.similarity,
           "features": cfg.features if features is not None else None, "score": score, "image_size": size,
           "seconds": round(time.time() - t0, 2)}

    def row(i: int) -> dict:
        r = {"near": float(sc["near"][i]), "nearest_generated": int(sc["nearest"][i])}
        if neu_x is not None:
            r.update(near_neutral=float(sc["near_neutral"][i]), nearest_neutral=int(sc["nearest_neutral"][i]))
        return r

    if mode == "evaluation":
        labels = np.array([1] * len(sets["members"][0]) + [0] * len(sets["holdout"][0]))
        res.update(evaluation_summary(primary, labels, seed=cfg.seed))
        res["accuracy_crossfit"] = stats.crossfit_accuracy(primary, labels, seed=cfg.seed)
        decision = {"near": sc["near"].double().numpy()}
        if neu_x is not None:
            decision["near-calibrated"] = primary
        res["decision_scores"] = detection_scores(decision, labels)
        res["scores"] = [{"image": n, "member": bool(y), "score": float(s), "evidence": e, **row(i)}
                         for i, (n, y, s, e) in enumerate(zip(names, labels, primary, evidence))]
        roc_figure_file(out, {k + (" (decides)" if k == score else ""): v for k, v in decision.items()}, labels)
        for line in evaluation_lines(res, score):
            log(line.replace("[audit]", "[audit] black-box:", 1))
    else:
        n_img = len(sets["images"][0])
        res.update(audit_mode_result(names, primary, n_img, cfg.alpha, cfg.control, cfg.seed, evidence,
                                     [row(i) for i in range(len(names))], log))
    write_report(out, res)
    return res
