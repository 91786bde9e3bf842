"""What the speed benchmarks share: one process per variant (so each peak memory is its own)
and the peak-memory reading of the current process."""
from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch


def peak_memory(device: str) -> dict:
    """Peak memory so far: CUDA max allocated on a GPU, else the process's max RSS (MB)."""
    if device.startswith("cuda"):
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20, "memory": "cuda max allocated"}
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory": "process max RSS"}


def run_variant(script: str, variant: str, argv: list[str]) -> dict:
    """Run `script --variant VARIANT *argv` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, script, "--variant", variant, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)
