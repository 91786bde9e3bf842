"""Run folders: config.yaml, manifest.json, results.json and artefacts, written atomically.

Every file goes to a temporary name in the same folder first and is renamed into place,
so an interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import yaml

from .errors import InputError

TRACKED_PACKAGES = ("modelseal", "torch", "transformers", "diffusers", "peft", "accelerate", "safetensors",
                    "numpy", "scikit-learn", "kornia")


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
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
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    src = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device that is absent is bad input."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible", "use --device auto or --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available", "use --device auto or --device cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise InputError(f"unknown device '{name}'", "use auto, cpu, cuda, cuda:N or mps")
    return name


class RunFolder:
    """One command's output folder."""

    def __init__(self, out: str | Path, command: str, config: dict, seed: int, device: str):
        self.path = Path(out)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {out} is a file", "give a folder path for --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.config = config
        self.seed = seed
        self.device = device
        self.t0 = time.time()
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        self._manifest(status="running")

    def file(self, name: str) -> Path:
        return self.path / name

    def _manifest(self, status: str, **extra) -> None:
        manifest = {
            "command": self.command,
            "argv": sys.argv,
            "status": status,
            "seed": self.seed,
            "device": self.device,
            "git_sha": git_sha(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.t0)),
            "wall_time_s": round(time.time() - self.t0, 2),
        }
        manifest.update(extra)
        write_json(self.path / "manifest.json", manifest)

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (status and the error) so a stopped run is not mistaken for one
        still going; results.json is never written for it."""
        self._manifest(status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
                       error=f"{type(error).__name__}: {error}"[:2000])

    def finish(self, results: dict) -> Path:
        path = self.path / "results.json"
        write_json(path, results)
        self._manifest(status="done")
        return path
