"""Where modelseal keeps its models, and the content hash of a model folder.

The tiny zoo ships inside the package (zoo_weights/); what modelseal writes for the user (a
rebuilt zoo, derived model folders) goes under $MODELSEAL_HOME (default ~/.cache/modelseal).
Shared by zoo.py (resolving tiny:<name>) and sleeper_entry.py (the shipped sleeper).
"""
from __future__ import annotations

import hashlib
import os
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
