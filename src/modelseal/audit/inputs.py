"""An audit's inputs: which mode the options ask for and the image sets it reads.

  evaluation  --members DIR --holdout DIR (labels known: AUROC, TPR at FPR)
  audit       --images DIR --calibration DIR (real use: verdicts against calibration images)
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.folders import check_disjoint, read_image_folder, require_images
from ..data.sources import check_inputs
from ..errors import InputError
from .decision import check_evaluation_size


def check_mode(cfg) -> str:
    """'evaluation' or 'audit' from the image options given; exit-2 errors for half a pair."""
    evaluation = cfg.members is not None or cfg.holdout is not None
    real = cfg.images is not None or cfg.calibration is not None
    if evaluation and real:
        raise InputError("give either --members and --holdout (evaluation) or --images and --calibration "
                         "(audit), not both", "drop one pair of options")
    if evaluation:
        if cfg.members is None or cfg.holdout is None:
            raise InputError("evaluation mode needs both --members DIR and --holdout DIR",
                             "give the images used in fine-tuning and images of the same kind that were not")
        return "evaluation"
    if real:
        if cfg.images is None or cfg.calibration is None:
            raise InputError("audit mode needs both --images DIR and --calibration DIR",
                             "give the images to test and images known not to be in the fine-tuning set")
        return "audit"
    raise InputError("no images to audit", "give --members DIR --holdout DIR, or --images DIR --calibration DIR")


def check_sets(cfg, mode: str, **more) -> None:
    """Every folder exists (and `more`, e.g. generated=...) and holds images, no image is in
    both sets, and an evaluation has images enough for its AUROC to mean anything (all before
    any model loads)."""
    check_inputs(members=cfg.members, holdout=cfg.holdout, images=cfg.images, calibration=cfg.calibration, **more)
    roles = ("members", "holdout") if mode == "evaluation" else ("images", "calibration")
    counts = [len(require_images(getattr(cfg, r), "--" + r)) for r in roles]
    for opt, folder in more.items():
        if folder is not None:
            require_images(folder, "--" + opt)
    if mode == "evaluation":
        check_disjoint(cfg.members, cfg.holdout, "--members", "--holdout",
                       "an image is a member or a hold-out image, not both: keep each image in one folder")
        check_evaluation_size(*counts)
    else:
        check_disjoint(cfg.images, cfg.calibration, "--images", "--calibration",
                       "calibration images must be known not to be in the fine-tuning set, so none can be under "
                       "test: keep each image in one folder")


def read_set(folder: Path, size: int, role: str) -> tuple[torch.Tensor, list[str]]:
    """(images, names 'role/file') of an image folder at side `size`."""
    s = read_image_folder(folder, size, name=role)
    return s.tensor(), [f"{role}/{n}" for n in s.names]


def read_sets(cfg, mode: str, size: int) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """The mode's two sets, in order: members, holdout (evaluation) or images, calibration (audit)."""
    roles = ("members", "holdout") if mode == "evaluation" else ("images", "calibration")
    return {r: read_set(getattr(cfg, r), size, r) for r in roles}
