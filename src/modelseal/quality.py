"""Image quality measures shared by the tasks and the attacks: PSNR and SSIM per image.

Both take batches of images in [0, 1] (B, C, H, W) and return one value per image (B,).
"""
from __future__ import annotations

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (Gaussian window 7 px, 11 from 64 px up)."""
    import kornia

    win = 11 if min(a.shape[-2:]) >= 64 else 7
    return kornia.metrics.ssim(a.float(), b.float(), win).flatten(1).mean(1)
