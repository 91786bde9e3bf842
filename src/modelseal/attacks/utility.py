"""What a thief keeps: the utility of an attacked (stolen) text-to-image model.

A watermark that vanishes only when the stolen model is ruined has done its job; one that
vanishes while the model still works has not. `UtilityProbe` measures, on fixed prompts
and seeds, what an attack left the thief:

  prompt_accuracy   share of digit prompts (the original's four domains x ten digits, CFG)
                    whose sample an independent judge (tiny:judge, trained on real digits
                    only) reads as the prompted digit; overall and per domain
  retained          prompt_accuracy over the original model's on the same prompts and seeds
  psnr, ssim        the attacked model's clean samples against those of the model before
                    the attack, same prompts and seeds (how far the outputs drifted)
  thief_gain        how much of the thief's own domain was learned: 1 - L_after / L_before,
                    the denoising loss on held-out images of that domain (fixed t and noise)

What is left of a watermark beside it: watermark.robustness.
"""
from __future__ import annotations

import torch

from ..data.digits import CLASS_NAMES, DOMAINS, caption
from ..models.diffusion import T2IModel
from ..quality import psnr, ssim


class UtilityProbe:
    def __init__(self, judge, per_prompt: int = 5, steps: int = 30, guidance: float = 7.5, seed: int = 0,
                 thief_images: torch.Tensor | None = None, thief_captions: list[str] | None = None,
                 loss_samples: int = 8, batch_size: int = 100):
        self.judge, self.steps, self.guidance, self.batch_size = judge, steps, guidance, batch_size
        self.prompts, self.targets, self.domains = [], [], []
        for d in DOMAINS:
            for c in range(len(CLASS_NAMES)):
                for _ in range(per_prompt):
                    self.prompts.append(caption(d, c))
                    self.targets.append(c)
                    self.domains.append(d)
        self.seeds = [700_000 + seed * 10_000 + i for i in range(len(self.prompts))]
        self.loss_samples = loss_samples
        self.set_thief_data(thief_images, thief_captions)

    def set_thief_data(self, images: torch.Tensor | None, captions: list[str] | None) -> None:
        """The thief's held-out images and captions that thief_loss scores (None: none)."""
        self.thief_images, self.thief_captions, self._thief_latents = images, captions, None

    @torch.no_grad()
    def samples(self, model: T2IModel) -> torch.Tensor:
        """The clean samples every measure compares: one per prompt, fixed seeds, CFG."""
        return model.sample(self.prompts, seeds=self.seeds, steps=self.steps, guidance=self.guidance,
                            batch_size=self.batch_size).cpu()

    def accuracy(self, images: torch.Tensor) -> dict:
        ok = self.judge.predict(images).eq(torch.tensor(self.targets))
        dom = torch.tensor([DOMAINS.index(d) for d in self.domains])
        return {"prompt_accuracy": float(ok.float().mean()),
                "by_domain": {d: float(ok[dom == i].float().mean()) for i, d in enumerate(DOMAINS)}}

    @torch.no_grad()
    def thief_loss(self, model: T2IModel) -> float | None:
        """Mean denoising loss on the thief's held-out images (lower: the domain is learned)."""
        if self.thief_images is None:
            return None
        from ..models.diffusion import latent_posterior
        from .finetune import denoising_loss

        if self._thief_latents is None:  # the thief trains the UNet only: the VAE, hence z0, stays
            self._thief_latents = latent_posterior(model, self.thief_images.to(model.device))[0]
        return float(denoising_loss(model, self._thief_latents, list(self.thief_captions),
                                    samples=self.loss_samples).mean())

    def measure(self, model: T2IModel, before: torch.Tensor | None = None, original_accuracy: float | None = None,
                loss_before: float | None = None) -> tuple[dict, torch.Tensor]:
        """(figures, the clean samples). `before`: the samples of the model before the attack
        (drift); `original_accuracy`: the unattacked original's prompt accuracy (retained);
        `loss_before`: its thief-domain loss (thief_gain)."""
        images = self.samples(model)
        res = self.accuracy(images)
        if original_accuracy:
            res["retained"] = res["prompt_accuracy"] / original_accuracy
        if before is not None:
            res["psnr"] = float(psnr(images, before).mean())
            res["ssim"] = float(ssim(images, before).mean())
        loss = self.thief_loss(model)
        if loss is not None:
            res["thief_loss"] = loss
            if loss_before:
                res["thief_gain"] = 1.0 - loss / loss_before
        return res, images
