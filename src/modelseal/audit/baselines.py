"""Membership baselines that need no inversion, on the unmasked image (higher = member).

  loss        -L_ft(z0): the fine-tuned model's denoising loss (naive loss attack)
  calibrated  L_pre(z0) - L_ft(z0): the loss calibrated by the pretrained model; this is
              CGI-DM's objective without a mask and without PGD, the key control

Both average the epsilon-prediction MSE (a v-predicting model's output converted to eps) over the same fixed (t, noise) draws for every
image and both models, so the numbers are paired and reproducible.
"""
from __future__ import annotations

import torch

from ..models.diffusion import T2IModel


@torch.no_grad()
def paired_losses(pretrained: T2IModel, finetuned: T2IModel, images: torch.Tensor, prompts: list[str],
                  samples: int = 32, seed: int = 0, t_min: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pre, L_ft) per image, each averaged over `samples` shared (t, eps) draws."""
    shared = pretrained is finetuned and pretrained.has_adapter
    z0 = pretrained.encode_images(images).float()
    ctx = pretrained.encode_prompts(prompts)
    ctx_ft = ctx if shared else finetuned.encode_prompts(prompts)
    T = pretrained.scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    l_pre = torch.zeros(len(z0))
    l_ft = torch.zeros(len(z0))
    for _ in range(samples):
        t = torch.randint(t_min, T, (len(z0),), generator=g).to(z0.device)
        eps = torch.randn(z0.shape, generator=g).to(z0.device)
        zt = pretrained.noisy(z0, eps, t)
        for model, c, acc, on in ((pretrained, ctx, l_pre, False), (finetuned, ctx_ft, l_ft, True)):
            if shared:
                with model.adapter(on):
                    pred = model.eps(zt.to(model.dtype), t, c)
            else:
                pred = model.eps(zt.to(model.dtype), t, c)
            acc += ((pred - eps) ** 2).flatten(1).mean(1).cpu()
    return l_pre / samples, l_ft / samples


def loss_scores(l_pre: torch.Tensor, l_ft: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": -l_ft, "calibrated": l_pre - l_ft}
