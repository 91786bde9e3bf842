"""Text-to-image latent diffusion models through diffusers: loading, latents, sampling.

One `T2IModel` holds the parts of a Stable-Diffusion-style checkpoint (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, scheduler; SDXL adds CLIPTextModelWithProjection
and a second tokenizer). It loads a Stable Diffusion 1.x / 2.x / XL folder or hub id (the
diffusers layout with model_index.json) and the tiny zoo model alike, since the tiny one is
saved in that same layout.

Two things differ between these checkpoints and are hidden behind the model here:
- What the UNet predicts (`prediction_type`: epsilon for SD 1.x and SDXL, v for SD 2.x at
  768 px). `unet_out` gives the raw output, `eps` converts it to the noise estimate
  eps = sqrt(a) v + sqrt(1 - a) z_t, and `target` gives the native training target
  (eps, or v = sqrt(a) eps - sqrt(1 - a) z0). The watermark's stage 2, CGI-DM and the loss
  baselines work in eps space (so an epsilon model and the same model re-expressed as a
  v-predictor give identical numbers); fine-tuning trains on the native target, as users do.
- What the UNet is conditioned on. SD: per-token states of one text encoder. SDXL: the
  penultimate states of two encoders side by side, plus the second one's pooled projection
  and six "time ids" (original size, crop corner, target size). A context is still one
  tensor (B, T, D) here: for SDXL the pooled embedding rides as one extra, zero-padded row
  (B, T + 1, D), so contexts can be indexed, concatenated and repeated like SD's; `unet_out`
  unpacks it and builds the time ids from the working resolution.

`resolution` (load_t2i's argument) runs a model below its native size (e.g. SDXL at 128 px
on a CPU); the SDXL time ids follow it.

A LoRA fine-tune is a folder with `pytorch_lora_weights.safetensors` (the file diffusers'
LoRA scripts write; kohya-style keys are converted by diffusers) and, when modelseal wrote
it, `lora_base.json` naming its base model. It loads as the base model with the adapter
attached (on the text encoder too where the file has 'text_encoder.' keys, as diffusers'
DreamBooth-LoRA script writes with --train_text_encoder); `model.adapter(False)` switches it
off, so one set of base weights serves as both the pretrained and the fine-tuned model.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import convert_unet_state_dict_to_peft
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..data.folders import read_json_file
from ..errors import InputError
from .quiet import quiet_loading
from .weights import check_lora_weights, library_error_line, mismatch_line, read_safetensors
from .zoo import PICKLE_SUFFIXES, resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


def vae_decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled diffusion latents -> images in [0, 1] (float32): vae_encode's inverse."""
    shift, scale = vae_shift_scale(vae)
    x = vae.decode(z.to(vae.dtype) / scale + shift).sample
    return ((x.float() + 1) / 2).clamp(0, 1)


@dataclass
class T2IModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    source: str = ""
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    resolution: int | None = None        # working image side; None: the UNet's native size
    zero_empty_prompt: bool = False      # SDXL base: the empty prompt's context is all zeros

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def prediction_type(self) -> str:
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    @property
    def latent_size(self) -> int:
        if self.resolution:
            return int(self.resolution) // self.vae_scale
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
        for m in self.modules():
            m.to(**kw)  # a dtype=None argument alone makes diffusers warn about casting
        return self

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae) if m is not None] + self.text_encoders()

    def text_encoders(self) -> list[torch.nn.Module]:
        """The text encoder, and SDXL's second one."""
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    def requires_grad_(self, flag: bool) -> "T2IModel":
        for m in self.modules():
            m.requires_grad_(flag)
        return self

    # ---- LoRA adapter ---------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return bool(getattr(self.unet, "peft_config", None))

    def adapted(self) -> list[torch.nn.Module]:
        """The modules that carry a LoRA adapter: the UNet and, for a text-encoder LoRA, the
        text encoder."""
        return [m for m in (self.unet, *self.text_encoders()) if getattr(m, "peft_config", None)]

    @contextmanager
    def adapter(self, on: bool):
        """Run the model with its LoRA adapter on or off inside the block (the UNet's and, for
        a text-encoder LoRA, the text encoder's: contexts encoded inside follow it)."""
        if not self.has_adapter:
            if on:
                raise RuntimeError("this model has no LoRA adapter")
            yield self
            return
        for m in self.adapted():
            _switch_adapters(m, on)
        try:
            yield self
        finally:
            for m in self.adapted():
                _switch_adapters(m, True)

    def save_lora(self, folder: str | Path, base: str) -> None:
        """Write the adapter as a diffusers LoRA file ('unet.'- and, for a text-encoder LoRA,
        'text_encoder.'-prefixed keys) + lora_base.json."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for prefix, m in (("unet", self.unet), ("text_encoder", self.text_encoder)):
            if ADAPTER_NAME in (getattr(m, "peft_config", None) or {}):
                part = get_peft_model_state_dict(m, adapter_name=ADAPTER_NAME)
                state.update({f"{prefix}.{k}": v.detach().to(torch.float32).contiguous().cpu()
                              for k, v in part.items()})
        save_file(state, str(folder / LORA_FILE))
        cfg = self.unet.peft_config[ADAPTER_NAME]
        te = (getattr(self.text_encoder, "peft_config", None) or {}).get(ADAPTER_NAME)
        (folder / LORA_BASE_FILE).write_text(json.dumps(
            {"base": base, "rank": cfg.r, "lora_alpha": cfg.lora_alpha,
             "target_modules": sorted(cfg.target_modules),
             "text_encoder_target_modules": sorted(te.target_modules) if te else None}, indent=2))

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
        }
        if self.text_encoder_2 is not None:
            self.text_encoder_2.save_pretrained(folder / "text_encoder_2")
            self.tokenizer_2.save_pretrained(str(folder / "tokenizer_2"))
            index.update({"_class_name": "StableDiffusionXLPipeline",
                          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                          "tokenizer_2": ["transformers", "CLIPTokenizer"],
                          "force_zeros_for_empty_prompt": self.zero_empty_prompt})
        else:
            index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                          "requires_safety_checker": False})
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    # ---- text -------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], tokenizer: CLIPTokenizer | None = None) -> torch.Tensor:
        tok = tokenizer or self.tokenizer
        return tok(list(prompts), padding="max_length", truncation=True, max_length=tok.model_max_length,
                   return_tensors="pt").input_ids.to(self.device)

    def text_context(self, prompts: list[str]) -> torch.Tensor:
        """The UNet's context for prompts, with gradients to the text encoder(s): per-token
        states (B, T, D); for SDXL the penultimate states of both encoders side by side and
        the pooled projection packed as row T + 1 (module docstring)."""
        prompts = list(prompts)
        ids = self.tokenize(prompts)
        if not self.is_sdxl:
            return self.text_encoder(ids).last_hidden_state.to(self.dtype)
        h1 = self.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out2 = self.text_encoder_2(self.tokenize(prompts, self.tokenizer_2), output_hidden_states=True)
        states = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
        pooled = out2.text_embeds
        row = torch.nn.functional.pad(pooled, (0, states.shape[-1] - pooled.shape[-1]))[:, None]
        ctx = torch.cat([states, row], dim=1).to(self.dtype)
        if self.zero_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=ctx.device).view(-1, 1, 1)
            ctx = torch.where(empty, torch.zeros_like(ctx), ctx)
        return ctx

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The UNet's context for prompts (see text_context), without gradients."""
        return self.text_context(prompts)

    @torch.no_grad()
    def encode_prompts_as(self, prompts: list[str], suspect: bool | None) -> torch.Tensor:
        """encode_prompts with the LoRA adapter on (True: the suspect) or off (False: the
        pretrained model); None, or a model without an adapter: as loaded. Only a text-encoder
        LoRA makes the two differ."""
        if suspect is None or not self.has_adapter:
            return self.encode_prompts(prompts)
        with self.adapter(suspect):
            return self.encode_prompts(prompts)

    # ---- the UNet and what it predicts ------------------------------------------------------
    def time_ids(self, n: int) -> torch.Tensor:
        """SDXL's added time ids (original H, W, crop top, left, target H, W) at the working size."""
        side = float(self.image_size)
        return torch.tensor([[side, side, 0.0, 0.0, side, side]], device=self.device, dtype=self.dtype).expand(n, 6)

    def unet_out(self, zt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, unet=None) -> torch.Tensor:
        """The raw UNet output for a context from text_context (`unet`: another UNet of the same
        architecture, e.g. a frozen teacher copy)."""
        unet = self.unet if unet is None else unet
        if not self.is_sdxl:
            return unet(zt, t, encoder_hidden_states=ctx).sample
        pooled_dim = self.text_encoder_2.config.projection_dim
        added = {"text_embeds": ctx[:, -1, :pooled_dim], "time_ids": self.time_ids(len(zt)).to(ctx.dtype)}
        return unet(zt, t, encoder_hidden_states=ctx[:, :-1], added_cond_kwargs=added).sample

    def _a(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).float()

    def to_eps(self, out: torch.Tensor, zt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise estimate eps_theta(z_t) from a raw UNet output, float32."""
        kind = self.prediction_type
        out = out.float()
        if kind == "epsilon":
            return out
        a = self._a(t, out)
        if kind == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * zt.float()
        if kind == "sample":
            return (zt.float() - a.sqrt() * out) / (1 - a).sqrt()
        raise InputError(f"unsupported prediction type '{kind}'", "use a model predicting epsilon, v or the sample")

    def eps(self, zt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, unet=None) -> torch.Tensor:
        """eps_theta(z_t, t, y) whatever the model predicts, float32."""
        return self.to_eps(self.unet_out(zt, t, ctx, unet), zt, t)

    def noisy(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps."""
        a = self._a(t, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * eps

    def target(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The native training target: eps, or v = sqrt(a) eps - sqrt(1 - a) z0, or z0."""
        kind = self.prediction_type
        if kind == "epsilon":
            return eps
        if kind == "v_prediction":
            a = self._a(t, z0)
            return a.sqrt() * eps - (1 - a).sqrt() * z0
        if kind == "sample":
            return z0
        raise InputError(f"unsupported prediction type '{kind}'", "use a model predicting epsilon, v or the sample")

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
        return vae_decode(self.vae, z)

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
                tt = t.expand(len(z) * (2 if use_cfg else 1))
                # CFG mixes raw outputs: linear in eps, v and x0 alike; the scheduler knows the type.
                if use_cfg:
                    out_u, out_c = self.unet_out(torch.cat([z, z]), tt, ctx).chunk(2)
                    out = out_u + guidance * (out_c - out_u)
                else:
                    out = self.unet_out(z, tt, cond)
                z = sched.step(out, t, z).prev_sample
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


def refuse_pickle_lora(source: str | Path) -> None:
    """A folder that is neither a diffusers model nor a safetensors LoRA but holds pickle files
    (a LoRA's pytorch_lora_weights.bin, ...) is refused before anything opens them, where it would
    otherwise be read as a diffusers folder that lacks its config: unpickling runs code from
    whoever wrote the file."""
    p = Path(str(source)).expanduser()
    if not p.is_dir() or (p / LORA_FILE).is_file() or (p / "unet").is_dir() or (p / "model_index.json").is_file():
        return
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())
    if pickles:
        raise InputError(f"'{p}' holds its weights only as pickle ({', '.join(pickles[:2])}), which modelseal "
                         "never opens (unpickling can run code)",
                         "convert them to safetensors where you trust the file: a LoRA's state dict written with "
                         f"safetensors.torch.save_file as '{p / LORA_FILE}', a model with "
                         "save_pretrained(..., safe_serialization=True)")


def model_identity(source: str | Path) -> str:
    """What a model name stands for: the resolved folder of a tiny name or a local path, else
    the hub id itself (so two spellings of one folder compare equal)."""
    s = str(source)
    if s.startswith("tiny:"):
        s = resolve_model(s, kind="t2i")
    p = Path(s).expanduser()
    return str(p.resolve()) if p.exists() else s.rstrip("/")


def same_model(a: str | Path, b: str | Path) -> bool:
    """Whether two model names (tiny name, folder or hub id) name the same model."""
    return model_identity(a) == model_identity(b)


def same_weights(a: T2IModel, b: T2IModel) -> bool:
    """Whether two loaded models hold the same UNet and text-encoder weights (value for value)."""
    if len(a.text_encoders()) != len(b.text_encoders()):
        return False
    for ma, mb in ((a.unet, b.unet), *zip(a.text_encoders(), b.text_encoders())):
        sa, sb = ma.state_dict(), mb.state_dict()
        if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k].to(sa[k].device))
                                         for k in sa):
            return False
    return True


def adapter_is_identity(model: T2IModel) -> bool:
    """Whether the model's LoRA adapter changes nothing: every up-projection (lora_B) is zero,
    as in an adapter that was initialised and never trained."""
    ups = [w for m in model.adapted() for n, w in m.named_parameters() if "lora_B" in n]
    return bool(ups) and not any(bool(w.any()) for w in ups)


def lora_base(source: str | Path) -> str | None:
    f = Path(str(source)) / LORA_BASE_FILE
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text())["base"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"'{f}' is not a valid LoRA base record", "it must be JSON with a 'base' key") from None


def check_dtype(dtype: torch.dtype, device: str | torch.device) -> None:
    """Refuse a weights dtype the device does not support: float16 on the CPU (half precision
    is for GPUs: few CPU kernels take it), bfloat16 on a GPU without it (the CPU runs it)."""
    kind = torch.device(device).type
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.float16 and kind == "cpu":
        raise InputError("--dtype float16 is not supported on the CPU (half precision is for GPUs)",
                         "use --dtype float32 (or bfloat16) on the CPU, or run on a GPU (--device cuda)")
    if dtype == torch.bfloat16 and kind in ("cuda", "mps"):
        try:
            ok = torch.cuda.is_bf16_supported() if kind == "cuda" else \
                torch.ones(1, dtype=dtype, device=device).sum().item() == 1.0
        except (RuntimeError, TypeError):
            ok = False
        if not ok:
            raise InputError(f"--dtype {name} was asked for on a {kind} device that does not support it",
                             "use --dtype float16 or float32 on this device")


def load_for(cfg, source: str, device) -> T2IModel:
    """load_t2i with a command config's dtype, working size and local_files_only."""
    return load_t2i(source, device, DTYPES[getattr(cfg, "dtype", "float32")], cfg.local_files_only,
                    resolution=getattr(cfg, "size", None))


def _index(path: str, local_files_only: bool) -> dict:
    """model_index.json of a diffusers folder or cached hub id ({} when there is none)."""
    f = Path(path, "model_index.json")
    if f.is_file():
        return read_json_file(f, "model index", "restore the checkpoint's model_index.json")
    if Path(path).exists():
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "model_index.json", local_files_only=local_files_only)).read_text())
    except Exception:
        return {}


def _variant(folder: Path, weights: str) -> str | None:
    """'fp16' where a local subfolder holds only the fp16 variant of its weights."""
    if folder.is_dir() and not (folder / weights).is_file() and \
            (folder / weights.replace(".safetensors", ".fp16.safetensors")).is_file():
        return "fp16"
    return None


def load_t2i(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             local_files_only: bool = False, base: str | None = None, resolution: int | None = None) -> T2IModel:
    """Load a T2I model from a diffusers folder or hub id (tiny zoo: 'tiny:t2i'), or a LoRA
    folder on top of `base` (default: the base its lora_base.json names). SD 1.x, 2.x (v) and
    XL (two text encoders) alike; `resolution` sets the working image side (default native)."""
    check_dtype(dtype, device)
    quiet_loading()
    refuse_pickle_lora(source)
    if is_lora_folder(source):
        model = _load_lora(source, device, dtype, local_files_only, base)
    else:
        model = _load_pipeline(source, device, dtype, local_files_only)
    if resolution:
        if resolution % (8 * model.vae_scale):
            raise InputError(f"resolution {resolution} does not fit this model",
                             f"use a multiple of {8 * model.vae_scale} px")
        model.resolution = int(resolution)
    return model


def paired_contexts(pretrained: T2IModel, finetuned: T2IModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretrained model's and the suspect's contexts for prompts. One LoRA model serving as
    both encodes them with its adapter off, then on (they differ for a text-encoder LoRA)."""
    if pretrained is not finetuned:
        return pretrained.encode_prompts(prompts), finetuned.encode_prompts(prompts)
    if not pretrained.has_adapter:
        ctx = pretrained.encode_prompts(prompts)
        return ctx, ctx
    return pretrained.encode_prompts_as(prompts, False), pretrained.encode_prompts_as(prompts, True)


def _switch_adapters(module: torch.nn.Module, on: bool) -> None:
    """Every LoRA layer of a module on or off (the UNet through diffusers; a text encoder's
    adapter is injected by peft directly, see add_text_encoder_lora)."""
    if not isinstance(module, _TEXT_ENCODERS):
        (module.enable_adapters if on else module.disable_adapters)()
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(on)


_TEXT_ENCODERS = (CLIPTextModel, CLIPTextModelWithProjection)
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # diffusers' text-encoder LoRA


def add_text_encoder_lora(text_encoder: torch.nn.Module, rank: int, alpha: float, name: str = ADAPTER_NAME,
                          state: dict | None = None) -> None:
    """A LoRA adapter on the text encoder's attention projections, injected with peft's own
    API (transformers' integration asks for a newer peft than this one); `state`: its
    weights (peft keys without the adapter name), else a fresh Gaussian init."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict

    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(TEXT_LORA_TARGETS))
    inject_adapter_in_model(cfg, text_encoder, adapter_name=name)
    if state is not None:
        result = set_peft_model_state_dict(text_encoder, state, adapter_name=name)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"text-encoder LoRA keys that fit no layer: {result.unexpected_keys[:2]}")


def _add_lora(model: T2IModel, weights: dict, name: str, source) -> None:
    """A diffusers LoRA state dict as the UNet's adapter `name`, and the text encoder's where
    the file has 'text_encoder.' keys (the library's errors pass through); a LoRA without UNet
    weights is an InputError."""
    from diffusers import StableDiffusionPipeline

    state, alphas = StableDiffusionPipeline.lora_state_dict(weights)
    _check_lora_modules(model, state, weights, source)
    model.unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name=name)
    if name not in (getattr(model.unet, "peft_config", None) or {}):
        raise InputError(f"the LoRA in '{source}' has no UNet weights", "give a LoRA trained on the UNet")
    te_state = {k[len("text_encoder."):]: v for k, v in weights.items() if k.startswith("text_encoder.")}
    if model.text_encoder is not None and te_state:
        unet_cfg = model.unet.peft_config[name]
        rank = next(v.shape[0] for k, v in te_state.items() if "lora_A" in k)
        add_text_encoder_lora(model.text_encoder, rank, unet_cfg.lora_alpha * rank / unet_cfg.r, name,
                              {k: v.to(model.dtype) for k, v in te_state.items()})
        model.text_encoder.to(model.device).requires_grad_(False)


def _check_lora_modules(model: T2IModel, state: dict, weights: dict, source) -> None:
    """Refuse a LoRA any of whose weights sit on modules the model does not have (the library
    would drop them without a word): the count and a few of the modules in one line. `state`:
    the file converted by diffusers ('unet.' keys), `weights`: the file as read
    ('text_encoder.' keys)."""
    unet = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    if unet and "lora_A" not in next(iter(unet)):
        unet = convert_unet_state_dict_to_peft(unet)
    parts = [(model.unet, unet)]
    te = {k[len("text_encoder."):]: v for k, v in weights.items() if k.startswith("text_encoder.")}
    if te and model.text_encoder is not None:
        parts.append((model.text_encoder, te))
    total, off = 0, []
    for module, keys in parts:
        names = {n for n, _ in module.named_modules()}
        lora = [k for k in keys if ".lora" in k]
        total += len(lora)
        off += [k for k in lora if k.split(".lora")[0] not in names]
    if not off:
        return
    modules = sorted({k.split(".lora")[0] for k in off})
    raise InputError(f"{len(off)} of {total} weights of the LoRA in '{source}' sit on modules that '{model.source}' "
                     f"does not have ({len(modules)} module{'s' if len(modules) != 1 else ''}, e.g. "
                     f"{', '.join(modules[:3])})",
                     "give the base model the LoRA was trained on (--pretrained, or 'base' in lora_base.json), "
                     "or a LoRA made for this model")


def stack_lora(model: T2IModel, source: str | Path, scale: float = 1.0) -> str:
    """Load a LoRA on top of the model's UNet as one more active adapter, as a user of a
    (stolen) model samples with an adapter of their own (diffusers' load_lora_weights):
    `source` is a LoRA folder (`modelseal finetune --method lora`) or a LoRA .safetensors
    file. Adapters already on the UNet stay active. Returns the new adapter's name."""
    path = Path(str(source)).expanduser()
    refuse_pickle_lora(path)
    file = path / LORA_FILE if path.is_dir() else path
    weights = read_safetensors(file, "the stacked LoRA file", "give a LoRA folder or .safetensors file")
    check_lora_weights(weights, file)
    name = f"stacked_{len(getattr(model.unet, 'peft_config', None) or {})}"
    try:
        _add_lora(model, weights, name, source)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot stack the LoRA in '{source}' on '{model.source}': {library_error_line(e)}",
                         "give a LoRA trained on a model of this architecture") from None
    names = list(model.unet.peft_config)
    model.unet.set_adapters(names, [scale if n == name else 1.0 for n in names])
    model.unet.requires_grad_(False)
    return name


def load_vae(source: str | Path, device: str | torch.device = "cpu", local_files_only: bool = False
             ) -> AutoencoderKL:
    """An AutoencoderKL on its own (a folder with config.json and safetensors weights, or a hub
    id such as stabilityai/sd-vae-ft-mse) or a T2I model's (a diffusers folder with vae/, or
    tiny:t2i), float32, frozen."""
    from .zoo import resolve_model

    path = resolve_model(str(source), kind="t2i") if str(source).startswith("tiny:") else str(source)
    local = Path(path).expanduser()
    sub = "vae" if (local / "vae").is_dir() else None
    if local.exists() and not (local / (sub or "") / "config.json").is_file():
        raise InputError(f"'{source}' holds no autoencoder (no config.json, no vae/config.json)",
                         "give a diffusers AutoencoderKL folder or a Stable Diffusion folder with vae/")
    quiet_loading()
    try:
        vae = AutoencoderKL.from_pretrained(str(local) if local.exists() else path, subfolder=sub,
                                            use_safetensors=True, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load an autoencoder from '{source}': {library_error_line(e)}",
                         "give a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model"
                         ".safetensors), a Stable Diffusion folder with vae/, or a hub id in the cache") from None
    return vae.float().eval().requires_grad_(False).to(device)


def _load_pipeline(source, device, dtype, local_files_only) -> T2IModel:
    from .zoo import hub_access, resolve_model

    path = resolve_model(str(source), kind="t2i")
    local_files_only = hub_access(path, "model_index.json", local_files_only)
    index = _index(path, local_files_only)
    sdxl = bool((index.get("text_encoder_2") or [None])[0])
    unet_file, te_file = "diffusion_pytorch_model.safetensors", "model.safetensors"

    def kw(sub: str, weights: str) -> dict:
        return dict(subfolder=sub, local_files_only=local_files_only, use_safetensors=True,
                    variant=_variant(Path(path, sub), weights))

    part = "unet"  # the sub-folder being loaded, named when its weights do not fit its config
    try:
        unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype, **kw("unet", unet_file))
        vae = None
        if Path(path, "vae").exists() or not Path(path).exists():
            part = "vae"
            vae = AutoencoderKL.from_pretrained(path, torch_dtype=dtype, **kw("vae", unet_file))
        part = "text_encoder"
        text_encoder = CLIPTextModel.from_pretrained(path, dtype=dtype, **kw("text_encoder", te_file))
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=local_files_only)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=local_files_only)
        text_encoder_2 = tokenizer_2 = None
        if sdxl:
            part = "text_encoder_2"
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(path, dtype=dtype,
                                                                         **kw("text_encoder_2", te_file))
            tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2",
                                                        local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        why = mismatch_line(e, f"the {part} weights file", f"{part}/config.json")
        if why:
            raise InputError(f"the {part} weights of '{source}' do not fit its config: {why}",
                             f"give {part}/config.json and the weights of one checkpoint (restore or re-save "
                             "the model folder)") from None
        raise InputError(f"cannot load a text-to-image model from '{source}': {library_error_line(e)}",
                         "give a diffusers Stable Diffusion folder (with model_index.json, unet/, vae/, "
                         "text_encoder/, tokenizer/, scheduler/; SDXL also text_encoder_2/, tokenizer_2/), "
                         "a hub id already in the cache, or tiny:t2i") from None
    model = T2IModel(unet, vae, text_encoder, tokenizer, scheduler, source=str(source),
                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                     zero_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)) and sdxl)
    if model.is_sdxl and text_encoder_2 is None:
        raise InputError(f"'{source}' has an SDXL UNet but no second text encoder",
                         "give the whole SDXL folder (text_encoder_2/ and tokenizer_2/ listed in model_index.json)")
    model.requires_grad_(False)
    for m in model.modules():
        m.eval()
    return model.to(device)


def _load_lora(source, device, dtype, local_files_only, base) -> T2IModel:
    base = base or lora_base(source)
    if base is None:
        raise InputError(f"'{source}' is a LoRA folder that does not name its base model",
                         "give the base model it was trained on (e.g. --pretrained) or add lora_base.json")
    # an unreadable file is told apart from one that does not fit the base, before the base loads
    weights = read_safetensors(Path(str(source)) / LORA_FILE, "the LoRA file",
                               "restore it, or rerun `modelseal finetune --method lora`")
    check_lora_weights(weights, Path(str(source)) / LORA_FILE)
    model = _load_pipeline(base, device, dtype, local_files_only)
    try:
        _add_lora(model, weights, ADAPTER_NAME, source)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        why = mismatch_line(e, "the LoRA", f"'{base}'")
        if why:
            raise InputError(f"the LoRA in '{source}' does not fit the base model '{base}': {why}",
                             "give the base model the LoRA was trained on (--pretrained, or lora_base.json)") from None
        raise InputError(f"cannot apply the LoRA in '{source}' to '{base}': {library_error_line(e)}",
                         "check that the LoRA was trained on this base model") from None
    model.unet.requires_grad_(False)
    model.source = str(source)
    return model.to(device)
