"""The device a command runs on (--device auto | cpu | cuda | cuda:N | mps, checked before any
model loads) and the global generators' seeds."""
from __future__ import annotations

from ..errors import InputError


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


def seed_everything(seed: int) -> None:
    """Python, numpy and torch's global generators from one seed (each step also seeds its own
    torch.Generator from the config's seed)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
