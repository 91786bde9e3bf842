"""Membership-audit folders (root/members, root/holdout, root/others) from built-in data or
the DreamBooth photo subjects, for the audit protocol, its tests and the demo.

A built-in subject is one digit of one domain, e.g. 'mnist-m/3', drawn from the test split
(never seen while the tiny T2I model was trained): the first images become members, the
next ones hold-out, and a further disjoint set ('others') trains the null suspect.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runs import atomic_path

SUBJECT_LAYOUT = "<domain>/<digit> of the built-in digits, e.g. mnist-m/3"


def builtin_subject(spec: str, size: int = 32, seed: int = 0) -> np.ndarray:
    """All test-split images of one digit of one built-in domain, in a seeded order."""
    from .digits import CLASS_NAMES, DOMAINS, load_digits_domain

    try:
        domain, digit = spec.split("/")
        d = int(digit)
    except ValueError:
        raise InputError(f"bad subject '{spec}'", f"expected {SUBJECT_LAYOUT}") from None
    if domain not in DOMAINS or not 0 <= d < len(CLASS_NAMES):
        raise InputError(f"bad subject '{spec}'", f"expected {SUBJECT_LAYOUT}; domains: {', '.join(DOMAINS)}")
    ds = load_digits_domain(domain, "test", size)
    idx = np.flatnonzero(ds.labels == d)
    return ds.images[np.random.default_rng(seed).permutation(idx)]


def photo_subject(folder: str | Path, size: int) -> np.ndarray:
    """The photos of one DreamBooth subject folder, resized (center crop) to size."""
    from .folders import read_image_folder

    return read_image_folder(folder, size).images


def write_split(images: np.ndarray, root: str | Path, counts: dict[str, int]) -> dict[str, Path]:
    """Write consecutive runs of `images` to root/<part>/NNN.png, e.g. counts = {'members': 10,
    'holdout': 10, 'others': 10}; returns the folders."""
    from PIL import Image

    need = sum(counts.values())
    if len(images) < need:
        raise InputError(f"the subject has {len(images)} images, {need} are needed ({counts})",
                         "use fewer members / hold-out images or another subject")
    root = Path(root)
    out, start = {}, 0
    for part, n in counts.items():
        folder = root / part
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            with atomic_path(folder / f"{i:03d}.png") as tmp:
                Image.fromarray(images[start + i]).save(tmp, "PNG")
        out[part] = folder
        start += n
    return out


def dreambooth_classes(root: str | Path) -> dict[str, str]:
    """subject folder -> class noun, from the DreamBooth release's prompts_and_classes.txt."""
    root = Path(root)
    table = root / "prompts_and_classes.txt"
    if not table.is_file():
        raise InputError(f"'{root}' has no prompts_and_classes.txt",
                         "give the DreamBooth dataset folder (one folder per subject beside that file)")
    classes = {}
    for line in table.read_text().splitlines():
        name, _, cls = line.strip().partition(",")
        if cls and name != "subject_name" and (root / name).is_dir():
            classes[name] = cls
    if not classes:
        raise InputError(f"no subject of '{table}' has a folder in '{root}'", "check the dataset folder")
    return classes


def dreambooth_domain(root: str | Path, size: int, split: str = "all", every: int = 5):
    """All DreamBooth subjects as one captioned domain ('a photo of a <class>'), e.g. a
    thief's fine-tuning set; split 'test' is every `every`-th photo of each subject, 'train'
    the rest, 'all' both."""
    from .dataset import ImageSet

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    images, captions, names = [], [], []
    for name, cls in sorted(dreambooth_classes(root).items()):
        photos = photo_subject(Path(root) / name, size)
        for i, im in enumerate(photos):
            held = i % every == every - 1
            if split == "all" or held == (split == "test"):
                images.append(im)
                captions.append(f"a photo of a {cls}")
                names.append(f"{name}/{i}")
    return ImageSet(name="dreambooth", images=np.stack(images), captions=captions, names=names)
