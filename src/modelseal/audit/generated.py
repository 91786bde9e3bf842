"""What a suspect's images say without its weights (black-box audit, learned fidelity).

Two questions share one tool, the nearest-neighbour similarity between two image sets in a
fixed space that was never trained on either set (`Similarity`):

  ssim      SSIM of the images (at most SSIM_SIDE px): nearness of layout and structure
  colour    Hellinger affinity of colour histograms, one per cell of a GRID x GRID layout
            (BINS levels per channel): the subject's palette where it sits, blind to texture
  pixels    correlation of the images at PIXELS_SIDE px, each standardised (Torralba's tiny
            images): the coarse picture, blind to brightness and contrast
  features  cosine of a feature model's embeddings (DINO or CLIP: --features)


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

SIMILARITIES = ("ssim", "colour", "pixels", "features")
SSIM_SIDE = 64  # SSIM is taken at most at this side: nearness of composition, not of texture
GRID, BINS = 2, 4  # colour: a 2 x 2 layout of joint RGB histograms with 4 levels per channel (64 bins a cell)
PIXELS_SIDE = 16  # pixels: the tiny image compared


def colour_histograms(x: torch.Tensor) -> torch.Tensor:
    """(n, GRID * GRID * BINS**3) square roots of the per-cell joint colour histograms, each
    cell's histogram summing to 1 / GRID**2, so that a dot product is the Hellinger affinity
    (1 for equal histograms, 0 for disjoint ones)."""
    n, _, h, w = x.shape
    q = (x.float().clamp(0, 1) * BINS).long().clamp_max(BINS - 1)
    code = (q[:, 0] * BINS + q[:, 1]) * BINS + q[:, 2]  # (n, h, w) joint bin
    rows = torch.arange(h).mul(GRID).div(h, rounding_mode="floor")
    cols = torch.arange(w).mul(GRID).div(w, rounding_mode="floor")
    cell = rows[:, None] * GRID + cols[None, :]  # (h, w) the layout cell of each pixel
    index = (cell.expand(n, h, w) * BINS ** 3 + code).flatten(1)
    hist = torch.zeros(n, GRID * GRID * BINS ** 3).scatter_add_(1, index, torch.ones(index.shape))
    pixels_per_cell = torch.bincount(cell.flatten(), minlength=GRID * GRID).float()
    hist = hist.view(n, GRID * GRID, -1) / pixels_per_cell.view(1, -1, 1) / GRID ** 2
    return hist.flatten(1).sqrt()


def tiny_images(x: torch.Tensor) -> torch.Tensor:
    """(n, 3 * PIXELS_SIDE**2) images at PIXELS_SIDE px, each centred and scaled to unit norm,
    so that a dot product is their correlation."""
    t = F.interpolate(x.float(), size=(PIXELS_SIDE, PIXELS_SIDE), mode="area").flatten(1)
    return F.normalize(t - t.mean(1, keepdim=True), dim=1)


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
        if self.kind == "colour":
            return colour_histograms(x)
        if self.kind == "pixels":
            return tiny_images(x)
        side = min(SSIM_SIDE, x.shape[-1])
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x.float(), size=(side, side), mode="area")
        return x.float()

    @torch.no_grad()
    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(len(a), len(b)) similarities, higher = nearer."""
        fa, fb = self._prepare(a), self._prepare(b)
        if self.kind != "ssim":
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
                     sim: Similarity, others: list[torch.Tensor] | None = None) -> dict[str, float]:
    """The suspect's fidelity to its members: mean nearest-member similarity of its samples
    (`suspect`), of the pretrained model's (`pretrained`), and the `gain` between them.

    With `others` (the member images of other subjects, one tensor each) a sample's nearness is
    specific to its subject: its nearest member's similarity minus the mean over the other
    subjects of their nearest image's. A suspect whose samples only became more photo-like (or
    more like its training set as a whole) then gains nothing; one that learned this subject does."""
    def near(samples: torch.Tensor) -> float:
        own = nearest(sim.matrix(samples, members))[0]
        if others:
            own = own - torch.stack([nearest(sim.matrix(samples, o))[0] for o in others]).mean(0)
        return own.mean().item()

    s, p = near(suspect_samples), near(pretrained_samples)
    return {"suspect": s, "pretrained": p, "gain": s - p}
