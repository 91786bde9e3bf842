"""A Stable-Diffusion-1.5-sized text-to-image model with random weights, for speed and
memory benchmarks on a GPU without downloading a checkpoint (same UNet, VAE and text
encoder shapes as SD 1.5; the offline tokenizer of the tiny zoo)."""
from __future__ import annotations


def sd15_random(device: str):
    """An SD-1.5-sized UNet (random weights) + the tiny VAE/text encoder replaced by SD shapes."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modelseal.models.diffusion import T2IModel
    from modelseal.models.tokenizer import build_tokenizer

    import torch

    tok = build_tokenizer(max_length=77)
    with torch.device(device):  # random init on the device itself: seconds, not a minute, on a GPU
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    m = T2IModel(unet, vae, te, tok, sched, source="sd15-random")
    return m.requires_grad_(False).to(device)
