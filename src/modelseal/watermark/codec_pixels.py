"""The codec applied to pixels: images in [0, 1] through the model's VAE.

encode_all / decode_all are the batched VAE passes; embed_images makes watermarked pixels
dec(enc(x) + E(m)), extract_bits reads bits from pixels (how generated images are verified)
and bit_accuracy counts the bits that survive decode -> attack -> re-encode.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.diffusion import T2IModel
from .codec import Codec

# AttackFn(images in [0, 1], generator) -> images, as made by attacks.image.attack_sampler
AttackFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


@torch.no_grad()
def encode_all(model: T2IModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """VAE latents (mean, scaled) of images in [0, 1], batched, as float32 on the model's device."""
    return torch.cat([model.encode_images(images[i:i + batch_size]).float()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def decode_all(model: T2IModel, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model.decode_latents(latents[i:i + batch_size]).float()
                      for i in range(0, len(latents), batch_size)])


@torch.no_grad()
def embed_images(codec: Codec, model: T2IModel, images: torch.Tensor, bits: torch.Tensor,
                 batch_size: int = 64) -> torch.Tensor:
    """Watermarked pixels dec(enc(x) + E(m)) in [0, 1] (what stage 2 teaches the UNet to make)."""
    out = []
    for i in range(0, len(images), batch_size):
        z = encode_all(model, images[i:i + batch_size])
        b = bits if bits.dim() == 1 else bits[i:i + batch_size]
        out.append(model.decode_latents(codec.embed(z, b.to(z.device))).float())
    return torch.cat(out)


@torch.no_grad()
def extract_bits(codec: Codec, model: T2IModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Bits (N, k) read from pixels: VAE encode -> extractor (how generated images are verified)."""
    return torch.cat([codec.read_bits(encode_all(model, images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)]).cpu()


@torch.no_grad()
def bit_accuracy(codec: Codec, model: T2IModel, images: torch.Tensor, bits: torch.Tensor,
                 attack: str | AttackFn | None = None, generator: torch.Generator | None = None,
                 batch_size: int = 64) -> torch.Tensor:
    """Matching bits per image (int64, (N,)) after decode -> attack -> re-encode -> extract.

    `bits` is one message (k,) or one per image (N, k); `attack` an attack name from
    attacks.image (e.g. 'jpeg') or a callable (images, generator) -> images.
    """
    from ..attacks.image import apply_attack

    if isinstance(attack, str):
        name = attack
        attack = lambda x, g: apply_attack(name, x, generator=g)  # noqa: E731
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    marked = embed_images(codec, model, images, bits, batch_size)
    if attack is not None:
        marked = torch.cat([attack(marked[i:i + batch_size], gen) for i in range(0, len(marked), batch_size)])
    read = extract_bits(codec, model, marked, batch_size)
    target = bits.cpu().expand_as(read) if bits.dim() == 1 else bits.cpu()
    return (read == target).sum(1).to(torch.int64)
