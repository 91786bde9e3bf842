"""Files written atomically: to a temporary name in the same folder first, renamed into place,
so an interrupted run never leaves a half-written file behind.

Every write here into a run folder that is open in this process (RunFolder) first passes the
run's check of the top-level entry it lands in: an entry that is not the run's (a user's file)
is refused, one that is becomes the run's (listed in its manifest)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

# Run folders open in this process: absolute folder -> the check of a top-level name about to be
# written (RunFolder.claim(name, whole): whole when the entry itself is written, not something
# inside it), which raises InputError for an entry that is not the run's.
_GUARDS: dict[Path, Callable[[str, bool], None]] = {}


def guard_writes(folder: str | Path, check: Callable[[str, bool], None]) -> None:
    _GUARDS[Path(os.path.abspath(folder))] = check


def unguard_writes(folder: str | Path) -> None:
    _GUARDS.pop(Path(os.path.abspath(folder)), None)


def check_write(path: str | Path) -> None:
    """`path` is about to be written: when it lies in an open run folder, the run claims the
    top-level entry it is in (or refuses it: not the run's)."""
    if not _GUARDS:
        return
    p = Path(os.path.abspath(path))
    for folder, check in list(_GUARDS.items()):
        try:
            parts = p.relative_to(folder).parts
        except ValueError:
            continue
        if parts:
            check(parts[0], len(parts) == 1)


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    check_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it into place when the block succeeds
    (for writers that want a file name: savefig, Image.save, safetensors)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    check_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path):
    """Yield `path`.partial (emptied first) to write a folder into (save_pretrained); when the
    block succeeds it replaces `path`, when it fails it is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    check_write(path)
    check_write(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
