"""What a suspect's images say without its weights (black-box audit, learned fidelity).

Two questions share one tool, the nearest-neighbour similarity between two image sets in a
fixed space (`Similarity`: SSIM of the images, or cosine of a feature model's embeddings,
the model never trained on either set):

  black-box audit   per audited image x: near(x) = max over the suspect's generated images g
                    of sim(x, g). Does the service reproduce this image? With images the same
                    service returned for a neutral prompt (n), the calibrated score is
                    near(x) - max_n sim(x, n): how much nearer the fine-tuning prompt brings
                    the service to x than a prompt without the identifier does. Under the null
                    (the service never saw the audited or the calibration images) the generated
                    images are independent of both, so audited and calibration scores stay
                    exchangeable and the audit's rank test and conformal p-values keep their
                    level.
  learned fidelity  how far a suspect's samples under the fine-tuning prompt moved toward the
                    member images: the mean over its samples of the nearest member's similarity,
                    minus the same for the pretrained model's samples (same prompt, same seeds).
                    A suspect that learned nothing has a gain near 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scoring import FeatureExtractor, ssim_map

SIMILARITIES = ("ssim", "features")
SSIM_SIDE = 64  # SSIM is taken at most at this side: nearness of composition, not of texture


class Similarity:
    """sim(a_i, b_j) for every pair of two image batches (n, 3, H, W) in [0, 1]."""

    def __init__(self, kind: str = "ssim", features: FeatureExtractor | None = None, chunk: int = 1024):
        if kind not in SIMILARITIES:
            raise ValueError(f"unknown similarity '{kind}': one of {', '.join(SIMILARITIES)}")
        if kind == "features" and features is None:
            raise ValueError("the features similarity needs a feature model")
        self.kind, self.features, self.chunk = kind, features, chunk

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "features":
            return F.normalize(self.features(x.float()).float(), dim=-1)
        side = min(SSIM_SIDE, x.shape[-1])
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x.float(), size=(side, side), mode="area")
        return x.float()

    @torch.no_grad()
    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(len(a), len(b)) similarities, higher = nearer."""
        fa, fb = self._prepare(a), self._prepare(b)
        if self.kind == "features":
            return (fa @ fb.T).cpu()
        out = torch.empty(len(fa), len(fb))
        pairs = [(i, j) for i in range(len(fa)) for j in range(len(fb))]
        for s in range(0, len(pairs), self.chunk):
            ii, jj = map(torch.tensor, zip(*pairs[s:s + self.chunk]))
            out[ii, jj] = ssim_map(fa[ii], fb[jj]).flatten(1).mean(1).cpu()
        return out


def nearest(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the largest similarity and the column it is in."""
    v, i = sim.max(dim=1)
    return v, i


def blackbox_scores(images: torch.Tensor, generated: torch.Tensor, neutral: torch.Tensor | None,
                    sim: Similarity) -> dict[str, torch.Tensor]:
    """Per audited image: `near` (to the fine-tuning prompt's images) and the index of that
    nearest image; with `neutral` images also `near_neutral`, its index and `calibrated`
    (near - near_neutral)."""
    near, idx = nearest(sim.matrix(images, generated))
    out = {"near": near, "nearest": idx}
    if neutral is not None:
        nn_, nidx = nearest(sim.matrix(images, neutral))
        out.update(near_neutral=nn_, nearest_neutral=nidx, calibrated=near - nn_)
    return out


def learned_fidelity(members: torch.Tensor, suspect_samples: torch.Tensor, pretrained_samples: torch.Tensor,
                     sim: Similarity) -> dict[str, float]:
    """The suspect's fidelity to its members: mean nearest-member similarity of its samples
    (`suspect`), of the pretrained model's (`pretrained`), and the `gain` between them."""
    s = nearest(sim.matrix(suspect_samples, members))[0].mean().item()
    p = nearest(sim.matrix(pretrained_samples, members))[0].mean().item()
    return {"suspect": s, "pretrained": p, "gain": s - p}
