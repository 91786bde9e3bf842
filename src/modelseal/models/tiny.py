"""The tiny zoo's architectures: configs of the same transformers / diffusers classes the
real checkpoints use (CLIPModel, AutoencoderKL, UNet2DConditionModel, the SD noise schedule),
at a size that trains and runs on a small CPU. `modelseal zoo build` (zoobuild/) trains them.
"""
from __future__ import annotations


def clip_config(vocab_size: int, bos: int, eos: int, image_size: int, patch: int = 8):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=128, intermediate_size=512,
                           num_hidden_layers=4, num_attention_heads=4),
        projection_dim=128,
    )


def vae_config(image_size: int) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                sample_size=image_size, scaling_factor=1.0)


def unet_config(latent_size: int, channels: tuple[int, ...], layers: int, text_dim: int) -> dict:
    n = len(channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return dict(sample_size=latent_size, in_channels=4, out_channels=4, down_block_types=down,
                up_block_types=up, block_out_channels=tuple(channels), layers_per_block=layers,
                cross_attention_dim=text_dim, attention_head_dim=4, norm_num_groups=16)


def scheduler_config() -> dict:
    """Stable Diffusion's training schedule; clip_sample off (latents are not in [-1, 1])."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, steps_offset=1, prediction_type="epsilon")
