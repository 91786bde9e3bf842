"""Run folders: one command's --out, holding config.yaml, manifest.json, results.json and what
the run wrote. A folder is a modelseal run only when its manifest.json is modelseal's; nothing
a run did not write is ever deleted or replaced."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from ..errors import InputError
from .checkpoint import RESUME_DIR
from .files import atomic_write_text, guard_writes, unguard_writes, write_json
from .outputs import caches_of, outputs_of

TRACKED_PACKAGES = ("modelseal", "torch", "transformers", "diffusers", "peft", "accelerate", "safetensors",
                    "numpy", "scikit-learn", "kornia")


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


RECORD_FILES = ("config.yaml", "manifest.json", "log.txt")  # log.txt: the run's progress lines (api)
# What every run writes (or removes) in its folder: never taken from a folder that is not a run.
RUN_FILES = (*RECORD_FILES, "results.json", RESUME_DIR)
LOCK_FILE = ".modelseal.lock"
TOOL = "modelseal"
# Manifests of this version list only what the run wrote; older ones listed every entry the
# folder gained while the run worked (a user's file saved there too), so their list is read
# through the names their command writes (runs/outputs.py).
MANIFEST_VERSION = 2
# Every key a manifest.json written before the "tool" marker holds: such a manifest (all of
# them present) is modelseal's too.
LEGACY_KEYS = frozenset(("command", "argv", "status", "seed", "device", "git_sha", "python", "platform",
                         "packages", "started", "wall_time_s"))


def _entries(path: Path) -> list[Path]:
    return [e for e in path.iterdir() if e.name != LOCK_FILE]


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's manifest.json when modelseal wrote it; None when it is absent, unreadable
    or not modelseal's (then the folder is not a modelseal run, whatever else it holds)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(manifest, dict) and (manifest.get("tool") == TOOL or LEGACY_KEYS <= manifest.keys()):
        return manifest
    return None


def _owned(manifest: dict) -> set[str]:
    """The entries of a run's folder that the run wrote: the names its manifest lists (plain
    names only: nothing outside the folder; for an older manifest, only the names its command
    writes) and the files every run writes."""
    files = manifest.get("files")
    names = {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()
    names = {n for n in names if n not in ("", ".", "..", LOCK_FILE) and Path(n).name == n}
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        names &= set(outputs_of(manifest.get("command") if isinstance(manifest.get("command"), str) else None))
    return names | set(RUN_FILES)


def _remove(path: Path, names) -> None:
    for name in sorted(names):
        e = path / name
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        elif _exists(e):
            e.unlink()


def _config_diff(old: dict, new: dict, n: int = 3) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    shown = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:n]]
    return ", ".join(shown) + (f" and {len(keys) - n} more" if len(keys) > n else "")


class RunFolder:
    """One command's output folder: one run, whose manifest.json says it is modelseal's
    (`"tool": "modelseal"`) and lists what the run wrote (`files`, top-level names).

    - a new or empty folder: the run starts there;
    - the folder of a run of the same command and config (or of the same command whatever its
      config, when `replace`: the command keeps its own resume state, as `zoo build` does):
      the run goes on there (training resumes from its checkpoint; a finished run is repeated
      in place, its caches kept);
    - the folder of another run: refused unless `overwrite`, which first deletes what that
      run wrote (its manifest's list; anything else in the folder stays), except, when that
      run was of the same command, its content-keyed caches (runs/outputs.py CACHES), which
      the new run reads and extends (a folder that
      holds only the record of a run that stopped before writing anything, config.yaml,
      manifest.json and log.txt, is taken over without it);
    - a non-empty folder that holds no run (no manifest.json of modelseal's, whatever else
      it holds, a config.yaml included): refused; with `overwrite` the run writes beside
      what it holds (nothing of it is deleted, replaced or listed as the run's).

    Whatever the folder holds that is not the run's (a user's file or folder) must not share
    a name with what the run writes: the record (config.yaml, manifest.json, log.txt,
    results.json, resume/) or the command's outputs (runs/outputs.py: `model` for finetune,
    `triggered.txt` for watermark prompts, ...): such a folder is refused before the work
    starts, naming the entry. While the run is open, every write through runs.files into the
    folder is checked too (`claim`): an entry that is not the run's, there at the start or
    saved by someone while the run works, is never written into, and the manifest lists only
    the entries the run wrote (through runs.files or `file`, or the command's outputs that
    were not there at the start), never a file a user saved there meanwhile.

    The folder is locked while the run is open (`.modelseal.lock`), so a second command cannot
    write into it; the lock file is removed when the run closes (finished, failed or
    interrupted).
    """

    def __init__(self, out: str | Path, command: str, config: dict, seed: int, device: str,
                 overwrite: bool = False, replace: bool = False):
        self.path = Path(out)
        self.command = command
        self.config = config
        self.seed = seed
        self.device = device
        self.outputs = outputs_of(command)
        self._lock = None
        self._foreign: set[str] = set()   # entries there at the start that are not this run's
        self._kept: set[str] = set()      # entries of the earlier run this one goes on from
        self._claimed: set[str] = set()   # entries this run wrote
        self._make_folder(out)
        self._check_foreign(out, overwrite)
        self._take_lock(out)
        try:
            self._adopt(out, overwrite, replace)
            self._check_clash(out)
            self.t0 = time.time()
            guard_writes(self.path, self.claim)
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

    def _check_foreign(self, out, overwrite: bool) -> None:
        """A non-empty folder that is not a modelseal run: refused (see the class docstring);
        with `overwrite`, what it holds is recorded as not this run's."""
        if read_manifest(self.path) is not None:
            return
        names = sorted(e.name for e in _entries(self.path))
        if names and not overwrite:
            raise InputError(f"--out {out} is not empty and holds no modelseal run",
                             "give a new or empty folder, or --overwrite to write into it anyway (beside what it "
                             "holds: nothing of it is deleted or replaced)")
        clash = [n for n in names if n in RUN_FILES]
        if clash:
            raise InputError(f"--out {out} holds {', '.join(clash)} but no modelseal run (no manifest.json of "
                             "modelseal's), and a run would replace them",
                             "give a new or empty folder for --out: modelseal never replaces files it did not write")
        self._foreign = set(names)

    def _check_clash(self, out) -> None:
        """An entry that is not the run's and shares a name with what the run writes: refused."""
        writes = {*RUN_FILES, *self.outputs, *(f"{n}.partial" for n in self.outputs)}
        clash = sorted(self._foreign & writes)
        if clash:
            name = clash[0]
            raise InputError(f"--out {out} holds '{name}', which is not this run's, and `{self.command}` writes "
                             "an entry of that name there",
                             f"move or rename '{name}', or give another --out folder: modelseal never replaces "
                             "files it did not write")

    def _take_lock(self, out) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows: no lock)
            return
        lock = self.path / LOCK_FILE
        for _ in range(5):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputError(f"--out {out} is in use by another modelseal command",
                                 "wait for it to end, or give another --out folder") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:
                self._lock = fd
                return
            os.close(fd)  # the lock file was removed by a run that closed meanwhile: lock the new one
        raise InputError(f"--out {out} is in use by another modelseal command",
                         "wait for it to end, or give another --out folder")

    def close(self) -> None:
        """Release the folder's lock and remove the lock file (the run's files stay)."""
        unguard_writes(self.path)
        if self._lock is not None:
            try:
                (self.path / LOCK_FILE).unlink(missing_ok=True)  # while still holding it: no race
            except OSError:
                pass
            os.close(self._lock)
            self._lock = None

    def _old_config(self) -> dict | None:
        try:
            config = yaml.safe_load((self.path / "config.yaml").read_text())
            return config if isinstance(config, dict) else None
        except (OSError, ValueError, yaml.YAMLError):
            return None

    def _adopt(self, out, overwrite: bool, replace: bool) -> None:
        """Decide what becomes of the run the folder holds (see the class docstring)."""
        manifest = read_manifest(self.path)
        if manifest is None:
            return  # an empty folder, or one _check_foreign let this run write into
        owned = _owned(manifest)
        entries = {e.name for e in _entries(self.path)}
        command, config = manifest.get("command"), self._old_config()
        new = yaml.safe_load(yaml.safe_dump(self.config, sort_keys=False))
        if command == self.command and (config == new or replace):
            (self.path / "results.json").unlink(missing_ok=True)  # the results of this run are about to be remade
            self._kept = entries & owned
            self._foreign = entries - owned
            return
        if overwrite or entries <= set(RECORD_FILES):
            kept = entries & owned & set(caches_of(command)) if command == self.command else set()
            _remove(self.path, owned - kept)
            self._kept = kept
            self._foreign = {e.name for e in _entries(self.path)} - kept
            return
        if command is None or config is None:
            what = "a modelseal run whose config.yaml or manifest.json cannot be read"
        elif command != self.command:
            what = f"a '{command}' run"
        else:
            what = f"a '{command}' run with another config ({_config_diff(config, new)})"
        raise InputError(f"--out {out} holds {what}",
                         "give a new --out folder, or --overwrite to delete that run and start this one")

    def claim(self, name: str, whole: bool = True) -> None:
        """The run is about to write the top-level entry `name` (`whole`: the entry itself, which
        is then replaced; else something inside it): it becomes the run's, unless it is not
        the run's (there at the start, or saved by someone while the run works): InputError."""
        if name in self._claimed or name in self._kept:
            return
        if name in self._foreign:
            raise InputError(f"--out {self.path} holds '{name}', which is not this run's, and `{self.command}` "
                             "was about to write it",
                             f"move or rename '{name}', or give another --out folder: modelseal never replaces "
                             "files it did not write")
        declared = name in RUN_FILES or name in self.outputs
        if whole and not declared and _exists(self.path / name):
            raise InputError(f"'{name}' was saved in --out {self.path} while `{self.command}` worked there, and "
                             "the run was about to replace it",
                             f"move '{name}' out of the run folder and rerun the same command to go on")
        self._claimed.add(name)

    def file(self, name: str) -> Path:
        """The path of the run's top-level entry `name`, claimed as the run's (see `claim`)."""
        self.claim(name)
        return self.path / name

    def _written(self) -> list[str]:
        """The top-level entries this run wrote (and, going on from an earlier run, that one's)."""
        present = {e.name for e in _entries(self.path)}
        outputs = {n for n in self.outputs if n not in self._foreign}
        return sorted(((self._claimed | self._kept | outputs | set(RUN_FILES)) & present) | {"manifest.json"})

    def _manifest(self, status: str, **extra) -> None:
        manifest = {
            "tool": TOOL,
            "manifest_version": MANIFEST_VERSION,
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
            # what this run wrote (top-level names): all that --overwrite may delete
            "files": self._written(),
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
