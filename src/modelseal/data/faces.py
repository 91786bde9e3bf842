"""A captioned photo domain that ships with scikit-image: its 200 LFW faces.

The tiny text-to-image model never trained on faces (its VAE saw some among its natural
image crops), so fine-tuning on them is learning a new captioned domain: what a thief who
adapts a published model to their own data does.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .dataset import ImageSet

CAPTIONS = ("a photo of a face", "a black and white photo of a face", "a portrait photo", "a face")


@functools.lru_cache(maxsize=4)
def _faces(size: int) -> np.ndarray:
    import skimage.data as sd

    faces = sd.lfw_subset()  # (200, 25, 25) float in [0, 1]
    out = np.empty((len(faces), size, size, 3), np.uint8)
    for i, f in enumerate(faces):
        im = Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        out[i] = np.repeat(np.asarray(im)[..., None], 3, axis=-1)
    return out


def load_faces(size: int = 32, split: str = "all") -> ImageSet:
    """The 200 faces (split train: the first 160, test: the last 40), one caption each."""
    images = _faces(int(size))
    idx = {"all": np.arange(200), "train": np.arange(160), "test": np.arange(160, 200)}[split]
    return ImageSet(name="faces", images=images[idx], captions=[CAPTIONS[i % len(CAPTIONS)] for i in idx],
                    names=[f"builtin:faces/{i}" for i in idx],
                    meta={"domain": "faces", "split": split, "source": "scikit-image lfw_subset (200 LFW faces)"})
