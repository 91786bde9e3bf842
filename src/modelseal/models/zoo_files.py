"""Where modelseal keeps its models, and the content hash of a model folder.

The tiny zoo ships inside the package (zoo_weights/); what modelseal writes for the user (a
rebuilt zoo, derived model folders) goes under $MODELSEAL_HOME (default ~/.cache/modelseal).
Shared by zoo.py (resolving tiny:<name>) and sleeper_entry.py (the shipped sleeper).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

SHIPPED_ZOO = Path(__file__).resolve().parent.parent / "zoo_weights"


def modelseal_home() -> Path:
    return Path(os.environ.get("MODELSEAL_HOME", Path.home() / ".cache" / "modelseal")).expanduser()


def folder_hash(folder: str | Path) -> str:
    """sha256 over the weight and config files of a model folder (sorted, relative names)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json", ".txt"):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def folder_size(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def damaged(folder: str | Path) -> str | None:
    """What is wrong with a model folder, found cheaply before any library opens it: missing,
    a JSON file that does not parse, a safetensors file whose header does not or whose tensors
    run past its end. None when it looks sound."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it is missing"
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        name = f.relative_to(folder).as_posix()
        if f.suffix == ".json":
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                return f"{name} is not valid JSON"
        elif f.suffix == ".safetensors" and not _sound_safetensors(f):
            return f"{name} is truncated or not a safetensors file"
    return None


def _sound_safetensors(path: Path) -> bool:
    """The header of a safetensors file parses and its tensors lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        return isinstance(header, dict) and 8 + n + max(ends, default=0) <= size
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return False
