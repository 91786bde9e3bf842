"""CGI-DM contrasting gradient inversion (Wu et al., CVPR 2024).

Half of an image's latent is removed by a block mask M (1 = kept). Starting from the
re-encoded partial image z_p, the removed part is recovered by L2 PGD on delta in

    z(delta) = M * z0 + (1 - M) * (z_p + delta)

ascending the contrast  J(delta) = L_pre(z) - L_ft(z), where for each model
L(z) = || eps_theta(sqrt(a_t) z + sqrt(1 - a_t) eps, t, c) - eps ||^2 with the fine-tuning
prompt c, t ~ U{1..T-1} and eps shared by both models ("shared" noise: J and its gradient
are then exactly zero when the two models are equal; "separate" draws each model its own,
as the reference code does). J is a Monte Carlo surrogate of the KL divergence between the
two models' posteriors: the recovered content goes where the fine-tuned model denoises
well and the pretrained one does not, which is the image itself when it was trained on.

Images and Monte Carlo samples are batched; model weights are frozen; each step takes one
gradient with torch.autograd.grad (no retained graphs). A LoRA suspect runs as one UNet
with its adapter switched on (L_ft) and off (L_pre).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import InversionOptions
from ..models.diffusion import T2IModel, paired_contexts

# Reference setting on SD latents (4 x 64 x 64 = 16,384 values): eps 70, step 2, 1000 steps.
REF_DIM = 4 * 64 * 64
REF_EPS = 70.0
REF_STEP = 2.0
REF_STEPS = 1000


def block_mask(shape: tuple[int, int], block: int, kind: str = "checker", ratio: float = 0.5,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask (1 = kept) of block cells over an (h, w) grid, the same on every channel."""
    h, w = shape
    if block < 1:
        raise ValueError("mask block must be at least 1")
    gh, gw = math.ceil(h / block), math.ceil(w / block)
    if kind == "checker":
        ii, jj = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        cells = ((ii + jj) % 2 == 0).float()
    elif kind == "random":
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
        n = gh * gw
        removed = torch.randperm(n, generator=generator)[: max(1, round(ratio * n))]
        cells = torch.ones(n)
        cells[removed] = 0
        cells = cells.view(gh, gw)
    else:
        raise ValueError(f"unknown mask kind {kind!r} (checker | random)")
    return cells.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]


def radius(opts: InversionOptions, z0: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-image L2 radius eps and step size (the reference's values rescaled to this latent)."""
    n = len(z0)
    if opts.eps is not None:
        eps = torch.full((n,), float(opts.eps))
    elif opts.eps_rule == "dim":
        eps = torch.full((n,), REF_EPS * math.sqrt(z0[0].numel() / REF_DIM))
    elif opts.eps_rule == "norm":
        eps = opts.eps_scale * ((1 - keep) * z0).flatten(1).norm(dim=1).cpu()
    else:
        raise ValueError(f"unknown eps rule {opts.eps_rule!r} (dim | norm)")
    step = eps * (REF_STEP / REF_EPS) * (REF_STEPS / max(opts.steps, 1)) if opts.step_size is None \
        else torch.full((n,), float(opts.step_size))
    return eps, step


class Contrast:
    """J = L_pre - L_ft (or a one-model ablation) for a batch, summed over images.

    `pretrained` and `finetuned` may be the same T2IModel object holding a LoRA adapter:
    then L_ft runs with the adapter on and L_pre with it off.
    """

    def __init__(self, pretrained: T2IModel, finetuned: T2IModel, objective: str = "contrast",
                 noise: str = "shared"):
        if objective not in ("contrast", "ft-only", "pre-only"):
            raise ValueError(f"unknown objective {objective!r}")
        if noise not in ("shared", "separate"):
            raise ValueError(f"unknown noise mode {noise!r}")
        self.pre, self.ft = pretrained, finetuned
        self.objective, self.noise = objective, noise
        # One model object with a LoRA adapter: L_pre with it off, L_ft with it on.
        self.shared_base = pretrained is finetuned and pretrained.has_adapter
        self.T = pretrained.scheduler.config.num_train_timesteps

    def _loss(self, model: T2IModel, adapter_on: bool, z, t, eps, ctx):
        zt = model.noisy(z, eps, t).to(model.dtype)
        if self.shared_base:
            with model.adapter(adapter_on):
                pred = model.eps(zt, t, ctx)
        else:
            pred = model.eps(zt, t, ctx)
        return ((pred - eps) ** 2).flatten(1).mean(1)

    def draws(self, n: int, shape, mc: int, g: torch.Generator, t_min: int = 1):
        dev = self.pre.device
        t = torch.randint(t_min, self.T, (n * mc,), generator=g).to(dev)
        eps = torch.randn((n * mc, *shape), generator=g).to(dev)
        eps2 = torch.randn((n * mc, *shape), generator=g).to(dev) if self.noise == "separate" else eps
        return t, eps, eps2

    def __call__(self, z: torch.Tensor, ctx_pre: torch.Tensor, ctx_ft: torch.Tensor, t, eps, eps2,
                 mc: int) -> torch.Tensor:
        """Per-image J (n,) averaged over mc samples; z is (n, C, h, w)."""
        zz = z.repeat_interleave(mc, 0)
        j = torch.zeros(len(zz), device=z.device)
        if self.objective in ("contrast", "pre-only"):
            j = j + self._loss(self.pre, False, zz, t, eps, ctx_pre.repeat_interleave(mc, 0))
        if self.objective in ("contrast", "ft-only"):
            j = j - self._loss(self.ft, True, zz, t, eps2, ctx_ft.repeat_interleave(mc, 0))
        return j.view(-1, mc).mean(1)


@dataclass
class Inversion:
    original: torch.Tensor   # (n, 3, H, W) in [0, 1]
    partial: torch.Tensor    # decode(M * z0)
    recovered: torch.Tensor  # decode(z*)
    keep: torch.Tensor       # latent keep-mask (n, 1, h, w)
    keep_pixels: torch.Tensor  # the same mask at image resolution (n, 1, H, W)
    objective_start: torch.Tensor
    objective_end: torch.Tensor


def _masks(opts: InversionOptions, n: int, hw: tuple[int, int], offset: int) -> torch.Tensor:
    if opts.mask == "checker":
        m = block_mask(hw, opts.block, "checker")
        return m.expand(n, 1, *hw).clone()
    out = []
    for i in range(n):  # a fixed random mask per image index: reproducible across runs
        g = torch.Generator().manual_seed(opts.seed * 100_003 + offset + i)
        out.append(block_mask(hw, opts.block, "random", opts.ratio, g))
    return torch.stack(out)[:, None]


def invert(pretrained: T2IModel, finetuned: T2IModel, images: torch.Tensor, prompt: str | list[str],
           opts: InversionOptions, progress=None, offset: int = 0) -> Inversion:
    """Run CGI-DM on a batch of images in [0, 1]; returns original, partial and recovered."""
    model = pretrained
    dev = model.device
    n = len(images)
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    g = torch.Generator().manual_seed(opts.seed * 7_919 + offset)
    with torch.no_grad():
        z0 = model.encode_images(images).float()
        hw = tuple(z0.shape[-2:])
        keep = _masks(opts, n, hw, offset).to(dev)
        partial = model.decode_latents(z0 * keep)
        z_p = model.encode_images(partial).float() if model.vae is not None else z0 * keep
        ctx_pre, ctx_ft = paired_contexts(pretrained, finetuned, prompts)
    contrast = Contrast(pretrained, finetuned, opts.objective, opts.noise)
    eps_r, step = (v.to(dev).view(-1, 1, 1, 1) for v in radius(opts, z0, keep))
    hole = 1 - keep
    delta = torch.zeros_like(z0)
    j_start = j_end = torch.zeros(n)
    for it in range(opts.steps):
        delta.requires_grad_(True)
        z = keep * z0 + hole * (z_p + delta)
        t, e1, e2 = contrast.draws(n, z0.shape[1:], opts.mc_samples, g, opts.t_min)
        j = contrast(z, ctx_pre, ctx_ft, t, e1, e2, opts.mc_samples)
        (grad,) = torch.autograd.grad(j.sum(), delta)
        with torch.no_grad():
            if it == 0:
                j_start = j.detach().cpu()
            grad = grad * hole
            norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12)
            delta = delta.detach() + step * grad / norm
            dn = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.clamp(eps_r / dn.clamp_min(1e-12), max=1.0)
            j_end = j.detach().cpu()
        if progress is not None:
            progress(1)
    with torch.no_grad():
        z_star = keep * z0 + hole * (z_p + delta)
        recovered = model.decode_latents(z_star)
        keep_px = torch.nn.functional.interpolate(keep, size=images.shape[-2:], mode="nearest")
    return Inversion(images.cpu(), partial.cpu(), recovered.cpu(), keep.cpu(), keep_px.cpu(), j_start, j_end)
