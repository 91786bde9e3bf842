"""SleeperMark stage 1 training: the codec's loss and its training loop.

    L = BCE(D(z_w), m) + w_img(s) * MSE(dec(z_w), dec(z)) + w_lpips(s) * P(dec(z_w), dec(z))

on latents z = VAE.encode(x) of real images, the VAE frozen, with random messages per sample
(codec.py says what E and D are).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.diffusion import T2IModel
from ..runs import TrainingCheckpoint
from ..runs.diverge import Divergence
from .codec import Codec, latent_shape
from .codec_pixels import AttackFn, decode_all, encode_all

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CodecLossWeights:
    """Loss weights with linear ramps from 0: w(s) = w * min(1, s / ramp).

    Reference (10k steps): w_img -> 30 by step 2000, w_lpips -> 0.25 by step 4000. A run of
    fewer than `ref_steps` steps scales both ramps by steps / ref_steps (rescale=True), so
    the fidelity terms arrive at the same fraction of training: a 500-step run reaches
    w_img at step 100 and w_lpips at step 200.
    """
    bits: float = 1.0
    img: float = 30.0
    img_ramp: int = 2000
    lpips: float = 0.25
    lpips_ramp: int = 4000
    ref_steps: int = 10_000
    rescale: bool = True
    latent: float = 0.0   # ours: weight of mean(delta^2), no ramp (the reference has none)

    def ramps(self, total_steps: int | None = None) -> tuple[float, float]:
        f = 1.0
        if self.rescale and total_steps is not None and 0 < total_steps < self.ref_steps:
            f = total_steps / self.ref_steps
        return self.img_ramp * f, self.lpips_ramp * f

    def at(self, step: int, total_steps: int | None = None) -> tuple[float, float, float]:
        """(w_bits, w_img, w_lpips) at 0-based `step` of a run of `total_steps`."""
        r_img, r_lp = self.ramps(total_steps)
        ramp = lambda w, r: w if r <= 0 else w * min(1.0, step / r)  # noqa: E731
        return self.bits, ramp(self.img, r_img), ramp(self.lpips, r_lp)


def codec_loss(codec: Codec, model: T2IModel, latents: torch.Tensor, bits: torch.Tensor,
               reference: torch.Tensor | None, weights: tuple[float, float, float],
               perceptual: PerceptualFn | None = None, attacks: AttackFn | None = None,
               vae_round_trip: bool = False, generator: torch.Generator | None = None,
               latent_weight: float = 0.0, strength: tuple[float, float] | None = None
               ) -> tuple[torch.Tensor, dict]:
    """Stage-1 loss for one batch and its parts.

    latents z (B, C, h, w); bits m (B, k); reference = dec(z) in [0, 1] (needed when w_img or
    w_lpips > 0); weights = (w_bits, w_img, w_lpips) from CodecLossWeights.at. The decode of
    z_w is skipped while it is not needed (fidelity weights 0 and no round trip).
    """
    w_bits, w_img, w_lp = weights
    use_lp = perceptual is not None and w_lp > 0
    delta = codec.residual(bits)
    z_w = latents + delta.to(latents.dtype)
    if strength is not None:
        # The extractor also reads z + s * delta for s ~ U(lo, hi): stage 2 plants delta only
        # approximately, and guidance scales it.
        lo, hi = strength
        s = lo + (hi - lo) * torch.rand(len(latents), 1, 1, 1, generator=generator).to(delta.device)
        z_w = latents + (s * delta).to(latents.dtype)
    need_pixels = w_img > 0 or use_lp or vae_round_trip or attacks is not None
    x_w = model.decode_latents(z_w) if need_pixels else None
    if vae_round_trip or attacks is not None:
        x_in = attacks(x_w, generator) if attacks is not None else x_w
        z_read = model.encode_images(x_in).float()
    else:
        z_read = z_w
    logits = codec.extract(z_read)
    bce = F.binary_cross_entropy_with_logits(logits, bits)
    loss = w_bits * bce
    parts = {"bce": float(bce.detach()), "bit_acc": float(((logits > 0).float() == bits).float().mean()),
             "delta_rms": float(delta.detach().pow(2).mean().sqrt())}
    if latent_weight > 0:
        loss = loss + latent_weight * delta.pow(2).mean()
    if x_w is not None and reference is not None:
        per_image = ((x_w - reference) ** 2).flatten(1).mean(1)
        mse = per_image.mean()
        if w_img > 0:
            loss = loss + w_img * mse
        parts["img_mse"] = float(mse.detach())
        parts["psnr"] = float((-10 * torch.log10(per_image.detach().clamp_min(1e-10))).mean())
        if use_lp:
            lp = perceptual(x_w, reference).mean()
            loss = loss + w_lp * lp
            parts["lpips"] = float(lp.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


# Keep every VAE reconstruction dec(z) in memory when they take at most this many bytes;
# above it (e.g. 10k images at 512 px) they are recomputed per batch.
RECON_CACHE_BYTES = 512 * 2 ** 20


def train_codec(model: T2IModel, images: torch.Tensor, k: int = 48, steps: int = 10_000,
                batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
                attacks: AttackFn | None = None, vae_round_trip: bool = False,
                weights: CodecLossWeights | None = None, perceptual: PerceptualFn | None = None,
                weight_decay: float = 1e-3, lr_schedule: str = "linear",
                max_grad_norm: float | None = None, latent_warmup: int = 0, codec: Codec | None = None,
                strength: tuple[float, float] | None = None,
                codec_kwargs: dict | None = None, encode_batch_size: int = 64,
                log: Callable[[str], None] | None = None, log_every: int | None = None,
                progress: Callable[[int], None] | None = None,
                checkpoint: TrainingCheckpoint | None = None) -> tuple[Codec, dict]:
    """Train the stage-1 codec on `images` (N, 3, H, W) in [0, 1] with the model's frozen VAE.

    Images are encoded once (posterior mean). Each step draws a batch (epochs of a seeded
    permutation) and a random message per sample, and takes one AdamW step on the codec
    (reference: lr 1e-4, weight decay 1e-3, linear decay to 0). With vae_round_trip or
    `attacks` (a callable (images, generator) -> images, e.g.
    attacks.image.attack_sampler()), the extractor reads enc(attack(dec(z_w))) instead of z_w.
    The first `latent_warmup` of the `steps` train on z_w alone (BCE only, no decode: far
    cheaper), so the codec finds a code before the round trip and the fidelity
    ramps (which then count from the end of the warm-up) start; the reference has none.
    Pass `codec` to continue training one. All randomness comes from `seed` (a
    torch.Generator for data and messages; the CPU default generator, forked and restored,
    for initialisation and dropout), so CPU runs repeat exactly. `checkpoint`: where the
    loop saves and resumes its state (runs.TrainingCheckpoint), so a resumed run repeats too.

    Returns the codec (eval mode, on the model's device) and a history of per-step lists
    (step, loss, bce, bit_acc, w_img, w_lpips; img_mse, psnr and lpips are None on steps
    that did not compute them) plus "seconds", the training loop's wall time.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"codec training takes images (N, 3, H, W), got shape {tuple(images.shape)}",
                         "convert the images to float tensors in [0, 1], channels first")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    if not 0 <= latent_warmup < steps:
        raise ValueError(f"latent_warmup must be in [0, steps), got {latent_warmup}")
    if lr_schedule not in ("linear", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r} (linear | constant)")
    weights = weights or CodecLossWeights()
    log = log or (lambda msg: None)
    log_every = log_every or max(1, steps // 10)
    device = model.device
    gen = torch.Generator().manual_seed(int(seed))
    shape = latent_shape(model)

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        if codec is None:
            codec = Codec(k, shape, **(codec_kwargs or {}))
        elif tuple(codec.latent_shape) != shape or codec.k != k:
            raise ValueError(f"codec is for k={codec.k}, latent {codec.latent_shape}; asked for k={k}, latent {shape}")
        codec = codec.to(device).train()

        t0 = time.time()
        latents = encode_all(model, images, encode_batch_size)
        if tuple(latents.shape[1:]) != shape:
            raise InputError(f"images of size {tuple(images.shape[-2:])} give latents {tuple(latents.shape[1:])}, "
                             f"the model expects {shape}", f"resize the images to {model.image_size} px")
        cache = len(latents) * 3 * model.image_size ** 2 * 4 <= RECON_CACHE_BYTES
        recon_all = decode_all(model, latents, encode_batch_size) if cache else None
        log(f"[codec] encoded {len(images)} images to latents {tuple(shape)} in {time.time() - t0:.1f}s")

        opt = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda s: max(0.0, 1.0 - s / steps)) if lr_schedule == "linear" else (lambda s: 1.0))
        hist: dict[str, list] = {key: [] for key in
                                 ("step", "loss", "bce", "bit_acc", "w_img", "w_lpips", "img_mse", "psnr", "lpips")}
        order, pos = torch.randperm(len(latents), generator=gen), 0
        ckpt = checkpoint or TrainingCheckpoint(None)
        extra = ckpt.resume(steps, codec.parameters(), opt, sched, gen,
                            state=lambda: {"hist": hist, "order": order, "pos": pos},
                            meta={"k": k, "n_images": len(latents), "batch_size": batch_size})
        if extra:
            hist, order, pos = extra["hist"], extra["order"], extra["pos"]
        guard = Divergence("codec training (stage 1)", "--lr", lr, default=1e-4, on_diverge=ckpt.remove)
        t0 = time.time()
        for step in ckpt.steps():
            if pos + batch_size > len(order):
                order, pos = torch.randperm(len(latents), generator=gen), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            z = latents[idx.to(latents.device)]
            m = torch.randint(0, 2, (len(idx), k), generator=gen).float().to(device)
            warm = step < latent_warmup
            w = (weights.bits, 0.0, 0.0) if warm else weights.at(step - latent_warmup, steps - latent_warmup)
            ref = None
            if w[1] > 0 or w[2] > 0:
                ref = recon_all[idx.to(recon_all.device)] if cache else decode_all(model, z, encode_batch_size)
            loss, parts = codec_loss(codec, model, z, m, ref, w, perceptual, None if warm else attacks,
                                     vae_round_trip and not warm, gen, weights.latent, None if warm else strength)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(codec.parameters(), max_grad_norm)
            guard.step(opt, step + 1)
            guard.check(step + 1, loss, codec.parameters())
            sched.step()

            hist["step"].append(step + 1)
            hist["w_img"].append(w[1])
            hist["w_lpips"].append(w[2])
            for key in ("loss", "bce", "bit_acc", "img_mse", "psnr", "lpips"):
                hist[key].append(parts.get(key))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                psnr = f" psnr {parts['psnr']:.1f}dB" if "psnr" in parts else ""
                log(f"[codec] step {step + 1}/{steps} loss {parts['loss']:.4f} bce {parts['bce']:.4f} "
                    f"bit acc {parts['bit_acc']:.3f} delta rms {parts['delta_rms']:.3f}{psnr} ({time.time() - t0:.0f}s)")
            if progress is not None:
                progress(1)
    codec.eval()
    codec.meta = {"trained_steps": steps, "seed": int(seed), "n_images": int(len(images)), "lr": lr,
                  "batch_size": batch_size, "vae_round_trip": bool(vae_round_trip),
                  "attacks": attacks is not None, "weights": asdict(weights)}
    hist["seconds"] = time.time() - t0
    return codec.attach_reader(model), hist
