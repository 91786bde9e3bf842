"""Perceptual distances for the stage-1 codec's fidelity term P(dec(z_w), dec(z)).

The reference uses LPIPS (AlexNet features with weights calibrated on human judgements),
which would be a download. Two distances need nothing outside the package:

  ssim_distance       1 - SSIM per image: structure, contrast and luminance in local windows,
                      no network (the acceptance measure of a hidden residual)
  FeatureDistance     LPIPS's recipe with uniform layer weights on a network that ships: each
                      layer's features unit-normalised over channels, the squared difference
                      averaged over positions, summed over layers. `FeatureDistance.clip(clip)`
                      takes the vision blocks of a CLIP (the tiny zoo's, or a real one)

Each is a callable (x_w, x) -> per-image distance (B,), images in [0, 1], differentiable in
x_w; pass one to train_codec(perceptual=...) with CodecLossWeights(lpips=...) as its weight.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.clip import CLIPBundle
from ..quality import ssim

PERCEPTUAL = ("ssim", "clip")


def ssim_distance(x_w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - SSIM(x_w, x) per image."""
    return 1.0 - ssim(x_w, x)


class FeatureDistance:
    """sum_l mean_positions || f_l(x_w)/|f_l(x_w)| - f_l(x)/|f_l(x)| ||^2 over a network's layers.

    `features`: images (B, 3, H, W) in [0, 1] -> list of (B, positions, channels) tensors. The
    network is frozen (no gradients to its weights); the reference's features are computed
    without a graph.
    """

    def __init__(self, features: Callable[[torch.Tensor], list[torch.Tensor]]):
        self.features = features

    @classmethod
    def clip(cls, clip: CLIPBundle) -> "FeatureDistance":
        """The vision blocks' token outputs of `clip` (modelseal.models.clip.CLIPBundle)."""
        for p in clip.model.parameters():
            p.requires_grad_(False)
        return cls(lambda images: clip.vision_block_states(images)[0])

    def __call__(self, x_w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = [_unit(f) for f in self.features(x)]
        out = torch.zeros(len(x_w), device=x_w.device)
        for f, r in zip(self.features(x_w), ref):
            out = out + (_unit(f) - r).pow(2).sum(-1).mean(-1)
        return out


def _unit(f: torch.Tensor) -> torch.Tensor:
    f = f.float()
    return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-10)


def perceptual_distance(name: str, clip: CLIPBundle | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The distance called `name` (PERCEPTUAL); 'clip' needs the CLIP whose features it uses."""
    if name == "ssim":
        return ssim_distance
    if name == "clip":
        if clip is None:
            raise ValueError("the 'clip' perceptual distance needs a CLIP model (clip=...)")
        return FeatureDistance.clip(clip)
    raise ValueError(f"unknown perceptual distance {name!r}; known: {', '.join(PERCEPTUAL)}")
