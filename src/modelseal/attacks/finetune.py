"""Fine-tuning a text-to-image model: what a thief (or a suspect) does to a published model.

Methods
  full        every UNet weight trains on a captioned set (text encoder frozen, as in SD
              fine-tuning scripts).
  lora        low-rank adapters (peft) on the UNet attention projections (and, with
              train_text_encoder, on the text encoder's); the base stays untouched and is
              saved as a diffusers LoRA file.
  dreambooth  full UNet (and optionally the text encoder) on a few images of one subject
              with an identifier prompt ("a sks dog"), optionally with prior preservation:
              images the pretrained model generates for the class prompt ("a dog") are
              trained on alongside, weighted by `prior_weight` (Ruiz et al., 2023).

Images are encoded once by the frozen VAE; each step samples the latent posterior, draws
t ~ U{0..T-1} and noise, and minimises the epsilon-prediction MSE. Under torchrun /
accelerate launch each process draws its own batch and gradients are averaged.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import parallel
from ..config import FinetuneOptions
from ..errors import InputError
from ..models.diffusion import ADAPTER_NAME, T2IModel, add_text_encoder_lora, latent_posterior
from ..runs import TrainingCheckpoint
from ..runs.diverge import Divergence

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def default_lr(method: str, tiny: bool) -> float:
    """SD scripts use 1e-4 (LoRA) and 5e-6 / 2e-6 (full, DreamBooth); a 3M-parameter UNet
    trained at 4e-4 needs larger steps to move in a few hundred steps."""
    if method == "lora":
        return 1e-3 if tiny else 1e-4
    return 1e-4 if tiny else 5e-6


def add_lora(model: T2IModel, rank: int, alpha: float | None = None, seed: int = 0,
             text_encoder: bool = False) -> list[torch.nn.Parameter]:
    """LoRA adapters (peft) on every attention projection of the UNet and, with
    `text_encoder`, of the text encoder (diffusers' DreamBooth-LoRA --train_text_encoder);
    returns their weights."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    alpha = alpha if alpha is not None else rank
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    model.unet.add_adapter(cfg, adapter_name=ADAPTER_NAME)
    params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    if text_encoder:
        if model.is_sdxl:
            raise InputError("a text-encoder LoRA of an SDXL model is not supported",
                             "leave out --train-text-encoder for an SDXL LoRA")
        add_text_encoder_lora(model.text_encoder, rank, alpha)
        params += [p for n, p in model.text_encoder.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()
    return params


@torch.no_grad()
def class_images_for(model: T2IModel, prompt: str, n: int, seed: int, progress=None) -> torch.Tensor:
    """Prior-preservation images: the pretrained model's own samples of the class prompt."""
    seeds = [10_000 + seed * 1000 + i for i in range(n)]
    return model.sample([prompt] * n, seeds=seeds, progress=progress)


def finetune(model: T2IModel, images: torch.Tensor, captions: list[str], opts: FinetuneOptions,
             log=print, progress=None, on_step=None, checkpoint: TrainingCheckpoint | None = None) -> dict:
    """Fine-tune `model` in place on images in [0, 1] (N, 3, H, W) with one caption each.

    For method 'lora' the adapter named 'finetune' is added to the UNet (base weights
    frozen). `on_step(n)`, when given, is called after each step n (1-based) with the UNet
    in eval mode and gradients off (e.g. to measure a watermark along the way).
    `checkpoint`: where the loop saves and resumes its state (runs.TrainingCheckpoint).
    Returns training figures (loss at start and end, seconds).
    """
    if opts.method not in ("full", "lora", "dreambooth"):
        raise ValueError(f"unknown fine-tuning method {opts.method!r}")
    if len(images) != len(captions):
        raise ValueError("one caption per image")
    dev = model.device
    tiny = model.unet.config.sample_size <= 16
    lr = opts.lr if opts.lr is not None else default_lr(opts.method, tiny)
    g = torch.Generator().manual_seed(opts.seed + 7919 * parallel.rank())

    mean, std = latent_posterior(model, images)
    caps = list(captions)
    prior_mean = prior_std = None
    prior_caps: list[str] = []
    if opts.method == "dreambooth" and opts.class_prompt:
        log(f"[finetune] generating {opts.class_images} prior-preservation images for '{opts.class_prompt}'")
        prior = class_images_for(model, opts.class_prompt, opts.class_images, opts.seed)
        prior_mean, prior_std = latent_posterior(model, prior)
        prior_caps = [opts.class_prompt] * len(prior)

    train_te = opts.method in ("dreambooth", "lora") and opts.train_text_encoder
    if opts.method == "lora":
        params = add_lora(model, opts.rank, opts.lora_alpha, opts.seed, text_encoder=train_te)
    else:
        model.unet.requires_grad_(True)
        params = list(model.unet.parameters())
        if train_te:
            for te in model.text_encoders():
                te.requires_grad_(True)
                params += list(te.parameters())
    if opts.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    if train_te:
        for te in model.text_encoders():
            te.train()
    opt = make_optimizer(opts.optimizer, params, lr, weight_decay=1e-2 if opts.method == "lora" else 0.0)
    sched = model.scheduler
    T = sched.config.num_train_timesteps

    # Captions are few (one per image, or one prompt): encode each distinct one once when frozen.
    distinct = sorted(set(caps) | set(prior_caps))
    cap_index = {c: i for i, c in enumerate(distinct)}
    frozen_ctx = None if train_te else model.encode_prompts(distinct).detach()

    def batch_of(m, s, c, n):
        idx = torch.randint(0, len(m), (n,), generator=g)
        if opts.crop > 0 and m is mean:  # the instance images, not the prior class's
            with torch.no_grad():
                x = random_resized_crops(images[idx], opts.crop, g)
                z = model.encode_images(x, sample=True, generator=g).float()
        else:
            z = m[idx] + s[idx] * torch.randn(m[idx].shape, generator=g).to(dev)
        if opts.flip:
            flip = torch.rand(n, generator=g) < 0.5
            z[flip] = z[flip].flip(-1)
        return z, torch.tensor([cap_index[c[i]] for i in idx.tolist()], device=dev)

    def loss_on(z0, ci):
        t = torch.randint(0, T, (len(z0),), generator=g).to(dev)
        eps = torch.randn(z0.shape, generator=g).to(dev)
        ctx = model.text_context(distinct) if train_te else frozen_ctx
        return training_loss(model, z0, t, eps, ctx[ci]).mean()

    losses = []
    ckpt = checkpoint or TrainingCheckpoint(None)
    losses = ckpt.resume(opts.steps, params, opt, gen=g, state=lambda: {"losses": losses},
                         meta={"method": opts.method, "lr": lr}).get("losses", losses)
    guard = Divergence(f"fine-tuning ({opts.method}, lr {lr:g})", "--lr", lr, on_diverge=ckpt.remove,
                       fix="lower --lr (or leave it out for the method's default)")
    t0 = time.time()
    for step in ckpt.steps():
        z0, ci = batch_of(mean, std, caps, opts.batch_size)
        loss = loss_on(z0, ci)
        if prior_mean is not None:
            pz, pci = batch_of(prior_mean, prior_std, prior_caps, opts.batch_size)
            loss = loss + opts.prior_weight * loss_on(pz, pci)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        guard.step(opt, step + 1)
        losses.append(loss.item())
        guard.check(step + 1, losses[-1])  # NaN weights would be saved as a model
        if progress is not None:
            progress(1)
        if on_step is not None:
            model.unet.eval()
            with torch.no_grad():
                on_step(step + 1)
            model.unet.train()
        if step % max(1, opts.steps // 10) == 0 or step == opts.steps - 1:
            recent = sum(losses[-20:]) / len(losses[-20:])
            log(f"[finetune] {opts.method} step {step + 1}/{opts.steps} loss {recent:.4f} ({time.time() - t0:.0f}s)")
    model.unet.eval().requires_grad_(False)
    for te in model.text_encoders():
        te.eval().requires_grad_(False)
    if opts.gradient_checkpointing:
        model.unet.disable_gradient_checkpointing()
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {"method": opts.method, "steps": opts.steps, "lr": lr, "batch_size": opts.batch_size,
            "loss_start": sum(head) / len(head), "loss_end": sum(tail) / len(tail),
            "train_s": round(time.time() - t0, 1), "images": len(images),
            "prior_images": 0 if prior_mean is None else len(prior_mean)}


def random_resized_crops(images: torch.Tensor, min_side: float, g: torch.Generator) -> torch.Tensor:
    """Each image cropped to a random square of side U(min_side, 1) x its side, at a random
    place, and resized back (bilinear, antialiased): the crop augmentation of SD fine-tuning
    scripts, for square training images."""
    n, _, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        side = float(min_side + (1 - min_side) * torch.rand((), generator=g))
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        crop = images[i:i + 1, :, top:top + ch, left:left + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    return out


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    """AdamW (two full-size moments per weight), or Adafactor with a fixed learning rate
    (factored second moment, no first: a few MB for SDXL's UNet instead of 2 x its size)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r} (adamw | adafactor)")


def training_loss(model: T2IModel, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                  ctx: torch.Tensor, unet=None) -> torch.Tensor:
    """Per-image MSE of the UNet's output against its native target at z_t (eps, or
    v = sqrt(a) eps - sqrt(1 - a) z0 for a v-prediction model), as the usual training scripts
    (`unet`: another callable of the same architecture, e.g. a functional copy)."""
    zt = model.noisy(z0, eps, t)
    pred = model.unet_out(zt.to(model.dtype), t, ctx.to(model.dtype), unet=unet)
    return ((pred.float() - model.target(z0, eps, t).float()) ** 2).flatten(1).mean(1)


@torch.no_grad()
def denoising_loss(model: T2IModel, z0: torch.Tensor, prompts: list[str], samples: int = 16,
                   seed: int = 0) -> torch.Tensor:
    """Per-image epsilon-prediction MSE (v outputs converted) over `samples` fixed (t, noise) draws."""
    g = torch.Generator().manual_seed(seed)
    ctx = model.encode_prompts(prompts)
    T = model.scheduler.config.num_train_timesteps
    total = torch.zeros(len(z0), device=model.device)
    for _ in range(samples):
        t = torch.randint(0, T, (len(z0),), generator=g).to(model.device)
        eps = torch.randn(z0.shape, generator=g).to(model.device)
        zt = model.noisy(z0, eps, t).to(model.dtype)
        total += ((model.eps(zt, t, ctx) - eps) ** 2).mean((1, 2, 3))
    return total / samples

