"""Readers for the folder layouts users already have.

  root/<class>/<image>             one domain (Office-Home / DomainNet trees hold one per domain)
  root/<domain>/<class>/<image>    a domain tree
  root/metadata.jsonl              captioned folder (Hugging Face imagefolder: file_name, text);
                                   root/metadata.csv with columns file_name,text also works
  root/members/ + root/holdout/    membership audit folders (images directly inside each)
  root/<image>                     a plain image folder (--images, --calibration)

Files and folders are taken in sorted name order (never the file system's order) and hidden
entries (names starting with '.') are skipped. A symbolic link is followed only where it stays
inside the folder it sits in (a link out of it, like a metadata file_name outside the folder,
is refused: a folder from elsewhere cannot make a run read other files of this machine). A
corrupt file or a wrong layout is an InputError that names the file or folder and shows the
expected layout.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..runs.files import atomic_folder
from .dataset import ImageSet

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

CLASS_LAYOUT = "root/<class>/<image> (one sub-folder per class)"
DOMAIN_LAYOUT = "root/<domain>/<class>/<image> (one sub-folder per domain, each holding class folders)"
CAPTION_LAYOUT = ('root/metadata.jsonl with one {"file_name": "a.png", "text": "a caption"} object per line '
                  "(or root/metadata.csv with columns file_name,text) next to the images")
IMAGE_LAYOUT = "root/<image> (image files directly in the folder)"
MEMBERSHIP_LAYOUT = "root/members/<image> and root/holdout/<image>"


# --------------------------------------------------------------------------- single images

def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
        raise InputError(f"image size must be a positive integer, got {size!r}", "pass --size N with N >= 1")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16") or (im.mode == "I" and im.getextrema()[1] > 255):
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything above 255.
        arr = (np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # same pixels as a direct RGB conversion, without PIL's warning
    return im.convert("RGB")  # always a copy, so it outlives the opened file


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read one image as RGB uint8 (H, W, 3).

    With size: centre-cropped to a square, then resized to size x size (bicubic; large
    downscales are first reduced by an integer factor, so they stay fast and alias-free).
    A corrupt, truncated or unreadable file is an InputError naming the file.
    """
    path = Path(path)
    _check_size(size)
    fix = "remove or replace the file"
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            rgb = _to_rgb(im)
    except Image.DecompressionBombError:
        raise InputError(f"image '{path}' has too many pixels to decode safely",
                         f"downscale it, or {fix}") from None
    except FileNotFoundError:
        raise InputError(f"image '{path}' does not exist", "check the path") from None
    except PermissionError:
        raise InputError(f"cannot read image '{path}' (permission denied)",
                         f"make it readable, or {fix}") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read image '{path}' (not an image format PIL can decode)", fix) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise InputError(f"cannot read image '{path}' (corrupt or truncated: {type(e).__name__})", fix) from None
    if size is not None:
        w, h = rgb.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        if (w, h) != (s, s):
            # Crop first (not resize(box=...)), so pixels outside the square never bleed in.
            rgb = rgb.crop((left, top, left + s, top + s))
        if s != size:
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC,
                             reducing_gap=2.0 if s >= 2 * size else None)
    return np.asarray(rgb, dtype=np.uint8)


# --------------------------------------------------------------------------- listing

def _check_dir(root: Path, what: str, layout: str) -> None:
    if not root.exists():
        raise InputError(f"{what} '{root}' does not exist", f"check the path; expected {layout}")
    if not root.is_dir():
        raise InputError(f"{what} '{root}' is not a folder", f"give a folder laid out as {layout}")


def read_text_lines(path: str | Path, what: str, fix: str) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file; a missing, binary or empty file is one
    InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist" if not path.exists() else f"{what} '{path}' is not a file",
                         fix)
    try:
        raw = path.read_bytes()
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} '{path}' is not UTF-8 text", fix) from None
    except OSError as e:
        raise InputError(f"cannot read {what} '{path}' ({e.__class__.__name__})", fix) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{what} '{path}' holds no lines", fix)
    return lines


def read_json_file(path: str | Path, what: str, fix: str):
    """The parsed content of a JSON file the user gave; an unreadable or malformed one is one
    InputError naming `what` (the caller checks the content's shape)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{what} '{path}' is not readable JSON ({e.__class__.__name__})", fix) from None


def _visible(p: Path) -> bool:
    """Not hidden; a visible link that cannot be followed (it loops, or points at nothing) or
    that leads out of the folder it sits in is an InputError naming it, rather than an entry
    skipped without a word or a file read from elsewhere."""
    if p.name.startswith("."):
        return False
    if p.is_symlink():
        try:
            p.stat()
        except OSError as e:
            what = "loops back on itself" if e.errno == errno.ELOOP else "points at nothing"
            raise InputError(f"'{p}' is a symbolic link that {what} (to '{os.readlink(p)}')",
                             "remove the link, or point it at a real image or folder") from None
        target = p.resolve()
        read = target.is_dir() or p.suffix.lower() in IMAGE_EXTS or target.suffix.lower() in IMAGE_EXTS
        if read and not target.is_relative_to(p.parent.resolve()):
            raise InputError(f"'{p}' is a symbolic link to '{target}', outside the folder '{p.parent}'",
                             "copy the file into the folder instead of linking to it, or remove the link")
    return True


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p) and p.is_dir()), key=lambda p: p.name)


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by extension, any case) directly inside folder, sorted by name; hidden files skipped."""
    folder = Path(folder)
    _check_dir(folder, "image folder", IMAGE_LAYOUT)
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTS and _visible(p) and p.is_file()),
                  key=lambda p: p.name)


def check_disjoint(a: str | Path, b: str | Path, opt_a: str, opt_b: str, fix: str) -> None:
    """Refuse two image folders that are one folder, or that hold the same image file (the same
    bytes under any name): `opt_a` / `opt_b` name the options, `fix` says how to part them."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        raise InputError(f"{opt_a} and {opt_b} are the same folder ('{a}')", fix)
    seen = {hashlib.sha256(f.read_bytes()).digest(): f for f in list_images(a)}
    for f in list_images(b):
        twin = seen.get(hashlib.sha256(f.read_bytes()).digest())
        if twin is not None:
            raise InputError(f"{opt_a} and {opt_b} hold the same image: '{twin}' and '{f}' are one file's bytes", fix)


def _default_name(root: Path) -> str:
    return root.name or root.resolve().name or str(root)


def _load_all(files: list[Path], size: int | None, root: Path) -> np.ndarray:
    """Stack images into one preallocated (N, H, W, 3) array; all must share one shape."""
    out = None
    for i, f in enumerate(files):
        a = load_image(f, size)
        if out is None:
            out = np.empty((len(files),) + a.shape, dtype=np.uint8)
        elif a.shape != out.shape[1:]:
            raise InputError(
                f"images under '{root}' differ in size: '{files[0]}' is {out.shape[2]}x{out.shape[1]}, "
                f"'{f}' is {a.shape[1]}x{a.shape[0]}",
                "pass --size N to resize them all to N x N")
        out[i] = a
    assert out is not None
    return out


# --------------------------------------------------------------------------- plain image folders

def require_images(root: str | Path, what: str = "") -> list[Path]:
    """The image files directly inside a folder (list_images), or one InputError when there
    are none (an empty folder, or one of other files or of sub-folders only); `what` names the
    option the folder came by."""
    root = Path(root)
    _check_dir(root, f"{what}: image folder" if what else "image folder", IMAGE_LAYOUT)
    files = list_images(root)
    if not files:
        nested = [d.name for d in _subdirs(root)]
        hint = f"; it only has sub-folders ({', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''})" \
            if nested else ""
        raise InputError(f"{what + ': ' if what else ''}no images in '{root}'{hint}",
                         f"expected {IMAGE_LAYOUT}, with extensions {', '.join(sorted(IMAGE_EXTS))}")
    return files


def read_image_folder(root: str | Path, size: int | None = None, name: str | None = None) -> ImageSet:
    """All images directly inside one folder (members/, holdout/, --images, --calibration)."""
    root = Path(root)
    _check_size(size)
    files = require_images(root)
    return ImageSet(name=name or _default_name(root), images=_load_all(files, size, root),
                    names=[f.name for f in files], meta={"root": str(root), "size": size})


def write_image_folder(folder: str | Path, images) -> Path:
    """Images (N, 3, H, W) in [0, 1] as 8-bit PNG files 0000.png, 0001.png, ... in `folder`
    (written whole or not at all): what read_image_folder reads back, value for value."""
    arr = (np.asarray(images.detach().float().clamp(0, 1).cpu()) * 255).round().astype(np.uint8)
    with atomic_folder(folder) as tmp:
        tmp.mkdir(parents=True)
        for i, a in enumerate(arr):
            Image.fromarray(a.transpose(1, 2, 0)).save(tmp / f"{i:04d}.png")
    return Path(folder)


# --------------------------------------------------------------------------- class folders

def read_class_folders(root: str | Path, size: int | None = None, name: str | None = None,
                       max_per_class: int | None = None) -> ImageSet:
    """One domain in `root/<class>/<image>` layout.

    Class names are the sub-folder names in sorted order; label i means class_names[i];
    names are "<class>/<file>". max_per_class keeps the first N files (by name) of each class.
    """
    root = Path(root)
    _check_size(size)
    if max_per_class is not None and max_per_class < 1:
        raise InputError(f"max_per_class must be at least 1, got {max_per_class}", "pass a positive number")
    _check_dir(root, "class-folder root", CLASS_LAYOUT)
    classes = _subdirs(root)
    if not classes:
        if list_images(root):
            raise InputError(f"'{root}' looks like a flat folder; expected root/<class>/<image>",
                             f"put each class's images in its own sub-folder: {CLASS_LAYOUT}")
        raise InputError(f"no class sub-folders in '{root}'", f"expected {CLASS_LAYOUT}")
    per_class: list[list[Path]] = []
    for cdir in classes:
        files = list_images(cdir)
        if not files:
            inner = [d for d in _subdirs(cdir) if list_images(d)]
            if inner:
                raise InputError(
                    f"'{root}' looks like a domain tree ('{cdir.name}' holds folders, not images)",
                    f"pass one domain folder such as '{cdir}', laid out as {CLASS_LAYOUT}")
            raise InputError(f"class folder '{cdir}' holds no images",
                             f"add images to it or remove it; expected {CLASS_LAYOUT}")
        per_class.append(files[:max_per_class])
    files = [f for fs in per_class for f in fs]
    labels = np.concatenate([np.full(len(fs), i, dtype=np.int64) for i, fs in enumerate(per_class)])
    names = [f"{c.name}/{f.name}" for c, fs in zip(classes, per_class) for f in fs]
    return ImageSet(name=name or _default_name(root), images=_load_all(files, size, root), labels=labels,
                    class_names=[c.name for c in classes], names=names,
                    meta={"root": str(root), "size": size})


def _list_preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def read_domain_tree(root: str | Path, size: int | None = None,
                     domains: list[str] | None = None) -> dict[str, ImageSet]:
    """`root/<domain>/<class>/<image>` -> {domain: ImageSet}; every domain must have the same classes.

    domains picks (and orders) the domains to read; by default all sub-folders, sorted.
    Class names are compared before any image is decoded.
    """
    root = Path(root)
    _check_size(size)
    _check_dir(root, "domain-tree root", DOMAIN_LAYOUT)
    found = [d.name for d in _subdirs(root)]
    if domains is None:
        domains = found
        if not domains:
            what = "looks like a flat folder" if list_images(root) else "has no domain sub-folders"
            raise InputError(f"'{root}' {what}", f"expected {DOMAIN_LAYOUT}")
    else:
        domains = list(domains)
        missing = [d for d in domains if d not in found]
        if missing:
            raise InputError(f"domain(s) {_list_preview(missing)} not found in '{root}'",
                             f"choose from: {_list_preview(found, 20) or '(none)'}; expected {DOMAIN_LAYOUT}")
        if not domains:
            raise InputError(f"no domains chosen in '{root}'", f"choose from: {_list_preview(found, 20)}")
    class_sets = {}
    for d in domains:
        droot = root / d
        if not _subdirs(droot) and list_images(droot):
            raise InputError(f"'{droot}' holds images, not class folders: '{root}' looks like one domain",
                             f"expected {DOMAIN_LAYOUT}; read '{root}' as a single domain ({CLASS_LAYOUT})")
        class_sets[d] = [c.name for c in _subdirs(droot)]
    ref = domains[0]
    for d in domains[1:]:
        a, b = set(class_sets[ref]), set(class_sets[d])
        if a != b:
            parts = []
            if a - b:
                parts.append(f"'{d}' lacks {_list_preview(sorted(a - b))}")
            if b - a:
                parts.append(f"'{d}' has extra {_list_preview(sorted(b - a))}")
            raise InputError(f"domains '{ref}' and '{d}' have different classes: {'; '.join(parts)}",
                             "give every domain the same class folders")
    return {d: read_class_folders(root / d, size, name=d) for d in domains}


# --------------------------------------------------------------------------- captioned folders

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text", "save it as UTF-8") from None
    except OSError as e:
        raise InputError(f"cannot read '{path}' ({type(e).__name__})", "check the file") from None


def _metadata_rows(root: Path) -> tuple[Path, list[tuple[int, dict]]]:
    """(metadata file, [(line number, row)]) from metadata.jsonl, else metadata.csv."""
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    rows: list[tuple[int, dict]] = []
    if jsonl.is_file():
        for i, line in enumerate(_read_text(jsonl).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"'{jsonl}' line {i} is not valid JSON ({e.msg} at column {e.colno})",
                                 f"write one JSON object per line: {CAPTION_LAYOUT}") from None
            if not isinstance(obj, dict):
                raise InputError(f"'{jsonl}' line {i} is not a JSON object",
                                 f"write one JSON object per line: {CAPTION_LAYOUT}")
            rows.append((i, obj))
        return jsonl, rows
    if csv_path.is_file():
        reader = csv.DictReader(io.StringIO(_read_text(csv_path), newline=""))
        columns = reader.fieldnames or []
        for key in ("file_name", "text"):
            if key not in columns:
                raise InputError(f"'{csv_path}' has no '{key}' column (columns: {', '.join(columns) or 'none'})",
                                 "give a header line: file_name,text")
        try:
            for row in reader:
                if any((v or "").strip() for k, v in row.items() if k is not None):
                    rows.append((reader.line_num, row))
        except csv.Error as e:
            raise InputError(f"'{csv_path}' line {reader.line_num} is not valid CSV ({e})",
                             "quote fields that hold commas or quotes") from None
        return csv_path, rows
    raise InputError(f"no metadata.jsonl (or metadata.csv) in '{root}'", f"expected {CAPTION_LAYOUT}")


def read_captioned_folder(root: str | Path, size: int | None = None, name: str | None = None) -> ImageSet:
    """Hugging Face imagefolder convention: root/metadata.jsonl (or .csv) with file_name and text.

    Images come in metadata order; captions from `text`, names from `file_name`.
    """
    root = Path(root)
    _check_size(size)
    _check_dir(root, "captioned folder", CAPTION_LAYOUT)
    meta_path, rows = _metadata_rows(root)
    if not rows:
        raise InputError(f"'{meta_path}' lists no images", f"add one entry per image: {CAPTION_LAYOUT}")
    files, captions, names = [], [], []
    for line, row in rows:
        for key in ("file_name", "text"):
            if row.get(key) is None:
                raise InputError(f"'{meta_path}' line {line} has no '{key}'",
                                 f"give both file_name and text on every line: {CAPTION_LAYOUT}")
            if not isinstance(row[key], str):
                example = '"text": "a photo of a dog"' if key == "text" else '"file_name": "a.png"'
                raise InputError(f"'{meta_path}' line {line}: '{key}' is {json.dumps(row[key])[:40]}, not a string",
                                 f"write it as a JSON string in quotes, e.g. {example}")
        fname = str(row["file_name"]).strip()
        if not fname or Path(fname).is_absolute():
            raise InputError(f"'{meta_path}' line {line}: file_name '{fname}' must be a path relative to '{root}'",
                             f"expected {CAPTION_LAYOUT}")
        f = root / fname
        if not f.resolve().is_relative_to(root.resolve()):  # '../x.png' or a link out of the folder
            raise InputError(f"'{meta_path}' line {line}: file_name '{fname}' points outside '{root}'",
                             "keep every image inside the captioned folder and name it relative to it")
        if not f.is_file():
            raise InputError(f"'{meta_path}' line {line} names '{fname}', but '{f}' does not exist",
                             "fix file_name or add the image")
        files.append(f)
        captions.append(str(row["text"]))
        names.append(fname)
    return ImageSet(name=name or _default_name(root), images=_load_all(files, size, root), captions=captions,
                    names=names, meta={"root": str(root), "size": size, "metadata": meta_path.name})


# --------------------------------------------------------------------------- membership audits

def read_membership(root: str | Path, size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(members, holdout) from `root/members/` and `root/holdout/`, each a plain image folder."""
    root = Path(root)
    _check_size(size)
    _check_dir(root, "audit folder", MEMBERSHIP_LAYOUT)
    missing = [sub for sub in ("members", "holdout") if not (root / sub).is_dir() or not _visible(root / sub)]
    if missing:
        raise InputError(f"'{root}' has no {' or '.join(m + '/' for m in missing)} folder",
                         f"expected {MEMBERSHIP_LAYOUT}")
    return read_image_folder(root / "members", size), read_image_folder(root / "holdout", size)
