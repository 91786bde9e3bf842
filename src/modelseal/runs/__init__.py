"""Run folders and what a run needs around its work, one module per job:

  files.py       atomic writes (bytes, text, JSON, a temporary path, a whole folder)
  devices.py     --device auto | cpu | cuda[:N] | mps, checked before anything loads; seeds
  signals.py     Ctrl-C / SIGTERM: Interrupted, held during a training step
  checkpoint.py  TrainingCheckpoint: the resume state of one training loop
  outputs.py     what each command writes in its run folder (checked before its work starts)
  folder.py      RunFolder: config.yaml, manifest.json, results.json, one run per folder; only
                 what the run wrote is listed, replaced or deleted

Every public name is importable from here (``from modelseal.runs import RunFolder``).
"""
from .checkpoint import RESUME_DIR, TrainingCheckpoint
from .devices import resolve_device, seed_everything
from .files import atomic_folder, atomic_path, atomic_write_bytes, atomic_write_text, write_json
from .folder import LOCK_FILE, RECORD_FILES, TRACKED_PACKAGES, RunFolder, git_sha, package_versions
from .outputs import OUTPUTS, ZOO_FILES, ZOO_WORK, outputs_of
from .signals import (Interrupted, end_deferral, hold_signals, install_signal_handlers, restore_signal_handlers,
                      stop_signal)

__all__ = ["LOCK_FILE", "OUTPUTS", "RECORD_FILES", "RESUME_DIR", "TRACKED_PACKAGES", "ZOO_FILES", "ZOO_WORK",
           "Interrupted", "RunFolder", "TrainingCheckpoint", "atomic_folder", "atomic_path", "atomic_write_bytes",
           "atomic_write_text", "end_deferral", "git_sha", "hold_signals", "install_signal_handlers", "outputs_of",
           "package_versions", "resolve_device", "restore_signal_handlers", "seed_everything", "stop_signal",
           "write_json"]
