"""Real-layout checkpoints with random weights: SD 1.5, SD 2.1 (v-prediction), SDXL base and
CLIP ViT-B/16, built offline with the published configurations and saved exactly as their
hub folders are, so every command can be proven on the shapes users bring without a download.

- `sd15`: runwayml/stable-diffusion-v1-5 (PNDM scheduler, epsilon, 512 px, CLIP ViT-L/14 text).
- `sd21`: stabilityai/stable-diffusion-2-1 (DDIM scheduler, v-prediction, 768 px, OpenCLIP
  ViT-H/14 text encoder as transformers holds it: 23 layers, pad token "!").
- `sdxl`: stabilityai/stable-diffusion-xl-base-1.0 (Euler scheduler, epsilon, 1024 px, CLIP
  ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders, text_time added conditioning); saved as the
  fp16 variant only (`*.fp16.safetensors`), as the hub offers it.
- `clip-b16`: openai/clip-vit-base-patch16 (transformers CLIPModel + processor + tokenizer).

The tokenizers are the real CLIP BPE vocabulary (49,408 tokens), converted from the
`bpe_simple_vocab_16e6.txt.gz` that the open_clip_torch package ships (`scripts/bootstrap
--test` installs it without its dependencies), so token ids equal the hub tokenizers'.
The SD 1.5 folder lists no safety checker (it would be a large random CLIP ViT-L here);
every other file name and config value is the published one.

Built folders are cached in $MODELSEAL_HOME/real-layout/<name> (`modelseal zoo real-layout`).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

from ..errors import InputError

NAMES = ("sd15", "sd21", "sdxl", "clip-b16")
HUB_IDS = {"sd15": "runwayml/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1",
           "sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "clip-b16": "openai/clip-vit-base-patch16"}
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408

_SCALED_LINEAR = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

SCHEDULERS = {
    "sd15": ("PNDMScheduler", dict(_SCALED_LINEAR, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                                   trained_betas=None, clip_sample=False)),
    "sd21": ("DDIMScheduler", dict(_SCALED_LINEAR, clip_sample=False, prediction_type="v_prediction",
                                   set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)),
    "sdxl": ("EulerDiscreteScheduler", dict(_SCALED_LINEAR, interpolation_type="linear", prediction_type="epsilon",
                                            sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True,
                                            steps_offset=1, timestep_spacing="leading", trained_betas=None,
                                            use_karras_sigmas=False)),
}

_SD_BLOCKS = dict(block_out_channels=[320, 640, 1280, 1280],
                  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                  layers_per_block=2, in_channels=4, out_channels=4, act_fn="silu", center_input_sample=False,
                  downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
                  norm_eps=1e-5, norm_num_groups=32)
UNETS = {
    "sd15": dict(_SD_BLOCKS, attention_head_dim=8, cross_attention_dim=768, sample_size=64),
    "sd21": dict(_SD_BLOCKS, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
                 dual_cross_attention=False, num_class_embeds=None, only_cross_attention=False,
                 upcast_attention=True, use_linear_projection=True),
    "sdxl": dict(addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
                 attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
                 cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                                                             "CrossAttnDownBlock2D"],
                 downsample_padding=1, in_channels=4, layers_per_block=2, mid_block_type="UNetMidBlock2DCrossAttn",
                 norm_eps=1e-5, norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816,
                 sample_size=128, transformer_layers_per_block=[1, 2, 10], act_fn="silu",
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True),
}


def _vae(sample_size: int, scaling: float = 0.18215, **extra) -> dict:
    return dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
                sample_size=sample_size, scaling_factor=scaling, up_block_types=["UpDecoderBlock2D"] * 4, **extra)


VAES = {"sd15": _vae(512), "sd21": _vae(768), "sdxl": _vae(1024, 0.13025, force_upcast=True)}

_TEXT_COMMON = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=0,
                    eos_token_id=2, pad_token_id=1, initializer_factor=1.0, attention_dropout=0.0, dropout=0.0)
CLIP_L_TEXT = dict(_TEXT_COMMON, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                   num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu")
OPENCLIP_H_TEXT = dict(_TEXT_COMMON, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                       num_hidden_layers=23, projection_dim=512, hidden_act="gelu")
OPENCLIP_BIGG_TEXT = dict(_TEXT_COMMON, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                          num_hidden_layers=32, projection_dim=1280, hidden_act="gelu")
TEXT = {"sd15": [CLIP_L_TEXT], "sd21": [OPENCLIP_H_TEXT], "sdxl": [CLIP_L_TEXT, OPENCLIP_BIGG_TEXT]}
PAD = {"sd15": ["<|endoftext|>"], "sd21": ["!"], "sdxl": ["<|endoftext|>", "!"]}

CLIP_B16 = dict(
    text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                     max_position_embeddings=77, vocab_size=VOCAB_SIZE, hidden_act="quick_gelu",
                     bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=512),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       image_size=224, patch_size=16, hidden_act="quick_gelu", projection_dim=512),
    projection_dim=512, logit_scale_init_value=2.6592)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- the real CLIP BPE vocabulary ----------------------------------------------------------
def bpe_file() -> Path:
    """open_clip's bpe_simple_vocab_16e6.txt.gz, found without importing open_clip (which
    would need torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    for root in (spec.submodule_search_locations or []) if spec else []:
        f = Path(root) / BPE_FILE
        if f.is_file():
            return f
    raise InputError("the real CLIP BPE vocabulary is not installed (open_clip_torch's " + BPE_FILE + ")",
                     "pip install --no-deps open_clip_torch (scripts/bootstrap --test does)")


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, printable bytes first (that order is CLIP's first 256 ids)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) of the CLIP BPE, in the order CLIP assigns ids: 256 byte symbols,
    the same word-final, one token per merge (48,894 merges), then start and end of text."""
    lines = gzip.open(bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + \
        ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise InputError(f"{bpe_file()} gives {len(tokens)} tokens, not {VOCAB_SIZE}", "reinstall open_clip_torch")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json as on the hub."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
         "add_prefix_space": False, **special}, indent=2))


# ---- building ----------------------------------------------------------------------------
def real_layout_dir() -> Path:
    from .zoo import modelseal_home

    return modelseal_home() / "real-layout"


def _write_scheduler(name: str, folder: Path) -> None:
    """The published scheduler_config.json, keys the class no longer takes included (diffusers
    ignores them on load, as it does for the hub file)."""
    import diffusers

    cls, cfg = SCHEDULERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": cls, "_diffusers_version": diffusers.__version__, **cfg}, indent=2))


def _build_t2i(name: str, folder: Path, seed: int, log) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import diffusers

    variant = "fp16" if name == "sdxl" else None
    save_dtype = torch.float16 if variant else torch.float32
    torch.manual_seed(seed)
    index = {"_class_name": "StableDiffusionXLPipeline" if name == "sdxl" else "StableDiffusionPipeline",
             "_diffusers_version": diffusers.__version__}
    for i, text in enumerate(TEXT[name]):
        sub = "text_encoder" if i == 0 else "text_encoder_2"
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        log(f"[real-layout] {name}: {sub} ({text['num_hidden_layers']} layers, width {text['hidden_size']})")
        te = _cast(cls(CLIPTextConfig(**text)), save_dtype)
        te.save_pretrained(folder / sub, safe_serialization=True, variant=variant)
        del te
        tok = "tokenizer" if i == 0 else "tokenizer_2"
        write_clip_tokenizer(folder / tok, PAD[name][i])
        index[sub] = ["transformers", cls.__name__]
        index[tok] = ["transformers", "CLIPTokenizer"]
    log(f"[real-layout] {name}: vae")
    vae = _cast(AutoencoderKL(**VAES[name]), save_dtype)
    vae.save_pretrained(folder / "vae", safe_serialization=True, variant=variant)
    del vae
    log(f"[real-layout] {name}: unet (random init of the published config)")
    unet = UNet2DConditionModel(**UNETS[name])
    log(f"[real-layout] {name}: unet {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B parameters")
    _cast(unet, save_dtype).save_pretrained(folder / "unet", safe_serialization=True, variant=variant)
    del unet
    _write_scheduler(name, folder / "scheduler")
    index.update({"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                  "scheduler": ["diffusers", SCHEDULERS[name][0]]})
    if name == "sdxl":
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update({"safety_checker": [None, None], "feature_extractor": ["transformers", "CLIPImageProcessor"],
                      "requires_safety_checker": False})
        (folder / "feature_extractor").mkdir(exist_ok=True)
        (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(_processor(224), indent=2))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _cast(module, dtype):
    import torch

    return module if dtype == torch.float32 else module.to(dtype)


def _processor(size: int) -> dict:
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": size}}


def _build_clip(folder: Path, seed: int, log) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    log("[real-layout] clip-b16: CLIPModel (ViT-B/16 vision, 12-layer text)")
    CLIPModel(CLIPConfig(**CLIP_B16)).save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(_processor(224), indent=2))


def build(name: str, root: Path | None = None, seed: int = 0, log=print, force: bool = False) -> Path:
    """Build (or find already built) the real-layout folder `name` under `root`."""
    if name not in NAMES:
        raise InputError(f"unknown real-layout model '{name}'", f"use one of: {', '.join(NAMES)}")
    root = Path(root) if root is not None else real_layout_dir()
    folder = root / name
    done = folder / ".complete"
    if done.is_file() and not force:
        return folder
    bpe_file()  # fail before minutes of work
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if name == "clip-b16":
        _build_clip(tmp, seed, log)
    else:
        _build_t2i(name, tmp, seed, log)
    (tmp / ".complete").write_text(json.dumps({"hub_id": HUB_IDS[name], "seed": seed, "weights": "random"}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
