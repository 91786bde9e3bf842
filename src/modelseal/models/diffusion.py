"""Text-to-image latent diffusion models through diffusers: loading, latents, sampling.

One `T2IModel` holds the parts of a Stable-Diffusion-style checkpoint (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, scheduler). It loads a Stable Diffusion 1.x/2.x
folder or hub id (the diffusers layout with model_index.json) and the tiny zoo model alike,
since the tiny one is saved in that same layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import InputError


@dataclass
class T2IModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    source: str = ""

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_scale

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device=None, dtype=None) -> "T2IModel":
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.to(device=device, dtype=dtype)
        return self

    def requires_grad_(self, flag: bool) -> "T2IModel":
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.requires_grad_(flag)
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": _diffusers_version(),
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"] if self.vae is not None else [None, None],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        import json

        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    # ---- text -------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length,
                              return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Per-token text states (B, T, D): what the UNet cross-attends to."""
        ids = self.tokenize(prompts)
        return self.text_encoder(ids).last_hidden_state.to(self.dtype)

    # ---- latents ----------------------------------------------------------------------
    def _shift_scale(self) -> tuple[float, float]:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return float(shift), float(cfg.scaling_factor)

    def encode_images(self, images: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> diffusion latents z0 (scaled as in SD)."""
        x = images.to(self.device, self.vae.dtype if self.vae is not None else self.dtype) * 2 - 1
        if self.vae is None:
            return x
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        shift, scale = self._shift_scale()
        return (z - shift) * scale

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents -> images in [0, 1]."""
        if self.vae is None:
            return ((z + 1) / 2).clamp(0, 1)
        shift, scale = self._shift_scale()
        x = self.vae.decode(z.to(self.vae.dtype) / scale + shift).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    # ---- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int] | None = None, steps: int = 30,
               guidance: float = 7.5, batch_size: int = 64, return_latents: bool = False,
               progress=None) -> torch.Tensor:
        """DDIM sampling with classifier-free guidance; one seed per image (reproducible).

        guidance <= 1 disables the unconditional branch (no CFG).
        """
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        sched = DDIMScheduler.from_config(self.scheduler.config, set_alpha_to_one=False)
        outs = []
        for start in range(0, len(prompts), batch_size):
            p = list(prompts[start:start + batch_size])
            s = seeds[start:start + batch_size]
            z = torch.stack([
                torch.randn(self.unet.config.in_channels, self.latent_size, self.latent_size,
                            generator=torch.Generator().manual_seed(int(seed)))
                for seed in s
            ]).to(self.device, self.dtype)
            cond = self.encode_prompts(p)
            use_cfg = guidance > 1.0
            if use_cfg:
                uncond = self.encode_prompts([""] * len(p))
                ctx = torch.cat([uncond, cond])
            sched.set_timesteps(steps, device=self.device)
            z = z * sched.init_noise_sigma
            for t in sched.timesteps:
                if use_cfg:
                    eps_u, eps_c = self.unet(torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                else:
                    eps = self.unet(z, t, encoder_hidden_states=cond).sample
                z = sched.step(eps, t, z).prev_sample
            outs.append(z if return_latents else self.decode_latents(z).cpu())
            if progress is not None:
                progress(len(p))
        return torch.cat(outs)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def load_t2i(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             local_files_only: bool = False) -> T2IModel:
    """Load a T2I model from a diffusers folder or hub id (tiny zoo: 'tiny:t2i')."""
    from .zoo import resolve_model

    path = resolve_model(str(source), kind="t2i")
    kw = dict(torch_dtype=dtype, local_files_only=local_files_only)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = None
        if Path(path, "vae").exists() or not Path(path).exists():
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                     local_files_only=local_files_only)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=local_files_only)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load a text-to-image model from '{source}': {str(e).splitlines()[0]}",
                         "give a diffusers Stable Diffusion folder (with model_index.json, unet/, vae/, "
                         "text_encoder/, tokenizer/, scheduler/), a hub id already in the cache, or tiny:t2i") from None
    model = T2IModel(unet, vae, text_encoder, tokenizer, scheduler, source=str(source))
    model.requires_grad_(False)
    for m in (unet, vae, text_encoder):
        if m is not None:
            m.eval()
    return model.to(device)
