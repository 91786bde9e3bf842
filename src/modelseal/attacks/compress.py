"""Weight-level model attacks: magnitude pruning and round-to-nearest weight quantization.

Both act in place on the UNet's Linear and Conv weights (biases and norms untouched) and
leave a model of the same architecture, so it saves and loads as any other.
"""
from __future__ import annotations

import torch


def _weights(module: torch.nn.Module):
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.weight.numel() > 1:
            yield m.weight


@torch.no_grad()
def prune_(module: torch.nn.Module, amount: float) -> dict:
    """Zero the `amount` fraction of smallest-magnitude weights of each layer (L1 unstructured)."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")
    zeroed = total = 0
    for w in _weights(module):
        k = int(amount * w.numel())
        if k:
            cut = w.abs().flatten().float().kthvalue(k).values
            mask = w.abs() <= cut.to(w.dtype)
            w[mask] = 0
            zeroed += int(mask.sum())
        total += w.numel()
    return {"pruned_fraction": zeroed / max(total, 1)}


@torch.no_grad()
def quantize_(module: torch.nn.Module, bits: int) -> dict:
    """Symmetric per-output-channel round-to-nearest quantization to `bits`, stored dequantized
    (what loading an 8-bit or 4-bit checkpoint and running it does to the weights)."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits must be 2, 3, 4 or 8, got {bits}")
    levels = 2 ** (bits - 1) - 1
    err = norm = 0.0
    for w in _weights(module):
        flat = w.reshape(w.shape[0], -1).float()
        scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / levels
        q = (flat / scale).round().clamp(-levels, levels) * scale
        err += float(((q - flat) ** 2).sum())
        norm += float((flat ** 2).sum())
        w.copy_(q.view_as(w).to(w.dtype))
    return {"bits": bits, "relative_weight_error": (err / max(norm, 1e-12)) ** 0.5}
