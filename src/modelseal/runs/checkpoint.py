"""Resumable training: the state of one training loop in one file, OUT/resume/<name>.pt."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError
from .files import atomic_path
from .signals import Interrupted, end_deferral, hold_signals, stop_signal


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

    `inputs` ({"--data": path}) are the files the loop learns from: the checkpoint records
    their fingerprint (each file's name, size and modification time), and resuming after
    they changed (images added, removed or edited) is refused: the run would mix two data
    sets and say it is one.

        ckpt = TrainingCheckpoint(out / "resume" / "x.pt", "x", log)
        extra = ckpt.resume(steps, params, opt, sched, gen, state=lambda: {"hist": hist})
        hist = extra.get("hist", hist)
        for step in ckpt.steps():
            ...one step...
        ckpt.remove()  # once what the training made is saved
    """
    EVERY_S = 60.0

    def __init__(self, path: str | Path | None, label: str = "train", log: Callable[[str], None] | None = None,
                 final: bool = False, inputs: dict[str, object] | None = None):
        from .. import parallel

        if path is not None and parallel.world_size() > 1:
            path = None  # other ranks write no run folder: they could not resume alongside rank 0
        self.path = Path(path) if path is not None else None
        self.label, self.log, self.final = label, log or (lambda msg: None), final
        self.inputs = {flag: str(v) for flag, v in (inputs or {}).items() if v is not None}
        self.fingerprints: dict[str, list] = {}
        self.total = self.start = self.done = 0
        self._last = time.time()
        self._cost = 0.0
        self._saved = -1

    @classmethod
    def in_run(cls, out: str | Path, name: str, label: str, log=None, final: bool = False,
               inputs: dict[str, object] | None = None) -> "TrainingCheckpoint":
        return cls(Path(out) / RESUME_DIR / f"{name}.pt", label, log, final, inputs)

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
        self.fingerprints = {flag: input_fingerprint(v) for flag, v in self.inputs.items()}
        if self.path is None or not self.path.is_file():
            return {}
        try:
            with warnings.catch_warnings():  # torch's warnings would come before the one line that says why
                warnings.simplefilter("ignore")
                ck = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable, truncated, or holding more than tensors: never executed
            self.log(f"[{self.label}] cannot read the checkpoint {self.path} ({type(e).__name__}): starting over")
            return {}
        if not isinstance(ck, dict) or ck.get("meta") != self.meta:
            self.log(f"[{self.label}] the checkpoint {self.path} is for other options: starting over")
            return {}
        self._check_inputs(ck.get("inputs"))
        try:
            with warnings.catch_warnings():  # a tampered state: the one line below says so, nothing before it
                warnings.simplefilter("ignore")
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

    def _check_inputs(self, recorded) -> None:
        """Refuse to resume from inputs other than the ones the checkpoint was trained on."""
        if not isinstance(recorded, dict):
            return  # a checkpoint written before inputs were recorded
        for flag, now in self.fingerprints.items():
            if flag in recorded and recorded[flag] != now:
                raise InputError(f"{flag} {self.inputs[flag]} changed since the run was interrupted (files added, "
                                 "removed or edited): resuming would train on two different data sets",
                                 f"restore {flag} as it was, or rerun with --overwrite to start again")

    def steps(self) -> Iterator[int]:
        """The steps still to run. Each one runs with Ctrl-C / SIGTERM held; after it, the
        checkpoint is saved when due, and on such a signal saved and Interrupted raised."""
        try:
            for step in range(self.start, self.total):
                hold_signals()
                try:
                    yield step
                    self.done = step + 1  # the step ran to its end
                finally:
                    end_deferral()
                signum = stop_signal()
                if signum is not None:
                    raise Interrupted(signum)
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
              "extra": self.state() if self.state is not None else {}, "inputs": self.fingerprints}
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


def input_fingerprint(value: str) -> list | None:
    """The files behind an input (a file, or every file under a folder): [name, size,
    modification time in ns] each, sorted; None for what is not on disk (a built-in data set,
    a hub id)."""
    p = Path(value).expanduser()
    try:
        if p.is_file():
            st = p.stat()
            return [[p.name, st.st_size, st.st_mtime_ns]]
        if p.is_dir():
            return [[f.relative_to(p).as_posix(), st.st_size, st.st_mtime_ns]
                    for f in sorted(p.rglob("*")) if f.is_file() and (st := f.stat())]
    except OSError:
        return None
    return None
