"""Regeneration attacks: the image is re-synthesised by another generative model, which keeps
what it shows and may drop an invisible mark (WAVES' and WIBE's regeneration attacks).

  vae_regenerate   encode and decode through an autoencoder (the posterior mean): with one
                   the owner's reader does not use, it is a learned compression
  purify           SDEdit / img2img: noise the image's latent to t = strength * T and denoise
                   it back with a diffusion model (DDIM, unconditional unless a prompt is given)

Both take images in [0, 1] (B, 3, H, W) and return the same shape; images of another size
are resized to the model's working size and back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from ..models.diffusion import T2IModel, vae_decode, vae_encode


def _to_size(images: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (h, w):
        return images
    return F.interpolate(images, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def vae_regenerate(images: torch.Tensor, vae: AutoencoderKL, batch_size: int = 64,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """decode(encode(x)) through `vae` (posterior mean), in [0, 1]."""
    return torch.cat([vae_decode(vae, vae_encode(vae, images[i:i + batch_size])).to(images.device)
                      for i in range(0, len(images), batch_size)])


def check_strength(strength: float) -> None:
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"purify strength must be in (0, 1], got {strength}")


@torch.no_grad()
def purify(images: torch.Tensor, model: T2IModel, strength: float = 0.2, steps: int = 30, prompt: str = "",
           batch_size: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion purification: z0 = E(x); z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps at the DDIM
    step nearest t = strength * T; then the remaining DDIM steps to t = 0 with `model`
    (`prompt`, no CFG; the empty prompt by default); decoded to pixels."""
    check_strength(strength)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    h, w = images.shape[-2:]
    x = _to_size(images, model.image_size, model.image_size)
    sched = DDIMScheduler.from_config(model.scheduler.config, set_alpha_to_one=False)
    sched.set_timesteps(steps, device=model.device)
    run = sched.timesteps[min(steps - 1, int(round(steps * (1 - strength)))):]
    out = []
    for i in range(0, len(x), batch_size):
        z0 = model.encode_images(x[i:i + batch_size]).to(model.dtype)
        eps = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
        z = sched.add_noise(z0, eps, run[:1].expand(len(z0)))
        ctx = model.encode_prompts([prompt] * len(z0))
        for t in run:
            z = sched.step(model.unet_out(z, t.expand(len(z)), ctx), t, z).prev_sample
        out.append(model.decode_latents(z).cpu())
    res = torch.cat(out).to(images.device, images.dtype)
    return _to_size(res, h, w).clamp(0, 1)


# name -> (the attack, the kind of model it regenerates through: its second argument)
REGENERATION = {"regen_vae": (vae_regenerate, "vae"), "purify": (purify, "t2i")}
