"""Image distortions on batches of images in [0, 1] (B, 3, H, W).

Each attack is a small function `attack(images, generator=None, **params)` returning a
batch of the same shape, clamped to [0, 1]. All but the real JPEG are built from plain
tensor ops or kornia and are differentiable, so the same functions serve evaluation
(under torch.no_grad) and training (a distortion layer before re-encoding). Random
parameters are drawn per image from `generator` (a CPU torch.Generator); None means a
fresh generator seeded 0, so an evaluation is reproducible by default.

Defaults follow SleeperMark's evaluation: JPEG 50, Gaussian blur 3x3 with sigma 4,
Gaussian noise sigma 0.1, 0.5x resize, colour jitter factors in 0.8-1.2, sharpness
factor drawn in [0, 10]. The geometric and combined distortions of the field's toolkits
(WAVES, WIBE) are here too: rotation, crops at any area and position, JPEG + resize + crop.
Attacks that regenerate an image through another model live in attacks.regenerate.

An attack is named on the command line by a spec: its name, optionally followed by
parameters, 'crop:keep=0.5' or 'combined:quality=70,keep=0.9' (parse_spec).
"""
from __future__ import annotations

import inspect
import io
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

Attack = Callable[..., torch.Tensor]


def _gen(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _uniform(n: int, lo: float, hi: float, generator, like: torch.Tensor) -> torch.Tensor:
    """n factors drawn in [lo, hi] on the CPU generator, shaped (n, 1, 1, 1) like `like`."""
    u = torch.rand(n, generator=_gen(generator))
    return (lo + (hi - lo) * u).to(like.device, like.dtype).view(n, 1, 1, 1)


def _range(x: float | tuple[float, float]) -> tuple[float, float]:
    return (float(x), float(x)) if isinstance(x, (int, float)) else (float(x[0]), float(x[1]))


def _check(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"attacks take images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


# --------------------------------------------------------------------------- attacks

def jpeg(images: torch.Tensor, quality: int = 50, differentiable: bool = False,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """JPEG compression at `quality`: a real PIL encode/decode (8-bit, no gradient), or
    kornia's differentiable JPEG approximation when differentiable=True (for training)."""
    _check(images)
    if differentiable:
        from kornia.enhance import jpeg_codec_differentiable

        q = torch.tensor([float(quality)], device=images.device, dtype=images.dtype)
        return jpeg_codec_differentiable(images.clamp(0, 1), q).clamp(0, 1)
    from PIL import Image

    arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        mode_img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        mode_img.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("L" if a.shape[-1] == 1 else "RGB"))
        out.append(dec.reshape(a.shape))
    res = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return res.to(images.device, images.dtype) / 255.0


def gaussian_blur(images: torch.Tensor, kernel_size: int = 3, sigma: float = 4.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with a kernel_size x kernel_size kernel (reflect padding)."""
    from kornia.filters import gaussian_blur2d

    _check(images)
    s = torch.tensor([[float(sigma), float(sigma)]], device=images.device, dtype=images.dtype)
    return gaussian_blur2d(images, (kernel_size, kernel_size), s.expand(len(images), 2)).clamp(0, 1)


def gaussian_noise(images: torch.Tensor, sigma: float = 0.1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise N(0, sigma^2) per pixel, then clamped."""
    _check(images)
    noise = torch.randn(images.shape, generator=_gen(generator)).to(images.device, images.dtype)
    return (images + sigma * noise).clamp(0, 1)


def resize(images: torch.Tensor, scale: float | tuple[float, float] = 0.5,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Downscale by `scale` (bilinear, antialiased; a pair draws one per call in that range)
    and back up to the original size."""
    _check(images)
    lo, hi = _range(scale)
    if not 0.0 < lo <= hi:
        raise ValueError(f"resize scale must be positive, got {scale}")
    f = lo if lo == hi else lo + (hi - lo) * float(torch.rand(1, generator=_gen(generator)))
    h, w = images.shape[-2:]
    small = (max(1, round(h * f)), max(1, round(w * f)))
    x = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def color_jitter(images: torch.Tensor, brightness=(0.8, 1.2), contrast=(0.8, 1.2),
                 saturation=(0.8, 1.2), generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness (x * b), contrast (blend with the mean grey level) and saturation
    (blend with the greyscale image) factors, each drawn in its range (a float fixes it)."""
    _check(images)
    g = _gen(generator)
    n = len(images)
    b, c, s = (_uniform(n, *_range(r), g, images) for r in (brightness, contrast, saturation))
    x = (images * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * s + gray).clamp(0, 1)


def brightness(images: torch.Tensor, factor=(0.8, 1.2), generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(images, factor, 1.0, 1.0, generator)


def contrast(images: torch.Tensor, factor=(0.8, 1.2), generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(images, 1.0, factor, 1.0, generator)


def saturation(images: torch.Tensor, factor=(0.8, 1.2), generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(images, 1.0, 1.0, factor, generator)


def crop(images: torch.Tensor, keep: float | tuple[float, float] = 0.8, position: str = "center",
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep a `keep` fraction of each side (an area of keep^2; a pair draws one per image in
    that range), at the centre or at a random position drawn per image, and resize it back
    (bilinear)."""
    _check(images)
    lo, hi = _range(keep)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop keep fraction must be in (0, 1], got {keep}")
    if position not in ("center", "random"):
        raise ValueError(f"crop position must be center or random, got {position!r}")
    h, w = images.shape[-2:]
    g = _gen(generator)
    n = len(images)
    keeps = [lo] * n if lo == hi else _uniform(n, lo, hi, g, images).view(-1).tolist()
    sizes = [(max(1, round(h * f)), max(1, round(w * f))) for f in keeps]
    if position == "center":
        tops, lefts = [(h - ch) // 2 for ch, _ in sizes], [(w - cw) // 2 for _, cw in sizes]
    elif lo == hi:
        ch, cw = sizes[0]
        tops = torch.randint(0, h - ch + 1, (n,), generator=g).tolist()
        lefts = torch.randint(0, w - cw + 1, (n,), generator=g).tolist()
    else:
        tops = [int(torch.randint(0, h - ch + 1, (1,), generator=g)) for ch, _ in sizes]
        lefts = [int(torch.randint(0, w - cw + 1, (1,), generator=g)) for _, cw in sizes]
    if lo == hi:
        ch, cw = sizes[0]
        x = torch.stack([im[..., t:t + ch, l:l + cw] for im, t, l in zip(images, tops, lefts)])
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    out = [F.interpolate(im[None, :, t:t + ch, l:l + cw], size=(h, w), mode="bilinear", align_corners=False)
           for im, t, l, (ch, cw) in zip(images, tops, lefts, sizes)]
    return torch.cat(out).clamp(0, 1)


def median(images: torch.Tensor, kernel_size: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Median filter over kernel_size x kernel_size windows: smoothing that fills thin lines
    and isolated dots from their surroundings (an inpainting-style removal of a fine stamp)."""
    from kornia.filters import median_blur

    _check(images)
    return median_blur(images, (kernel_size, kernel_size)).clamp(0, 1)


def rotation(images: torch.Tensor, angle=10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate about the centre by `angle` degrees (counter-clockwise; a pair draws one per
    image in that range), bilinear, the uncovered corners black."""
    from kornia.geometry.transform import rotate

    _check(images)
    a = _uniform(len(images), *_range(angle), generator, images).view(-1)
    return rotate(images, a, mode="bilinear", padding_mode="zeros").clamp(0, 1)


def combined(images: torch.Tensor, quality: int = 50, scale: float = 0.5, keep: float = 0.8,
             differentiable: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """JPEG at `quality`, then a `scale` resize, then a central `keep` crop: the combined
    distortion of the field's benchmarks, each step at its own default strength."""
    return crop(resize(jpeg(images, quality, differentiable), scale), keep)


def sharpness(images: torch.Tensor, factor=(0.0, 10.0), generator: torch.Generator | None = None) -> torch.Tensor:
    """Blend with a 3x3-smoothed copy (PIL's ImageEnhance.Sharpness): factor 1 keeps the
    image, above 1 sharpens, below 1 blurs; drawn per image in the range (a float fixes it)."""
    from kornia.enhance import sharpness as _sharpness

    _check(images)
    f = _uniform(len(images), *_range(factor), generator, images).view(-1)
    return _sharpness(images.clamp(0, 1), f).clamp(0, 1)


ATTACKS: dict[str, Attack] = {
    "jpeg": jpeg,
    "gaussian_blur": gaussian_blur,
    "gaussian_noise": gaussian_noise,
    "resize": resize,
    "color_jitter": color_jitter,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "crop": crop,
    "sharpness": sharpness,
    "median": median,
    "rotation": rotation,
    "combined": combined,
}
# What attack_sampler draws from by default (codec training, extractor adaptation): the
# distortions the shipped codecs were trained and measured with.
TRAINING_ATTACKS = ("jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "brightness", "contrast",
                    "saturation", "crop", "sharpness")
# The geometric part of a distortion layer that reads crops and rotations with random
# messages (issue 39): each draw's strength is itself random, over a range wider than the
# attacks it is measured against (crop keep 0.7 centred and off centre, rotation 15 degrees,
# the combined JPEG + resize + crop). Use as attack_sampler(GEOMETRIC_ATTACKS,
# params=GEOMETRIC_PARAMS).
GEOMETRIC_ATTACKS = TRAINING_ATTACKS + ("rotation", "combined")
GEOMETRIC_PARAMS: dict[str, dict] = {
    "crop": {"keep": (0.6, 1.0), "position": "random"},
    "rotation": {"angle": (-20.0, 20.0)},
    "resize": {"scale": (0.5, 1.0)},
}


def apply_attack(name: str, images: torch.Tensor, generator: torch.Generator | None = None,
                 **params) -> torch.Tensor:
    """Run the attack called `name` ('none' returns a copy) with its defaults or `params`."""
    if name in ("none", "identity"):
        return images.clone()
    if name not in ATTACKS:
        raise ValueError(f"unknown image attack {name!r}; known: none, {', '.join(ATTACKS)}")
    return ATTACKS[name](images, generator=generator, **params)


def attack_sampler(names: Iterable[str] | None = None, differentiable: bool = True,
                   include_none: bool = True, params: dict[str, dict] | None = None
                   ) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]:
    """A training distortion layer: each call applies one attack drawn uniformly from
    `names` (default: TRAINING_ATTACKS; 'none' among the choices when include_none) to the
    whole batch, with its defaults or its entry of `params` (e.g. GEOMETRIC_PARAMS; a range
    draws the strength per image or per call, as the attack says).
    With differentiable=True JPEG uses kornia's differentiable approximation."""
    names = list(TRAINING_ATTACKS) if names is None else list(names)
    params = dict(params or {})
    for n in names + list(params):
        if n not in ATTACKS and n not in ("none", "identity"):
            raise ValueError(f"unknown image attack {n!r}; known: none, {', '.join(ATTACKS)}")
    choices = names + (["none"] if include_none and "none" not in names else [])

    def sample(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = _gen(generator)
        name = choices[int(torch.randint(len(choices), (1,), generator=g))]
        kw = dict(params.get(name, {}))
        if name in ("jpeg", "combined") and differentiable:
            kw["differentiable"] = True
        return apply_attack(name, images, generator=g, **kw)

    return sample


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict]:
    """'crop' -> ('crop', {}); 'crop:keep=0.5,position=random' -> ('crop', {'keep': 0.5,
    'position': 'random'}). Numbers parse as int or float; anything else stays text."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"attack {spec!r}: write name:param=value[,param=value], e.g. crop:keep=0.5")
        params[key.strip()] = _value(value.strip())
    return name.strip(), params


def check_params(spec: str, fn: Callable, params: dict, positional: int = 1) -> None:
    """Refuse parameters `fn` does not take (naming the ones it does); its first `positional`
    arguments (the images, a model) and its generator are the caller's, not the spec's."""
    known = [p for p in list(inspect.signature(fn).parameters)[positional:] if p != "generator"]
    for key in params:
        if key not in known:
            raise ValueError(f"attack {spec!r}: unknown parameter {key!r}; it takes {', '.join(known) or 'none'}")
