"""Readers for the folder layouts users already have.

  root/<class>/<image>             one domain (Office-Home / DomainNet trees hold one per domain)
  root/<domain>/<class>/<image>    a domain tree
  root/metadata.jsonl              captioned folder (Hugging Face imagefolder: file_name, text)
  root/members/ + root/holdout/    membership audit folders
Files are listed in sorted order (never the file system's order); a corrupt file or a
wrong layout is an InputError that names the file or folder and the expected layout.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .dataset import ImageSet

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
CLASS_LAYOUT = "root/<class>/<image> (one sub-folder per class)"


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3); with size: centre-cropped to a square and resized."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image '{path}' ({type(e).__name__})",
                         "remove or replace the corrupt file") from None
    if size is not None:
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != size:
            im = im.resize((size, size), Image.LANCZOS if s > size else Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _check_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise InputError(f"{what} '{root}' does not exist", "check the path")
    if not root.is_dir():
        raise InputError(f"{what} '{root}' is not a folder", "give a folder")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def _stack(arrays: list[np.ndarray], root: Path) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"images under '{root}' differ in size ({len(shapes)} sizes)",
                         "pass --size N to resize them all to N x N")
    return np.stack(arrays)


def read_image_folder(root: str | Path, size: int | None = None, name: str | None = None) -> ImageSet:
    """All images directly inside one folder (members/, holdout/, --images, --calibration)."""
    root = Path(root)
    _check_dir(root, "image folder")
    files = list_images(root)
    if not files:
        raise InputError(f"no images in '{root}'", f"put image files ({', '.join(sorted(IMAGE_EXTS))}) in it")
    images = _stack([load_image(f, size) for f in files], root)
    return ImageSet(name=name or root.name, images=images, names=[f.name for f in files])


def read_class_folders(root: str | Path, size: int | None = None, name: str | None = None,
                       max_per_class: int | None = None) -> ImageSet:
    """One domain in `root/<class>/<image>` layout; class names from folder names (sorted)."""
    root = Path(root)
    _check_dir(root, "domain folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        if list_images(root):
            raise InputError(f"'{root}' looks like a flat folder of images",
                             f"expected {CLASS_LAYOUT}")
        raise InputError(f"no class folders in '{root}'", f"expected {CLASS_LAYOUT}")
    arrays, labels, names = [], [], []
    for label, cdir in enumerate(classes):
        files = list_images(cdir)
        if not files:
            raise InputError(f"class folder '{cdir}' holds no images", f"expected {CLASS_LAYOUT}; remove empty classes")
        for f in files[:max_per_class]:
            arrays.append(load_image(f, size))
            labels.append(label)
            names.append(f"{cdir.name}/{f.name}")
    return ImageSet(name=name or root.name, images=_stack(arrays, root), labels=np.asarray(labels, np.int64),
                    class_names=[c.name for c in classes], names=names)


def read_domain_tree(root: str | Path, size: int | None = None, domains: list[str] | None = None) -> dict[str, ImageSet]:
    """`root/<domain>/<class>/<image>`; every domain must share the same class names."""
    root = Path(root)
    _check_dir(root, "dataset folder")
    names = domains or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise InputError(f"no domain folders in '{root}'", "expected root/<domain>/<class>/<image>")
    sets = {d: read_class_folders(root / d, size, name=d) for d in names}
    first = names[0]
    for d in names[1:]:
        a, b = set(sets[first].class_names), set(sets[d].class_names)
        if a != b:
            diff = sorted(a ^ b)[:5]
            raise InputError(f"domains '{first}' and '{d}' have different classes (e.g. {', '.join(diff)})",
                             "give every domain the same class folders")
    return sets


def _read_metadata(root: Path) -> list[dict]:
    jsonl, csv_file = root / "metadata.jsonl", root / "metadata.csv"
    rows = []
    if jsonl.exists():
        for i, line in enumerate(jsonl.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError:
                raise InputError(f"{jsonl}: line {i} is not valid JSON",
                                 'write one object per line: {"file_name": "a.png", "text": "..."}') from None
    elif csv_file.exists():
        with open(csv_file, newline="") as f:
            rows = [(i, r) for i, r in enumerate(csv.DictReader(f), start=2)]
    else:
        raise InputError(f"no metadata.jsonl in '{root}'",
                         'add metadata.jsonl with one {"file_name": ..., "text": ...} object per image')
    out = []
    for i, r in rows:
        if not isinstance(r, dict) or "file_name" not in r or "text" not in r:
            raise InputError(f"metadata line {i} in '{root}' lacks file_name or text", "give both keys on every line")
        out.append(r)
    if not out:
        raise InputError(f"metadata in '{root}' lists no images", "add one line per image")
    return out


def read_captioned_folder(root: str | Path, size: int | None = None, name: str | None = None) -> ImageSet:
    """Hugging Face imagefolder convention: metadata.jsonl (or .csv) with file_name and text."""
    root = Path(root)
    _check_dir(root, "captioned folder")
    rows = _read_metadata(root)
    arrays, captions, names = [], [], []
    for r in rows:
        f = root / r["file_name"]
        if not f.is_file():
            raise InputError(f"metadata names '{r['file_name']}' but '{f}' does not exist",
                             "fix file_name or add the image")
        arrays.append(load_image(f, size))
        captions.append(str(r["text"]))
        names.append(str(r["file_name"]))
    return ImageSet(name=name or root.name, images=_stack(arrays, root), captions=captions, names=names)


def read_membership(root: str | Path, size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """`root/members/` and `root/holdout/` image folders."""
    root = Path(root)
    _check_dir(root, "audit folder")
    for sub in ("members", "holdout"):
        if not (root / sub).is_dir():
            raise InputError(f"'{root}' has no {sub}/ folder",
                             "expected root/members/<image> and root/holdout/<image>")
    return read_image_folder(root / "members", size), read_image_folder(root / "holdout", size)
