"""SleeperMark stage 1: the latent watermark codec (secret encoder E + extractor D), the networks.

E maps a k-bit message m to a residual delta = E(m) of the latent's shape (C, h, w); the
watermarked latent is z_w = z + delta, so delta depends on m only, never on the image.
D reads k logits back from a latent. Both are trained together on latents
z = VAE.encode(x) of real images, the VAE frozen, with random messages per sample:

    L = BCE(D(z_w), m) + w_img(s) * MSE(dec(z_w), dec(z)) + w_lpips(s) * P(dec(z_w), dec(z))

The fidelity reference is the VAE reconstruction dec(z), not the image x; P is an optional
perceptual distance (LPIPS in the paper). Optionally D reads enc(attack(dec(z_w))) instead
of z_w (a VAE round trip and a distortion layer), the gradient flowing through the frozen
VAE: that is how D is used at verification time, on generated pixels.

Training: codec_training.py; the codec folder (save / load, the owner's VAE):
codec_folder.py; the codec applied to pixels (embed, read bits, bit accuracy): codec_pixels.py.

Sizes follow the latent: SD's 4x64x64 gets the reference layout (MLP 48 -> 1024 -> 1024,
a 1x32x32 map upsampled x2; eight convs down to 4x4, MLP 8192 -> 2048); the tiny zoo's
4x8x8 a proportionally smaller one. Pixel models (no VAE) use the image as the "latent"
(3, H, W) with the same code.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.diffusion import T2IModel
from .codec_folder import CODEC_CLASS, CODEC_VERSION, CodecFolder


def latent_shape(model: T2IModel) -> tuple[int, int, int]:
    """(C, h, w) of the model's diffusion space: the VAE latent, or the pixels without a VAE."""
    n = model.latent_size
    return int(model.unet.config.in_channels), n, n


def _default_upsample(h: int, w: int) -> int:
    # The reference's x2 map (32x32 for a 64x64 latent) keeps plenty of cells; on a tiny
    # latent (8x8) halving would leave fewer cells than message bits.
    return 2 if min(h, w) >= 32 and h % 2 == 0 and w % 2 == 0 else 1


class SecretEncoder(nn.Module):
    """E: message m (B, k) in {0, 1} -> latent residual delta (B, C, h, w).

    MLP k -> hidden -> (h/u)(w/u) with SiLU, reshaped to one (h/u) x (w/u) map, repeated
    to C channels, upsampled x u (nearest), then a 3x3 conv whose weights and bias start at
    zero, so delta = 0 at initialisation. u = 2 unless the latent is small (see
    _default_upsample); hidden defaults to max(cells, 256) (1024 on SD, as the reference).
    """

    def __init__(self, k: int, latent_shape: tuple[int, int, int], hidden: int | None = None,
                 upsample: int | None = None):
        super().__init__()
        c, h, w = (int(v) for v in latent_shape)
        self.k, self.shape = int(k), (c, h, w)
        self.upsample = int(upsample or _default_upsample(h, w))
        if h % self.upsample or w % self.upsample:
            raise ValueError(f"latent {h}x{w} is not divisible by upsample {self.upsample}")
        self.grid = (h // self.upsample, w // self.upsample)
        cells = self.grid[0] * self.grid[1]
        self.hidden = int(hidden or max(cells, 256))
        self.mlp = nn.Sequential(nn.Linear(self.k, self.hidden), nn.SiLU(),
                                 nn.Linear(self.hidden, cells), nn.SiLU())
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        if bits.dim() == 1:
            bits = bits.unsqueeze(0)
        x = self.mlp(bits.to(self.conv.weight.dtype)).view(-1, 1, *self.grid)
        x = x.expand(-1, self.shape[0], -1, -1)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv(x)


def _default_stages(h: int, w: int) -> int:
    """Stride-2 stages: halve while the map stays >= 2 cells, at most 4 (64 -> 4 on SD)."""
    s = 0
    while s < 4 and min(h, w) / 2 ** (s + 1) >= 2:
        s += 1
    return s


class Extractor(nn.Module):
    """D: latent (B, C, h, w) -> k logits.

    `stages` pairs of 3x3 convs with SELU (the first of each pair with stride 2, channels
    width * 2^i), flattened, then three SELU linear layers of mlp_hidden, dropout and a
    linear layer to k. SD's 64x64 latent: 4 stages, width 64 (eight convs to 512x4x4, as
    the reference), mlp_hidden 2048; the tiny 8x8: 2 stages, width 32, mlp_hidden 256.
    """

    def __init__(self, k: int, latent_shape: tuple[int, int, int], width: int | None = None,
                 stages: int | None = None, mlp_hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        c, h, w = (int(v) for v in latent_shape)
        self.k = int(k)
        self.width = int(width or (64 if min(h, w) >= 32 else 32))
        self.stages = _default_stages(h, w) if stages is None else int(stages)
        layers: list[nn.Module] = []
        ch_in, sh, sw = c, h, w
        for i in range(max(self.stages, 1)):
            ch = self.width * 2 ** i
            stride = 2 if self.stages > 0 else 1
            layers += [nn.Conv2d(ch_in, ch, 3, stride=stride, padding=1), nn.SELU(),
                       nn.Conv2d(ch, ch, 3, padding=1), nn.SELU()]
            ch_in = ch
            if stride == 2:
                sh, sw = math.ceil(sh / 2), math.ceil(sw / 2)
        self.convs = nn.Sequential(*layers, nn.Flatten())
        flat = ch_in * sh * sw
        self.mlp_hidden = int(mlp_hidden or min(2048, max(256, flat // 4)))
        m = self.mlp_hidden
        self.mlp = nn.Sequential(nn.Linear(flat, m), nn.SELU(), nn.Linear(m, m), nn.SELU(),
                                 nn.Linear(m, m), nn.SELU(), nn.Dropout(dropout), nn.Linear(m, self.k))
        self.dropout = float(dropout)
        for mod in self.modules():
            # LeCun-normal weights, zero biases: the initialisation SELU's self-normalisation
            # assumes (PyTorch's default starts smaller in variance and learns slower).
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(mod.weight, 0.0, mod.weight[0].numel() ** -0.5)
                nn.init.zeros_(mod.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.to(self.mlp[0].weight.dtype)
        return self.mlp(self.convs(x))


class Codec(CodecFolder, nn.Module):
    """Secret encoder + extractor for one latent shape and message length k.

    save_pretrained / from_pretrained (codec_folder.CodecFolder) write and read a folder with
    config.json and model.safetensors (never pickle).
    """

    def __init__(self, k: int, latent_shape: tuple[int, int, int], hidden: int | None = None,
                 upsample: int | None = None, width: int | None = None, stages: int | None = None,
                 mlp_hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if len(latent_shape) != 3:
            raise ValueError(f"latent_shape must be (C, h, w), got {latent_shape}")
        self.k = int(k)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.encoder = SecretEncoder(k, self.latent_shape, hidden, upsample)
        self.extractor = Extractor(k, self.latent_shape, width, stages, mlp_hidden, dropout)
        self.meta: dict = {}
        self.folder: Path | None = None   # where from_pretrained read it
        self.reader: dict | None = None   # {"vae": subfolder or None (pixels), "sha256": ...}; None: not recorded

    @property
    def config(self) -> dict:
        return {
            "_class_name": CODEC_CLASS,
            "format_version": CODEC_VERSION,
            "k": self.k,
            "latent_shape": list(self.latent_shape),
            "hidden": self.encoder.hidden,
            "upsample": self.encoder.upsample,
            "width": self.extractor.width,
            "stages": self.extractor.stages,
            "mlp_hidden": self.extractor.mlp_hidden,
            "dropout": self.extractor.dropout,
        }

    def residual(self, bits: torch.Tensor) -> torch.Tensor:
        """delta = E(m), (B, C, h, w)."""
        return self.encoder(bits)

    def embed(self, latents: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """z_w = z + E(m); one message (k,) is broadcast over the batch."""
        return latents + self.encoder(bits).to(latents.dtype)

    def extract(self, latents: torch.Tensor) -> torch.Tensor:
        """Logits (B, k); a bit reads 1 where its logit is > 0."""
        return self.extractor(latents)

    def read_bits(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.extractor(latents) > 0).float()
