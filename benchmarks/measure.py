"""What the speed benchmarks share: one process per variant (so each peak memory is its own),
the peak-memory reading of the current process, and the timing of a training step."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Callable

import torch


def peak_memory(device: str) -> dict:
    """Peak memory so far: CUDA max allocated on a GPU, else the process's max RSS (MB)."""
    if device.startswith("cuda"):
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20, "memory": "cuda max allocated"}
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory": "process max RSS"}


def run_variant(script: str, variant: str, argv: list[str]) -> dict:
    """Run `script --variant VARIANT *argv` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, script, "--variant", variant, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seconds_per_step(step: Callable[[], None], steps: int, device: str, warmup: int = 1) -> float:
    """Mean wall time of `step()` over `steps` calls after `warmup` untimed ones; on CUDA the
    queue is drained around the timed calls and the peak-memory counter restarts after the
    warm-up."""
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps
