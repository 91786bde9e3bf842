"""A Stable Diffusion 1.5 with random weights, for speed and memory benchmarks on a GPU without
a download: the published UNet, VAE and text-encoder configs (modelseal.models.real_layout)
and the real CLIP BPE tokenizer where open_clip_torch's vocabulary is installed (else the
tiny zoo's offline tokenizer: same ids length, 77 tokens)."""
from __future__ import annotations


def sd15_random(device: str):
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from modelseal.errors import InputError
    from modelseal.models.diffusion import T2IModel
    from modelseal.models.real_layout import CLIP_L_TEXT, SCHEDULERS, UNETS, VAES, write_clip_tokenizer
    from modelseal.models.tokenizer import build_tokenizer

    try:
        with tempfile.TemporaryDirectory() as d:
            write_clip_tokenizer(Path(d))
            tok = CLIPTokenizer.from_pretrained(d)
        text = CLIP_L_TEXT
    except InputError:
        tok = build_tokenizer(max_length=77)
        text = dict(CLIP_L_TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device(device):  # random init on the device itself: seconds, not a minute, on a GPU
        unet = UNet2DConditionModel(**UNETS["sd15"])
        vae = AutoencoderKL(**VAES["sd15"])
        te = CLIPTextModel(CLIPTextConfig(**text))
    sched = DDPMScheduler.from_config(SCHEDULERS["sd15"][1])
    m = T2IModel(unet, vae, te, tok, sched, source="sd15-random")
    return m.requires_grad_(False).to(device)
