"""What each command writes in its run folder: the top-level names beside the run's record
(config.yaml, manifest.json, log.txt, results.json, resume/).

RunFolder refuses, before the command's work starts, a folder holding an entry of one of these
names that is not the run's (a user's `model/` under `finetune`, a user's `triggered.txt`
under `watermark prompts`), and the manifest of a run written before the names a run writes
were recorded is read through this list. One place: a command that writes a new top-level
name adds it here.
"""
from __future__ import annotations

# The tiny zoo's models and its record (models/zoo.py reads them), and the build's work folder.
ZOO_FILES = ("clip", "judge", "t2i", "codec", "zoo.json")
ZOO_WORK = "build"

OUTPUTS: dict[str, tuple[str, ...]] = {
    "zoo build": (*ZOO_FILES, ZOO_WORK),
    "zoo eval": ("samples.png",),
    "lock train": ("checkpoint", "checkpoint-sl", "accuracy.png"),
    "lock eval": (),
    "lock verify": (),
    "lock attack": ("points", "attack.png"),
    "finetune": ("model",),
    "audit": ("cache", "evidence", "roc.png", "report.html"),
    "watermark codec": ("codec",),
    "watermark embed": ("model",),
    "watermark adapt": ("codec",),
    "watermark prompts": ("triggered.txt", "clean.txt", "requests.csv"),
    "watermark verify": ("triggered", "clean", "samples.png"),
    "demo": ("samples.png", "lock", "audit", "watermark", "report.html", "summary.json"),
}


# Content-keyed caches (keyed by the models, options and inputs they were computed from, so
# never stale): `--overwrite` over a run of the same command keeps them, and the new run
# reads what it can from them (an audit rerun with another --control rescores nothing).
CACHES: dict[str, tuple[str, ...]] = {
    "audit": ("cache",),
}


def caches_of(command: str | None) -> tuple[str, ...]:
    """The content-keyed caches among `command`'s outputs (kept by --overwrite over its own runs)."""
    return CACHES.get(command or "", ())


def outputs_of(command: str | None) -> tuple[str, ...]:
    """The top-level names `command` writes beside the run's record (none for an unknown one)."""
    return OUTPUTS.get(command or "", ())
