"""Membership baselines that need no inversion, on the unmasked image (higher = member).

  loss        -L_ft(z0): the fine-tuned model's denoising loss (naive loss attack)
  calibrated  L_pre(z0) - L_ft(z0): the loss calibrated by the pretrained model; this is
              CGI-DM's objective without a mask and without PGD, the key control
  pia         PIA (Kong et al., ICLR 2024): the suspect's own noise estimate at t = 0,
              eps0 = eps(z0, 0, c), noises z0 deterministically to z_t = sqrt(a_t) z0 +
              sqrt(1 - a_t) eps0 (t = 200 of 1000); a member's estimate there stays eps0:
              score -|| eps(z_t, t, c) - eps0 ||_4
  clid        CLiD (Zhai et al., NeurIPS 2024): the conditional likelihood discrepancy
              D = E[|eps(z_t, c*) - eps|^2 - |eps(z_t, c) - eps|^2] over reduced prompts c*
              (the prompt's first, middle and last thirds, and the empty prompt; the paper's
              simple clipping) and the conditional term L = -E|eps(z_t, c) - eps|^2, at
              t = 440, 450, 460 with one noise each, shared by every prompt; CLiD_th =
              alpha S(D) + (1 - alpha) S(L) with S a robust scaler (median, IQR) over the
              images scored together (no labels)

Both average the epsilon-prediction MSE (a v-predicting model's output converted to eps) over the same fixed (t, noise) draws for every
image and both models, so the numbers are paired and reproducible.
"""
from __future__ import annotations

import torch

from ..models.diffusion import T2IModel, paired_contexts


def _eps(model: T2IModel, zt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
         suspect: bool | None) -> torch.Tensor:
    """A noise estimate. On a LoRA model (pretrained and suspect in one) the adapter is switched
    on for the suspect (True) and off for the pretrained model (False); None runs it as loaded."""
    if suspect is not None and model.has_adapter:
        with model.adapter(suspect):
            return model.eps(zt.to(model.dtype), t, ctx).float()
    return model.eps(zt.to(model.dtype), t, ctx).float()


@torch.no_grad()
def paired_losses(pretrained: T2IModel, finetuned: T2IModel, images: torch.Tensor, prompts: list[str],
                  samples: int = 32, seed: int = 0, t_min: int = 1, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pre, L_ft) per image, each averaged over `samples` shared (t, eps) draws;
    `progress(i, samples)` after draw i."""
    shared = pretrained is finetuned and pretrained.has_adapter
    z0 = pretrained.encode_images(images).float()
    ctx, ctx_ft = paired_contexts(pretrained, finetuned, prompts)
    T = pretrained.scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    l_pre = torch.zeros(len(z0))
    l_ft = torch.zeros(len(z0))
    for i in range(samples):
        t = torch.randint(t_min, T, (len(z0),), generator=g).to(z0.device)
        eps = torch.randn(z0.shape, generator=g).to(z0.device)
        zt = pretrained.noisy(z0, eps, t)
        for model, c, acc, on in ((pretrained, ctx, l_pre, False), (finetuned, ctx_ft, l_ft, True)):
            acc += ((_eps(model, zt, t, c, on if shared else None) - eps) ** 2).flatten(1).mean(1).cpu()
        if progress is not None:
            progress(i + 1, samples)
    return l_pre / samples, l_ft / samples


@torch.no_grad()
def loss_grid(pretrained: T2IModel, finetuned: T2IModel, images: torch.Tensor, prompts: list[str],
              timesteps: list[int], draws: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pre, L_ft), each (n, len(timesteps), draws): both models' eps-prediction MSE at every
    given timestep with `draws` fresh noises per timestep, each noise shared by the two models
    (paired): a stratified version of paired_losses' draws."""
    shared = pretrained is finetuned and pretrained.has_adapter
    z0 = pretrained.encode_images(images).float()
    ctx, ctx_ft = paired_contexts(pretrained, finetuned, prompts)
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(2, len(z0), len(timesteps), draws)
    for d in range(draws):
        for j, step in enumerate(timesteps):
            eps = torch.randn(z0.shape, generator=g).to(z0.device)
            t = torch.full((len(z0),), int(step), dtype=torch.long, device=z0.device)
            zt = pretrained.noisy(z0, eps, t)
            for k, (model, c, on) in enumerate(((pretrained, ctx, False), (finetuned, ctx_ft, True))):
                out[k, :, j, d] = ((_eps(model, zt, t, c, on if shared else None) - eps) ** 2).flatten(1).mean(1).cpu()
    return out[0], out[1]


def loss_scores(l_pre: torch.Tensor, l_ft: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": -l_ft, "calibrated": l_pre - l_ft}


def _steps(model: T2IModel, t: int) -> int:
    """A timestep given for T = 1000 on this schedule."""
    T = model.scheduler.config.num_train_timesteps
    return min(T - 1, max(0, round(t * T / 1000)))


@torch.no_grad()
def pia_scores(model: T2IModel, images: torch.Tensor, prompts: list[str], t: int = 200, p: float = 4.0,
               batch: int = 32, progress=None, suspect: bool = True) -> torch.Tensor:
    """PIA's score per image (higher = member): -|| eps(z_t, t, c) - eps(z0, 0, c) ||_p with
    z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps(z0, 0, c) (two queries per image, no randomness);
    `progress(done, n)` after each batch of images. On a LoRA model `suspect` switches the
    adapter on (True) or off (False: the pretrained model)."""
    out = []
    for i in range(0, len(images), batch):
        z0 = model.encode_images(images[i:i + batch]).float()
        ctx = model.encode_prompts_as(prompts[i:i + batch], suspect)
        zero = torch.zeros(len(z0), dtype=torch.long, device=z0.device)
        eps0 = _eps(model, z0, zero, ctx, suspect)
        tt = torch.full_like(zero, _steps(model, t))
        zt = model.noisy(z0, eps0, tt)
        out.append(-(_eps(model, zt, tt, ctx, suspect) - eps0).flatten(1).norm(p=p, dim=1).cpu())
        if progress is not None:
            progress(min(i + batch, len(images)), len(images))
    return torch.cat(out)


def reduced_prompts(prompt: str) -> list[str]:
    """CLiD's reduced conditions by simple clipping: the first, middle and last thirds of the
    prompt's words, then the empty prompt."""
    words = prompt.split()
    n = len(words)
    return [" ".join(words[k * n // 3:(k + 1) * n // 3]) for k in range(3)] + [""]


@torch.no_grad()
def clid_terms(model: T2IModel, images: torch.Tensor, prompts: list[str], timesteps=(440, 450, 460),
               seed: int = 0, batch: int = 32, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, L) per image: CLiD's mean discrepancy over the reduced prompts and its conditional
    term, from one noise draw per timestep shared by the full and every reduced prompt;
    `progress(done, n)` after each batch of images."""
    g = torch.Generator().manual_seed(seed)
    d_all, l_all = [], []
    for i in range(0, len(images), batch):
        z0 = model.encode_images(images[i:i + batch]).float()
        ps = prompts[i:i + batch]
        ctx = model.encode_prompts_as(ps, True)
        reduced = [model.encode_prompts_as([reduced_prompts(q)[k] for q in ps], True) for k in range(4)]
        d = torch.zeros(len(z0))
        cond = torch.zeros(len(z0))
        for t in timesteps:
            tt = torch.full((len(z0),), _steps(model, t), dtype=torch.long, device=z0.device)
            eps = torch.randn(z0.shape, generator=g).to(z0.device)
            zt = model.noisy(z0, eps, tt)
            err = ((_eps(model, zt, tt, ctx, True) - eps) ** 2).flatten(1).mean(1).cpu()
            cond += err
            for c in reduced:
                d += ((_eps(model, zt, tt, c, True) - eps) ** 2).flatten(1).mean(1).cpu() - err
        d_all.append(d / (len(timesteps) * len(reduced)))
        l_all.append(-cond / len(timesteps))
        if progress is not None:
            progress(min(i + batch, len(images)), len(images))
    return torch.cat(d_all), torch.cat(l_all)


def robust_scale(x: torch.Tensor) -> torch.Tensor:
    """(x - median) / interquartile range, in float64."""
    q1, med, q3 = torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double))
    return (x.double() - med) / (q3 - q1).clamp_min(1e-12)


def clid_th(d: torch.Tensor, l_cond: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """CLiD_th: alpha S(D) + (1 - alpha) S(L), scaled over the images given together."""
    return (alpha * robust_scale(d) + (1 - alpha) * robust_scale(l_cond)).float()
