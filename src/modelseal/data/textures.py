"""A second captioned domain from scikit-image: crops of its texture and microscope photos.

Neither the digits nor the faces: an owner who wants to rehearse a thief's fine-tuning
(`watermark adapt --simulate`) can do it on this domain and still measure robustness on
faces, a domain the rehearsal never saw.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .dataset import ImageSet

# scikit-image image -> caption
SOURCES = {
    "brick": "a photo of a brick wall",
    "grass": "a photo of grass",
    "gravel": "a photo of gravel",
    "coins": "a photo of old coins",
    "moon": "a photo of the moon surface",
    "hubble_deep_field": "a photo of galaxies in deep space",
    "immunohistochemistry": "a microscope photo of stained tissue",
    "retina": "a photo of a retina",
}
CROPS = 30  # per source image
TEST_PER_SOURCE = 5


@functools.lru_cache(maxsize=4)
def _textures(size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    import skimage.data as sd

    rng = np.random.default_rng(0)
    images, captions = [], []
    for name, text in SOURCES.items():
        a = getattr(sd, name)()
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        h, w = a.shape[:2]
        for _ in range(CROPS):
            s = int(rng.integers(min(h, w) // 6, min(h, w) // 3))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            im = Image.fromarray(np.ascontiguousarray(a[y:y + s, x:x + s, :3])).resize((size, size), Image.BICUBIC)
            images.append(np.asarray(im))
            captions.append(text)
    return np.stack(images), tuple(captions)


def load_textures(size: int = 32, split: str = "all") -> ImageSet:
    """240 crops (30 of each of 8 photos); split test: the last 5 crops of each photo."""
    images, captions = _textures(int(size))
    n = len(images)
    is_test = np.arange(n) % CROPS >= CROPS - TEST_PER_SOURCE
    idx = {"all": np.arange(n), "train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}[split]
    return ImageSet(name="textures", images=images[idx], captions=[captions[i] for i in idx],
                    names=[f"builtin:textures/{i}" for i in idx],
                    meta={"domain": "textures", "split": split,
                          "source": "scikit-image data: " + ", ".join(SOURCES)})
