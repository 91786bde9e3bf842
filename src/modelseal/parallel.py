"""Data-parallel training under `accelerate launch` or `torchrun`, with no code change.

Both launchers start one process per device and set RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT (and LOCAL_RANK). When WORLD_SIZE > 1 we join the process group from those
variables (NCCL on CUDA, gloo otherwise); every process draws its own batches, gradients
are averaged before each optimiser step, and only rank 0 writes the run folder. With one
process all of this is a no-op.
"""
from __future__ import annotations

import os

# torch is imported where it is needed: `import modelseal` (and a bad option's message) stays
# light.


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _group():
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MODELSEAL_DIST_BACKEND") != "gloo" \
            else "gloo"
        dist.init_process_group(backend=backend)
    return dist


def rank() -> int:
    """This process's rank (0 when not launched in parallel)."""
    if world_size() <= 1:
        return 0
    return _group().get_rank()


def is_main() -> bool:
    return rank() == 0


def local_device(device: str) -> str:
    """Under a parallel launch each process takes the GPU of its LOCAL_RANK."""
    if world_size() > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def average_gradients(params) -> None:
    """All-reduce the gradients of `params` to their mean over processes (one flat buffer)."""
    if world_size() <= 1:
        return
    dist = _group()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    import torch

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def barrier() -> None:
    if world_size() > 1:
        _group().barrier()
