"""Reading a codec through crops and rotations by searching for the inverse transform, key-free.

A codec's residual is position-coded, so a crop or a rotation of the image leaves the
extractor reading noise. Instead of learning geometry, the reader can undo it: try a grid of
inverse transforms (`rotation_candidates`, `crop_candidates`) and keep, per image, the
candidate on which the extractor is most confident (mean |logit|). The message never enters
the choice, so the key test applied to the bits read afterwards compares one read per image
with the key; its false-positive rate is measured in the benchmarks, and verification does not
use the search yet.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..attacks.image import rotation
from ..models.diffusion import T2IModel
from .codec import Codec
from .codec_pixels import encode_all

Candidate = Callable[[torch.Tensor], torch.Tensor]


def rotation_candidates(max_angle: float = 20.0, step: float = 2.0) -> list[Candidate]:
    """Rotations by -max_angle..max_angle degrees in `step`s (0 among them)."""
    n = int(round(max_angle / step))
    angles = [i * step for i in range(-n, n + 1)]
    return [lambda x, a=a: rotation(x, a) for a in angles]


def uncrop(images: torch.Tensor, keep: float, top: int, left: int) -> torch.Tensor:
    """Undo a crop that kept `keep` of each side at (top, left) and was resized back: shrink
    the image to that size and place it there, the border edge-padded."""
    h, w = images.shape[-2:]
    sh, sw = max(1, round(h * keep)), max(1, round(w * keep))
    small = F.interpolate(images, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(small, (left, w - sw - left, top, h - sh - top), mode="replicate")


def crop_candidates(size: int, keeps=(0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0), stride: int = 6) -> list[Candidate]:
    """Uncrops for square images of side `size`: each kept fraction at positions `stride` px
    apart, the centre and the far edge included."""
    out: list[Candidate] = []
    for keep in keeps:
        s = max(1, round(size * keep))
        places = sorted({0, (size - s) // 2, size - s} | set(range(0, size - s + 1, stride)))
        out += [lambda x, k=keep, t=t, l=l: uncrop(x, k, t, l) for t in places for l in places]
    return out


@torch.no_grad()
def search_read(codec: Codec, model: T2IModel, images: torch.Tensor, candidates: list[Candidate]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits (N, k) read from each image after the candidate the extractor is most confident
    on, and that candidate's index per image (N,). The message is never used."""
    best_conf = torch.full((len(images),), -torch.inf)
    best_bits = torch.zeros(len(images), codec.k)
    best_idx = torch.zeros(len(images), dtype=torch.long)
    for i, undo in enumerate(candidates):
        logits = codec.extract(encode_all(model, undo(images))).float().cpu()
        conf = logits.abs().mean(1)
        better = conf > best_conf
        best_conf = torch.where(better, conf, best_conf)
        best_bits[better] = (logits[better] > 0).float()
        best_idx[better] = i
    return best_bits, best_idx
