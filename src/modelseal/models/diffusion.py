"""Text-to-image latent diffusion models through diffusers: loading, latents, sampling.

One `T2IModel` holds the parts of a Stable-Diffusion-style checkpoint (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, scheduler). It loads a Stable Diffusion 1.x/2.x
folder or hub id (the diffusers layout with model_index.json) and the tiny zoo model alike,
since the tiny one is saved in that same layout.

A LoRA fine-tune is a folder with `pytorch_lora_weights.safetensors` (the file diffusers'
LoRA scripts write; kohya-style keys are converted by diffusers) and, when modelseal wrote
it, `lora_base.json` naming its base model. It loads as the base model with the adapter
attached; `model.adapter(False)` switches it off, so one set of base weights serves as
both the pretrained and the fine-tuned model.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import InputError

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_BASE_FILE = "lora_base.json"
ADAPTER_NAME = "finetune"


def vae_shift_scale(vae: AutoencoderKL) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(shift), float(vae.config.scaling_factor)


def vae_encode(vae: AutoencoderKL, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> scaled diffusion latents (posterior mean, or a sample)."""
    x = images.to(vae.device, vae.dtype) * 2 - 1
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator) if sample else dist.mean
    shift, scale = vae_shift_scale(vae)
    return (z - shift) * scale


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
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.to(**kw)  # a dtype=None argument alone makes diffusers warn about casting
        return self

    def requires_grad_(self, flag: bool) -> "T2IModel":
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.requires_grad_(flag)
        return self

    # ---- LoRA adapter ---------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return bool(getattr(self.unet, "peft_config", None))

    @contextmanager
    def adapter(self, on: bool):
        """Run the UNet with its LoRA adapter on or off inside the block."""
        if not self.has_adapter:
            if on:
                raise RuntimeError("this model has no LoRA adapter")
            yield self
            return
        if on:
            self.unet.enable_adapters()
        else:
            self.unet.disable_adapters()
        try:
            yield self
        finally:
            self.unet.enable_adapters()

    def save_lora(self, folder: str | Path, base: str) -> None:
        """Write the adapter as a diffusers LoRA file ('unet.'-prefixed keys) + lora_base.json."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.unet, adapter_name=ADAPTER_NAME)
        state = {f"unet.{k}": v.detach().to(torch.float32).contiguous().cpu() for k, v in state.items()}
        save_file(state, str(folder / LORA_FILE))
        cfg = self.unet.peft_config[ADAPTER_NAME]
        (folder / LORA_BASE_FILE).write_text(json.dumps(
            {"base": base, "rank": cfg.r, "lora_alpha": cfg.lora_alpha,
             "target_modules": sorted(cfg.target_modules)}, indent=2))

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
        return vae_shift_scale(self.vae)

    def encode_images(self, images: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> diffusion latents z0 (scaled as in SD)."""
        if self.vae is None:
            return images.to(self.device, self.dtype) * 2 - 1
        return vae_encode(self.vae, images, sample, generator)

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


@torch.no_grad()
def latent_posterior(model: T2IModel, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of images in [0, 1], in diffusion-latent units, float32
    (std 0 for a pixel-space model); z0 = mean + std * N(0, I) is a posterior sample."""
    if model.vae is None:
        z = model.encode_images(images).float()
        return z, torch.zeros_like(z)
    means, stds = [], []
    shift, scale = model._shift_scale()
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(model.device, model.vae.dtype) * 2 - 1
        d = model.vae.encode(x).latent_dist
        means.append((d.mean.float() - shift) * scale)
        stds.append(d.std.float() * scale)
    return torch.cat(means), torch.cat(stds)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def is_lora_folder(source: str | Path) -> bool:
    p = Path(str(source))
    return p.is_dir() and (p / LORA_FILE).is_file() and not (p / "unet").is_dir()


def lora_base(source: str | Path) -> str | None:
    f = Path(str(source)) / LORA_BASE_FILE
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text())["base"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"'{f}' is not a valid LoRA base record", "it must be JSON with a 'base' key") from None


def load_t2i(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             local_files_only: bool = False, base: str | None = None) -> T2IModel:
    """Load a T2I model from a diffusers folder or hub id (tiny zoo: 'tiny:t2i'), or a LoRA
    folder on top of `base` (default: the base its lora_base.json names)."""
    if is_lora_folder(source):
        return _load_lora(source, device, dtype, local_files_only, base)
    from .zoo import hub_access, resolve_model

    path = resolve_model(str(source), kind="t2i")
    local_files_only = hub_access(path, "model_index.json", local_files_only)
    kw = dict(torch_dtype=dtype, local_files_only=local_files_only, use_safetensors=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = None
        if Path(path, "vae").exists() or not Path(path).exists():
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                     local_files_only=local_files_only, use_safetensors=True)
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


def _load_lora(source, device, dtype, local_files_only, base) -> T2IModel:
    from diffusers import StableDiffusionPipeline

    base = base or lora_base(source)
    if base is None:
        raise InputError(f"'{source}' is a LoRA folder that does not name its base model",
                         "give the base model it was trained on (e.g. --pretrained) or add lora_base.json")
    model = load_t2i(base, device, dtype, local_files_only)
    try:
        state, alphas = StableDiffusionPipeline.lora_state_dict(str(source), weight_name=LORA_FILE)
        model.unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name=ADAPTER_NAME)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot apply the LoRA in '{source}' to '{base}': {str(e).splitlines()[0]}",
                         "check that the LoRA was trained on this base model") from None
    if not model.has_adapter:
        raise InputError(f"the LoRA in '{source}' has no UNet weights", "give a LoRA trained on the UNet")
    model.unet.requires_grad_(False)
    model.source = str(source)
    return model.to(device)
