"""Run folders: config.yaml, manifest.json, results.json and artefacts, written atomically.

Every file goes to a temporary name in the same folder first and is renamed into place,
so an interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

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
    """'auto' -> cuda, then mps, then cpu; an explicit device that is absent is bad input
    (checked here, before any model loads)."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name not in ("cpu", "cuda", "mps") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise InputError(f"unknown device '{name}'", "use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} was asked for but no CUDA GPU is visible",
                             "use --device auto or --device cpu")
        n = torch.cuda.device_count()
        if name != "cuda" and int(name[5:]) >= n:
            raise InputError(f"--device {name} was asked for but this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                             f"(cuda:0 to cuda:{n - 1})", "give one of those, or --device cuda")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available", "use --device auto or --device cpu")
    return name


# ---- interruption: Ctrl-C and SIGTERM -------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised by the handler cli.main installs: a KeyboardInterrupt,
    so every `except KeyboardInterrupt` (and the run folder's "interrupted" status) sees it."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


# The signal that asked us to stop (None: none yet), and whether a training step is running:
# a signal that arrives during a step is held until the step ends, so the checkpoint saved on
# the way out holds a whole number of steps (TrainingCheckpoint.steps).
_stop: dict = {"signal": None, "defer": False}


def _on_signal(signum, frame) -> None:
    if _stop["signal"] is not None:   # already stopping: a second Ctrl-C stops at once, a second SIGTERM waits
        if signum == signal.SIGINT:
            raise Interrupted(signum)
        return
    _stop["signal"] = signum
    if not _stop["defer"]:
        raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """Ctrl-C and SIGTERM raise Interrupted (SIGTERM: what schedulers and `timeout` send).
    Returns the previous handlers for restore_signal_handlers; a no-op off the main thread."""
    _stop.update(signal=None, defer=False)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and current is signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (a background job): keep it so
            previous[sig] = current
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread
            pass
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    _stop.update(signal=None, defer=False)


def stop_signal() -> int | None:
    """The signal that interrupted this command (None when none did)."""
    return _stop["signal"]


def end_deferral() -> None:
    """Deliver signals at once again (a training step ended by an exception)."""
    _stop["defer"] = False


# ---- resumable training ----------------------------------------------------------------

RESUME_DIR = "resume"


class TrainingCheckpoint:
    """The resume state of one training loop, in one file (OUT/resume/<name>.pt).

    Holds the trained tensors (by position in the list of parameters the loop trains),
    the optimizer and scheduler state, the step, the data generator's and the CPU default
    generator's states and what the loop keeps (`state()`: histories, a data order).
    Written atomically with torch.save every EVERY_S seconds (longer when saving is slow:
    at most a tenth of the time goes to it), at the end when `final`, and when the run is
    interrupted (Ctrl-C or SIGTERM that arrive during a step are held until it ends);
    read with torch.load(weights_only=True) only: nothing in it is unpickled as code. A
    checkpoint for other options (steps, tensor shapes, `meta`) or that cannot be read is
    ignored with a log line. With path None (library use) nothing is saved or read.

        ckpt = TrainingCheckpoint(out / "resume" / "x.pt", "x", log)
        extra = ckpt.resume(steps, params, opt, sched, gen, state=lambda: {"hist": hist})
        hist = extra.get("hist", hist)
        for step in ckpt.steps():
            ...one step...
        ckpt.remove()  # once what the training made is saved
    """
    EVERY_S = 60.0

    def __init__(self, path: str | Path | None, label: str = "train", log: Callable[[str], None] | None = None,
                 final: bool = False):
        from . import parallel

        if path is not None and parallel.world_size() > 1:
            path = None  # other ranks write no run folder: they could not resume alongside rank 0
        self.path = Path(path) if path is not None else None
        self.label, self.log, self.final = label, log or (lambda msg: None), final
        self.total = self.start = self.done = 0
        self._last = time.time()
        self._cost = 0.0
        self._saved = -1

    @classmethod
    def in_run(cls, out: str | Path, name: str, label: str, log=None, final: bool = False) -> "TrainingCheckpoint":
        return cls(Path(out) / RESUME_DIR / f"{name}.pt", label, log, final)

    def resume(self, total: int, params, opt=None, sched=None, gen=None, state: Callable[[], dict] | None = None,
               meta: dict | None = None) -> dict:
        """Bind the loop's objects; load the checkpoint into them when there is one for these
        options (self.start: the step to go on from). Returns what `state()` held then ({} on a
        fresh start)."""
        import torch

        self.total, self.params = int(total), list(params)
        self.opt, self.sched, self.gen, self.state = opt, sched, gen, state
        self.meta = json.loads(json.dumps({"label": self.label, "total": self.total,
                                           "shapes": [list(p.shape) for p in self.params], **(meta or {})}))
        self.start = self.done = 0
        self._last = time.time()
        if self.path is None or not self.path.is_file():
            return {}
        try:
            ck = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable, truncated, or holding more than tensors: never executed
            self.log(f"[{self.label}] cannot read the checkpoint {self.path} ({type(e).__name__}): starting over")
            return {}
        if not isinstance(ck, dict) or ck.get("meta") != self.meta:
            self.log(f"[{self.label}] the checkpoint {self.path} is for other options: starting over")
            return {}
        try:
            if gen is not None:
                gen.set_state(ck["gen"])
            torch.set_rng_state(ck["rng"])
            if opt is not None:
                opt.load_state_dict(ck["opt"])
            if sched is not None:
                sched.load_state_dict(ck["sched"])
            with torch.no_grad():
                for p, v in zip(self.params, ck["params"], strict=True):
                    p.copy_(v)
            self.start = self.done = self._saved = int(ck["step"])
        except Exception as e:
            raise InputError(f"the checkpoint {self.path} does not fit this run ({type(e).__name__}: {e})"[:300],
                             "delete it to start this training over") from None
        self.log(f"[{self.label}] resuming from step {self.start} of {self.total}")
        return ck.get("extra") or {}

    def steps(self) -> Iterator[int]:
        """The steps still to run. Each one runs with Ctrl-C / SIGTERM held; after it, the
        checkpoint is saved when due, and on such a signal saved and Interrupted raised."""
        try:
            for step in range(self.start, self.total):
                _stop["defer"] = True
                try:
                    yield step
                    self.done = step + 1  # the step ran to its end
                finally:
                    _stop["defer"] = False
                if _stop["signal"] is not None:
                    raise Interrupted(_stop["signal"])
                due = time.time() - self._last >= max(self.EVERY_S, 10 * self._cost)
                if due or (self.final and self.done == self.total):
                    self.save()
        except KeyboardInterrupt:  # between steps: the state is whole
            self.save()
            raise

    def save(self) -> None:
        if self.path is None or self._saved == self.done or not self.total:
            return
        import torch

        t0 = time.time()
        ck = {"meta": self.meta, "step": self.done, "params": [p.detach() for p in self.params],
              "opt": self.opt.state_dict() if self.opt is not None else None,
              "sched": self.sched.state_dict() if self.sched is not None else None,
              "gen": self.gen.get_state() if self.gen is not None else None, "rng": torch.get_rng_state(),
              "extra": self.state() if self.state is not None else {}}
        with atomic_path(self.path) as tmp:
            torch.save(ck, tmp)
        self._saved, self._last, self._cost = self.done, time.time(), time.time() - t0

    def remove(self) -> None:
        """Drop the checkpoint (and the resume folder when nothing else is in it)."""
        if self.path is None:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass


RECORD_FILES = ("config.yaml", "manifest.json")
LOCK_FILE = ".modelseal.lock"


def _entries(path: Path) -> list[Path]:
    return [e for e in path.iterdir() if e.name != LOCK_FILE]


def _clear(path: Path) -> None:
    for e in _entries(path):
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()


def _config_diff(old: dict, new: dict, n: int = 3) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    shown = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:n]]
    return ", ".join(shown) + (f" and {len(keys) - n} more" if len(keys) > n else "")


class RunFolder:
    """One command's output folder: one run, whose config.yaml says what it is.

    - a new or empty folder: the run starts there;
    - the folder of a run of the same command and config: the run goes on there (training
      resumes from its checkpoint; a finished run is repeated in place, its caches kept);
    - the folder of another run: refused unless `overwrite`, which removes its contents
      first (a folder that holds only the record of a run that stopped before writing
      anything, config.yaml and manifest.json, or any run folder when `replace`, the
      command keeping its own state elsewhere, is taken over without it);
    - a non-empty folder that holds no run: refused unless `overwrite`, which writes into
      it without deleting anything (files of the names the command writes are replaced).

    The folder is locked while the run is open, so a second command cannot write into it.
    """

    def __init__(self, out: str | Path, command: str, config: dict, seed: int, device: str,
                 overwrite: bool = False, replace: bool = False):
        self.path = Path(out)
        self.command = command
        self.config = config
        self.seed = seed
        self.device = device
        self._lock = None
        self._make_folder(out)
        if _entries(self.path) and not self._is_run() and not overwrite:
            raise InputError(f"--out {out} is not empty and holds no modelseal run",
                             "give a new or empty folder, or --overwrite to write into it anyway (files of the "
                             "names the command writes are replaced; nothing else is deleted)")
        self._take_lock(out)
        try:
            self._adopt(out, overwrite, replace)
            self.t0 = time.time()
            atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            self._manifest(status="running")
        except BaseException:
            self.close()
            raise

    def _make_folder(self, out) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {out} is a file", "give a folder path for --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            blocker = next((p for p in [self.path, *self.path.parents] if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise InputError(f"--out {out} is inside '{blocker}', which is a file, not a folder",
                                 "give a folder path for --out") from None
            raise InputError(f"cannot create --out {out}: {e.strerror or e}",
                             "give a folder you can write to") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise InputError(f"cannot write into --out {out}: permission denied", "give a folder you can write to")

    def _is_run(self) -> bool:
        return any((self.path / name).exists() for name in RECORD_FILES)

    def _take_lock(self, out) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows: no lock)
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"--out {out} is in use by another modelseal command",
                             "wait for it to end, or give another --out folder") from None
        self._lock = fd

    def close(self) -> None:
        """Release the folder's lock (the run's files stay)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _old_run(self) -> tuple[str | None, dict | None]:
        try:
            command = json.loads((self.path / "manifest.json").read_text()).get("command")
            config = yaml.safe_load((self.path / "config.yaml").read_text())
            return command, config if isinstance(config, dict) else None
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return None, None

    def _adopt(self, out, overwrite: bool, replace: bool) -> None:
        """Decide what becomes of what the folder holds (see the class docstring)."""
        if not self._is_run():
            return
        command, config = self._old_run()
        new = yaml.safe_load(yaml.safe_dump(self.config, sort_keys=False))
        if command == self.command and config == new:
            (self.path / "results.json").unlink(missing_ok=True)  # the results of this run are about to be remade
            return
        record_only = {e.name for e in _entries(self.path)} <= set(RECORD_FILES)
        if overwrite or replace or record_only:
            _clear(self.path)
            return
        if command is None or config is None:
            what = "a modelseal run whose config.yaml or manifest.json cannot be read"
        elif command != self.command:
            what = f"a '{command}' run"
        else:
            what = f"a '{command}' run with another config ({_config_diff(config, new)})"
        raise InputError(f"--out {out} holds {what}",
                         "give a new --out folder, or --overwrite to delete that run and start this one")

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
        """Mark the run failed, or interrupted (Ctrl-C, SIGTERM), so a stopped run is not mistaken
        for one still going; results.json is never written for it."""
        if isinstance(error, KeyboardInterrupt):
            self._manifest(status="interrupted", error=f"{type(error).__name__}: {error}"[:2000],
                           resume="rerun the same command to resume")
        else:
            self._manifest(status="failed", error=f"{type(error).__name__}: {error}"[:2000])

    def finish(self, results: dict) -> Path:
        path = self.path / "results.json"
        write_json(path, results)
        shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)  # what a finished run no longer needs
        self._manifest(status="done")
        return path
