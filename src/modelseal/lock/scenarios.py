"""The four IP-CLIP scenarios: how the authorized and unauthorized training sets are made.

  target-specified  authorized = a source domain; unauthorized = a named target domain
  target-free       unauthorized = the source under heavy augmentation (RandAugment, 10 ops
                    at magnitude 10, plus cutout), no target data needed
  ownership         unauthorized = the source with a stamp; a suspect that collapses on
                    stamped inputs but not on clean ones is ours
  authorization     authorized = stamped source; unauthorized = clean inputs of every domain
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

SCENARIOS = ("target-specified", "target-free", "ownership", "authorization")


@dataclass
class Stamp:
    """A visible pattern blended into images: x' = (1 - strength) x + strength * colour on the mask.

    pattern 'grid' (reference: every pixel whose row or column index is even), 'lines'
    (every `period`-th row and column), 'checker' (period x period cells) or 'patch' (a
    square of `period` px in the bottom-right corner).
    """
    pattern: str = "checker"
    strength: float = 0.3
    period: int = 4
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        """A stamp read from a checkpoint's card has not been through the options' checks."""
        try:
            ok = 0 < float(self.strength) <= 1 and int(self.period) >= 1 and \
                all(0 <= float(c) <= 1 for c in self.color) and len(self.color) == 3
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"bad stamp (strength {self.strength!r}, period {self.period!r}, colour {self.color!r})",
                             "use a strength in (0, 1], a period >= 1 and a colour in [0, 1]; for a checkpoint, "
                             "restore its lock.json")

    def largest_period(self, size: int) -> int:
        """The largest period that still draws a pattern on size x size images: two cells,
        lines or grid lines per side, a patch of at most half the side."""
        return max(1, size // 4 if self.pattern == "lines" else size // 2)

    def check_fits(self, size: int, option: str = "--stamp-period") -> None:
        """Refuse a period too large for the images (a checker of one cell is a tint)."""
        most = self.largest_period(size)
        if int(self.period) > most:
            raise InputError(f"{option} {self.period} does not fit the {size} px images of this model: a "
                             f"{self.pattern} stamp needs a period of at most {most} px to draw a pattern",
                             f"use --stamp-period {most} or less, e.g. --stamp-period {min(4, most)}")

    def mask(self, h: int, w: int) -> torch.Tensor:
        r = torch.arange(h).view(h, 1)
        c = torch.arange(w).view(1, w)
        p = max(1, self.period)
        if self.pattern == "grid":
            m = (r % p == 0) | (c % p == 0)
        elif self.pattern == "lines":
            m = (r % (2 * p) == 0) | (c % (2 * p) == 0)
        elif self.pattern == "checker":
            m = ((r // p) + (c // p)) % 2 == 0
        elif self.pattern == "patch":
            m = (r >= h - p) & (c >= w - p)
        else:
            raise InputError(f"unknown stamp pattern '{self.pattern}'", "use grid, lines, checker or patch")
        return m.float()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0, 1] (B, 3, H, W)."""
        m = self.mask(images.shape[-2], images.shape[-1]).to(images.device) * self.strength
        col = torch.tensor(self.color, device=images.device).view(1, 3, 1, 1)
        return images * (1 - m) + col * m


AUGMENTS = ("randaugment", "randaugment+lowres")


def heavy_augment(images: torch.Tensor, copies: int = 1, n_ops: int = 10, magnitude: float = 10.0,
                  cutout_frac: float = 16 / 224, seed: int = 0, recipe: str = "randaugment") -> torch.Tensor:
    """The target-free 'unauthorized domain': RandAugment(n_ops, magnitude) + cutout.

    The cutout side is a fraction of the image side (16 px at 224 in the reference).
    `copies` augmented versions of every image are drawn with a fixed seed.
    recipe 'randaugment+lowres' (ours, not the paper's) replaces half of the augmented
    images by the clean image down-sampled 2-4x and up-sampled again: RandAugment has no
    strong blur, so low-resolution scans of the authorized domain would otherwise count
    as authorized.
    """
    if recipe not in AUGMENTS:
        raise InputError(f"unknown augmentation recipe '{recipe}'", f"use one of {', '.join(AUGMENTS)}")
    from kornia.augmentation.auto import RandAugment

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        aug = RandAugment(n=n_ops, m=magnitude)
        outs = []
        for _ in range(copies):
            for i in range(0, len(images), 256):
                x = aug(images[i:i + 256].float())
                if recipe == "randaugment+lowres":
                    x = _lowres(images[i:i + 256].float(), x)
                outs.append(_cutout(x, max(1, round(cutout_frac * x.shape[-1]))))
        return torch.cat(outs).clamp(0, 1)
    finally:
        torch.random.set_rng_state(state)


def _lowres(x: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
    """Half of the images, at random: x down-sampled by 2, 3 or 4 (area) and up-sampled
    bilinearly; the other half keep their augmented version."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    pick = torch.rand(len(x)) < 0.5
    factor = torch.randint(2, 5, (len(x),))
    out = augmented.clone()
    for f in (2, 3, 4):
        sel = pick & (factor == f)
        if sel.any():
            small = F.interpolate(x[sel], size=(max(1, h // f), max(1, w // f)), mode="area")
            out[sel] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def _cutout(x: torch.Tensor, side: int) -> torch.Tensor:
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,))
    cx = torch.randint(0, w, (b,))
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    half = side // 2
    m = ((rows - cy.view(b, 1, 1)).abs() <= half) & ((cols - cx.view(b, 1, 1)).abs() <= half)
    return x * (~m).unsqueeze(1).float()
