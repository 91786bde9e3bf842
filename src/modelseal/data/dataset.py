"""In-memory image sets: the one type every reader and built-in source returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    """Images with optional class labels and captions.

    images: uint8 array (N, H, W, 3), RGB.
    labels: int64 array (N,) or None; class_names[label] names the class.
    captions: list of N strings or None.
    names: list of N identifiers (file names, or "<source>/<index>").
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    captions: list[str] | None = None
    names: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"ImageSet {self.name}: images must be uint8 (N, H, W, 3), got "
                             f"{self.images.dtype} {self.images.shape}")
        n = len(self.images)
        for attr in ("labels", "captions", "names"):
            v = getattr(self, attr)
            if v is not None and len(v) != n:
                raise ValueError(f"ImageSet {self.name}: {attr} has {len(v)} entries for {n} images")
        if self.names is None:
            self.names = [f"{self.name}/{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def subset(self, idx, name: str | None = None) -> "ImageSet":
        idx = np.asarray(idx)
        return ImageSet(
            name=name or self.name,
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            names=[self.names[i] for i in idx],
            meta=dict(self.meta),
        )

    def with_classes(self, class_names: list[str], what: str = "") -> "ImageSet":
        """The same images labelled in the order of `class_names` (classes are matched by
        name, so a folder's sorted 'eight', 'five', ... meets 'zero', 'one', ...); a set of
        other classes is an InputError."""
        from ..errors import InputError

        if self.class_names == list(class_names):
            return self
        if self.class_names is None or sorted(self.class_names) != sorted(class_names):
            mine, want = set(self.class_names or []), set(class_names)
            diff = sorted(mine - want)[:3] + sorted(want - mine)[:3]
            raise InputError(f"{what or self.name} has classes {sorted(mine)[:5]} unlike {sorted(want)[:5]} "
                             f"(differ: {', '.join(diff)})", "give domains with the same class folders")
        remap = np.array([list(class_names).index(c) for c in self.class_names], dtype=np.int64)
        return ImageSet(name=self.name, images=self.images, labels=remap[self.labels], class_names=list(class_names),
                        captions=self.captions, names=self.names, meta=dict(self.meta))

    def tensor(self, idx=None) -> torch.Tensor:
        """Float tensor (N, 3, H, W) in [0, 1]."""
        arr = self.images if idx is None else self.images[np.asarray(idx)]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)


def concat(sets: list[ImageSet], name: str) -> ImageSet:
    """Concatenate sets that share image size (and class names, when labelled)."""
    if not sets:
        raise ValueError("nothing to concatenate")
    labelled = all(s.labels is not None for s in sets)
    captioned = all(s.captions is not None for s in sets)
    return ImageSet(
        name=name,
        images=np.concatenate([s.images for s in sets]),
        labels=np.concatenate([s.labels for s in sets]) if labelled else None,
        class_names=sets[0].class_names if labelled else None,
        captions=sum((list(s.captions) for s in sets), []) if captioned else None,
        names=sum((list(s.names) for s in sets), []),
    )
