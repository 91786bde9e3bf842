"""Data source specs (SRC) as the commands take them.

  builtin:digits/<domain>   a built-in digits domain (mnist, uci, mnist-m, syn)
  builtin:faces             scikit-image's 200 LFW faces, captioned (a new domain for tiny:t2i)
  builtin:textures          240 captioned crops of scikit-image's texture and microscope photos
  <folder>                  a domain folder of class folders: <folder>/<class>/<image>
  <folder>/metadata.jsonl   (captioned) a Hugging Face imagefolder with file_name + text
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .dataset import ImageSet
from .digits import CLASS_NAMES, DESCRIPTION, DOMAINS, TEST_FRACTION, load_digits_domain

BUILTIN_PREFIX = "builtin:digits/"


def load_source(spec: str, split: str = "train", size: int = 32, test_fraction: float = TEST_FRACTION,
                seed: int = 0) -> ImageSet:
    """Resolve a SRC spec to an ImageSet (split: train, test or all).

    Folders have no split of their own: a deterministic stratified split (seeded) is made.
    """
    if spec.startswith("builtin:"):
        check_builtin(spec)
    if spec == "builtin:faces":
        from .faces import load_faces

        return load_faces(size, split)
    if spec == "builtin:textures":
        from .textures import load_textures

        return load_textures(size, split)
    if spec.startswith(BUILTIN_PREFIX):
        return load_digits_domain(spec[len(BUILTIN_PREFIX):], split, size)
    from .folders import read_class_folders

    full = read_class_folders(spec, size)
    if split == "all":
        return full
    from .digits import _split_indices

    train, test = _split_indices(full.labels, test_fraction, seed)
    return full.subset(train if split == "train" else test, name=full.name)


def check_builtin(spec: str, opt: str = "") -> None:
    """A `builtin:` name that names no built-in source is an InputError (`opt`: the flag it came by)."""
    if spec in ("builtin:faces", "builtin:textures") or (spec.startswith(BUILTIN_PREFIX)
                                                          and spec[len(BUILTIN_PREFIX):] in DOMAINS):
        return
    raise InputError(f"{opt + ': ' if opt else ''}unknown built-in source '{spec}'",
                     f"use {BUILTIN_PREFIX}<domain> with domain in {', '.join(DOMAINS)}, builtin:faces or "
                     "builtin:textures")


def check_inputs(**specs) -> None:
    """Fail at once (before any model loads) on a SRC / folder / file option whose path does
    not exist; built-in names are checked for spelling. None values are skipped."""
    for flag, spec in specs.items():
        for one in spec if isinstance(spec, (list, tuple)) else [spec]:
            if one is None:
                continue
            one = str(one)
            opt = "--" + flag.replace("_", "-")
            if one.startswith("builtin:"):
                check_builtin(one, opt)
            elif not Path(one).expanduser().exists():
                raise InputError(f"{opt}: '{one}' does not exist", "check the path")


def same_source(a: str, b: str) -> bool:
    """Whether two SRC specs name the same data: one built-in name, or one folder however the
    path is spelled (relative or absolute, through a link, with a trailing slash)."""
    a, b = str(a), str(b)
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def source_name(spec: str) -> str:
    return spec[len(BUILTIN_PREFIX):] if spec.startswith(BUILTIN_PREFIX) else Path(spec).name


def builtin_table() -> list[dict]:
    """Built-in sources with their split sizes (computed from labels, no images built)."""
    from .digits import _split_indices, domain_labels, split_seed

    rows = []
    for d in DOMAINS:
        train, test = _split_indices(domain_labels(d), TEST_FRACTION, split_seed(d))
        rows.append({"source": BUILTIN_PREFIX + d, "train": len(train), "test": len(test),
                     "classes": len(CLASS_NAMES), "description": DESCRIPTION[d]})
    return rows
