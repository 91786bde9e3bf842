"""SleeperMark stage 1: the latent watermark codec (secret encoder E + extractor D).

E maps a k-bit message m to a residual delta = E(m) of the latent's shape (C, h, w); the
watermarked latent is z_w = z + delta, so delta depends on m only, never on the image.
D reads k logits back from a latent. Both are trained together on latents
z = VAE.encode(x) of real images, the VAE frozen, with random messages per sample:

    L = BCE(D(z_w), m) + w_img(s) * MSE(dec(z_w), dec(z)) + w_lpips(s) * P(dec(z_w), dec(z))

The fidelity reference is the VAE reconstruction dec(z), not the image x; P is an optional
perceptual distance (LPIPS in the paper). Optionally D reads enc(attack(dec(z_w))) instead
of z_w (a VAE round trip and a distortion layer), the gradient flowing through the frozen
VAE: that is how D is used at verification time, on generated pixels.

Sizes follow the latent: SD's 4x64x64 gets the reference layout (MLP 48 -> 1024 -> 1024,
a 1x32x32 map upsampled x2; eight convs down to 4x4, MLP 8192 -> 2048); the tiny zoo's
4x8x8 a proportionally smaller one. Pixel models (no VAE) use the image as the "latent"
(3, H, W) with the same code.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..models.diffusion import T2IModel
from ..runs import TrainingCheckpoint, atomic_path, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CODEC_CLASS = "SleeperMarkCodec"
CODEC_VERSION = 1
READER_VAE = "vae"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"

# AttackFn(images in [0, 1], generator) -> images, as made by attacks.image.attack_sampler
AttackFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def latent_shape(model: T2IModel) -> tuple[int, int, int]:
    """(C, h, w) of the model's diffusion space: the VAE latent, or the pixels without a VAE."""
    n = model.latent_size
    return int(model.unet.config.in_channels), n, n


# --------------------------------------------------------------------------- networks

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
            # assumes (PyTorch's default starts ~3x smaller in variance and learns far slower).
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(mod.weight, 0.0, mod.weight[0].numel() ** -0.5)
                nn.init.zeros_(mod.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.to(self.mlp[0].weight.dtype)
        return self.mlp(self.convs(x))


class Codec(nn.Module):
    """Secret encoder + extractor for one latent shape and message length k.

    save_pretrained / from_pretrained write and read a folder with config.json and
    model.safetensors (never pickle).
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

    # ---- files ------------------------------------------------------------------------
    @property
    def vae(self):
        """The owner's VAE: the only encoder bits are read through. Kept out of the module
        tree, so it is neither in the codec's state dict nor among its trained parameters."""
        return self.__dict__.get("_reader_vae")

    def set_vae(self, vae) -> None:
        self.__dict__["_reader_vae"] = vae

    def attach_reader(self, model: T2IModel) -> "Codec":
        """Record `model`'s VAE as the owner's reader (pixel models: bits are read from pixels)."""
        self.set_vae(model.vae)
        self.reader = {"vae": READER_VAE if model.vae is not None else None}
        return self

    def save_pretrained(self, folder: str | Path, meta: dict | None = None) -> None:
        """Write config.json (+ `meta`, e.g. training provenance), model.safetensors and, when
        the reader is known, the owner's VAE in vae/ (diffusers layout) with its sha256."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        cfg = self.config
        if self.reader is not None:
            reader = dict(self.reader)
            if reader.get("vae"):
                self.vae.save_pretrained(folder / READER_VAE, safe_serialization=True)
                reader["sha256"] = file_sha256(folder / READER_VAE / VAE_WEIGHTS)
            cfg["reader"] = reader
        meta = self.meta if meta is None else meta
        if meta:
            cfg["meta"] = meta
        write_json(folder / CONFIG_NAME, cfg)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Codec":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if str(folder).startswith("tiny:"):
            from ..models.zoo import resolve_model

            folder = resolve_model(str(folder), "codec")
        folder = Path(folder)
        fix = "give OUT/codec of `modelseal watermark codec` (or of `watermark adapt`), or tiny:codec"
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise InputError(f"'{folder}' is not a watermark codec folder", fix)
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"'{folder / CONFIG_NAME}' is not readable JSON ({e.__class__.__name__})", fix) from None
        if not isinstance(cfg, dict) or cfg.get("_class_name") != CODEC_CLASS:
            raise InputError(f"'{folder}' does not hold a SleeperMark codec", fix)
        if cfg.get("format_version") != CODEC_VERSION:
            raise InputError(f"codec in '{folder}' has format version {cfg.get('format_version')!r}, this "
                             f"modelseal reads {CODEC_VERSION}", "upgrade modelseal or retrain the codec")
        try:
            codec = cls(cfg["k"], tuple(cfg["latent_shape"]), cfg.get("hidden"), cfg.get("upsample"),
                        cfg.get("width"), cfg.get("stages"), cfg.get("mlp_hidden"), cfg.get("dropout", 0.1))
            codec.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot load the codec in '{folder}': {why}", fix) from None
        codec.meta = cfg.get("meta", {}) or {}
        codec.folder = folder
        codec.reader = cfg.get("reader")
        if codec.reader and codec.reader.get("vae"):
            codec.set_vae(_load_reader_vae(folder, codec.reader, fix).to(device))
        return codec.to(device).eval()

    def require_reader(self) -> None:
        """Refuse to read bits when the codec does not record the owner's VAE."""
        if self.reader is None:
            raise InputError(f"the codec in '{self.folder}' does not record the owner's VAE (written by an older "
                             "modelseal)", "re-run `modelseal watermark codec`, or `modelseal watermark adapt`, "
                             "which write the VAE into OUT/codec/vae")


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_reader_vae(folder: Path, reader: dict, fix: str):
    """The owner's VAE from the codec folder, checked against the sha256 recorded with it."""
    from diffusers import AutoencoderKL

    sub = folder / str(reader["vae"])
    weights = sub / VAE_WEIGHTS
    if not weights.is_file():
        raise InputError(f"the codec in '{folder}' records its VAE in '{sub}', which has no {VAE_WEIGHTS}", fix)
    digest = file_sha256(weights)
    if reader.get("sha256") and digest != reader["sha256"]:
        raise InputError(f"the VAE in '{sub}' is not the one recorded with the codec (sha256 {digest[:12]} vs "
                         f"{str(reader['sha256'])[:12]})", "restore the codec folder from your backup")
    try:
        return AutoencoderKL.from_pretrained(sub, use_safetensors=True).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot load the codec's VAE in '{sub}': {why}", fix) from None


# --------------------------------------------------------------------------- loss

@dataclass
class CodecLossWeights:
    """Loss weights with linear ramps from 0: w(s) = w * min(1, s / ramp).

    Reference (10k steps): w_img -> 30 by step 2000, w_lpips -> 0.25 by step 4000. A run of
    fewer than `ref_steps` steps scales both ramps by steps / ref_steps (rescale=True), so
    the fidelity terms arrive at the same fraction of training: a 500-step run reaches
    w_img at step 100 and w_lpips at step 200.
    """
    bits: float = 1.0
    img: float = 30.0
    img_ramp: int = 2000
    lpips: float = 0.25
    lpips_ramp: int = 4000
    ref_steps: int = 10_000
    rescale: bool = True
    latent: float = 0.0   # ours: weight of mean(delta^2), no ramp (the reference has none)

    def ramps(self, total_steps: int | None = None) -> tuple[float, float]:
        f = 1.0
        if self.rescale and total_steps is not None and 0 < total_steps < self.ref_steps:
            f = total_steps / self.ref_steps
        return self.img_ramp * f, self.lpips_ramp * f

    def at(self, step: int, total_steps: int | None = None) -> tuple[float, float, float]:
        """(w_bits, w_img, w_lpips) at 0-based `step` of a run of `total_steps`."""
        r_img, r_lp = self.ramps(total_steps)
        ramp = lambda w, r: w if r <= 0 else w * min(1.0, step / r)  # noqa: E731
        return self.bits, ramp(self.img, r_img), ramp(self.lpips, r_lp)


def codec_loss(codec: Codec, model: T2IModel, latents: torch.Tensor, bits: torch.Tensor,
               reference: torch.Tensor | None, weights: tuple[float, float, float],
               perceptual: PerceptualFn | None = None, attacks: AttackFn | None = None,
               vae_round_trip: bool = False, generator: torch.Generator | None = None,
               latent_weight: float = 0.0, strength: tuple[float, float] | None = None
               ) -> tuple[torch.Tensor, dict]:
    """Stage-1 loss for one batch and its parts.

    latents z (B, C, h, w); bits m (B, k); reference = dec(z) in [0, 1] (needed when w_img or
    w_lpips > 0); weights = (w_bits, w_img, w_lpips) from CodecLossWeights.at. The decode of
    z_w is skipped while it is not needed (fidelity weights 0 and no round trip).
    """
    w_bits, w_img, w_lp = weights
    use_lp = perceptual is not None and w_lp > 0
    delta = codec.residual(bits)
    z_w = latents + delta.to(latents.dtype)
    if strength is not None:
        # The extractor also reads z + s * delta for s ~ U(lo, hi): stage 2 plants delta only
        # approximately, and guidance scales it.
        lo, hi = strength
        s = lo + (hi - lo) * torch.rand(len(latents), 1, 1, 1, generator=generator).to(delta.device)
        z_w = latents + (s * delta).to(latents.dtype)
    need_pixels = w_img > 0 or use_lp or vae_round_trip or attacks is not None
    x_w = model.decode_latents(z_w) if need_pixels else None
    if vae_round_trip or attacks is not None:
        x_in = attacks(x_w, generator) if attacks is not None else x_w
        z_read = model.encode_images(x_in).float()
    else:
        z_read = z_w
    logits = codec.extract(z_read)
    bce = F.binary_cross_entropy_with_logits(logits, bits)
    loss = w_bits * bce
    parts = {"bce": float(bce.detach()), "bit_acc": float(((logits > 0).float() == bits).float().mean()),
             "delta_rms": float(delta.detach().pow(2).mean().sqrt())}
    if latent_weight > 0:
        loss = loss + latent_weight * delta.pow(2).mean()
    if x_w is not None and reference is not None:
        per_image = ((x_w - reference) ** 2).flatten(1).mean(1)
        mse = per_image.mean()
        if w_img > 0:
            loss = loss + w_img * mse
        parts["img_mse"] = float(mse.detach())
        parts["psnr"] = float((-10 * torch.log10(per_image.detach().clamp_min(1e-10))).mean())
        if use_lp:
            lp = perceptual(x_w, reference).mean()
            loss = loss + w_lp * lp
            parts["lpips"] = float(lp.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


# --------------------------------------------------------------------------- training

@torch.no_grad()
def encode_all(model: T2IModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """VAE latents (mean, scaled) of images in [0, 1], batched, as float32 on the model's device."""
    return torch.cat([model.encode_images(images[i:i + batch_size]).float()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def decode_all(model: T2IModel, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model.decode_latents(latents[i:i + batch_size]).float()
                      for i in range(0, len(latents), batch_size)])


# Keep every VAE reconstruction dec(z) in memory when they take at most this many bytes;
# above it (e.g. 10k images at 512 px) they are recomputed per batch.
RECON_CACHE_BYTES = 512 * 2 ** 20


def train_codec(model: T2IModel, images: torch.Tensor, k: int = 48, steps: int = 10_000,
                batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
                attacks: AttackFn | None = None, vae_round_trip: bool = False,
                weights: CodecLossWeights | None = None, perceptual: PerceptualFn | None = None,
                weight_decay: float = 1e-3, lr_schedule: str = "linear",
                max_grad_norm: float | None = None, latent_warmup: int = 0, codec: Codec | None = None,
                strength: tuple[float, float] | None = None,
                codec_kwargs: dict | None = None, encode_batch_size: int = 64,
                log: Callable[[str], None] | None = None, log_every: int | None = None,
                progress: Callable[[int], None] | None = None,
                checkpoint: TrainingCheckpoint | None = None) -> tuple[Codec, dict]:
    """Train the stage-1 codec on `images` (N, 3, H, W) in [0, 1] with the model's frozen VAE.

    Images are encoded once (posterior mean). Each step draws a batch (epochs of a seeded
    permutation) and a random message per sample, and takes one AdamW step on the codec
    (reference: lr 1e-4, weight decay 1e-3, linear decay to 0). With vae_round_trip or
    `attacks` (a callable (images, generator) -> images, e.g.
    attacks.image.attack_sampler()), the extractor reads enc(attack(dec(z_w))) instead of z_w.
    The first `latent_warmup` of the `steps` train on z_w alone (BCE only, no decode: about
    50x cheaper on a CPU), so the codec finds a code before the round trip and the fidelity
    ramps (which then count from the end of the warm-up) start; the reference has none.
    Pass `codec` to continue training one. All randomness comes from `seed` (a
    torch.Generator for data and messages; the CPU default generator, forked and restored,
    for initialisation and dropout), so CPU runs repeat exactly. `checkpoint`: where the
    loop saves and resumes its state (runs.TrainingCheckpoint), so a resumed run repeats too.

    Returns the codec (eval mode, on the model's device) and a history of per-step lists
    (step, loss, bce, bit_acc, w_img, w_lpips; img_mse, psnr and lpips are None on steps
    that did not compute them) plus "seconds", the training loop's wall time.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"codec training takes images (N, 3, H, W), got shape {tuple(images.shape)}",
                         "convert the images to float tensors in [0, 1], channels first")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    if not 0 <= latent_warmup < steps:
        raise ValueError(f"latent_warmup must be in [0, steps), got {latent_warmup}")
    if lr_schedule not in ("linear", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r} (linear | constant)")
    weights = weights or CodecLossWeights()
    log = log or (lambda msg: None)
    log_every = log_every or max(1, steps // 10)
    device = model.device
    gen = torch.Generator().manual_seed(int(seed))
    shape = latent_shape(model)

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        if codec is None:
            codec = Codec(k, shape, **(codec_kwargs or {}))
        elif tuple(codec.latent_shape) != shape or codec.k != k:
            raise ValueError(f"codec is for k={codec.k}, latent {codec.latent_shape}; asked for k={k}, latent {shape}")
        codec = codec.to(device).train()

        t0 = time.time()
        latents = encode_all(model, images, encode_batch_size)
        if tuple(latents.shape[1:]) != shape:
            raise InputError(f"images of size {tuple(images.shape[-2:])} give latents {tuple(latents.shape[1:])}, "
                             f"the model expects {shape}", f"resize the images to {model.image_size} px")
        cache = len(latents) * 3 * model.image_size ** 2 * 4 <= RECON_CACHE_BYTES
        recon_all = decode_all(model, latents, encode_batch_size) if cache else None
        log(f"[codec] encoded {len(images)} images to latents {tuple(shape)} in {time.time() - t0:.1f}s")

        opt = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda s: max(0.0, 1.0 - s / steps)) if lr_schedule == "linear" else (lambda s: 1.0))
        hist: dict[str, list] = {key: [] for key in
                                 ("step", "loss", "bce", "bit_acc", "w_img", "w_lpips", "img_mse", "psnr", "lpips")}
        order, pos = torch.randperm(len(latents), generator=gen), 0
        ckpt = checkpoint or TrainingCheckpoint(None)
        extra = ckpt.resume(steps, codec.parameters(), opt, sched, gen,
                            state=lambda: {"hist": hist, "order": order, "pos": pos},
                            meta={"k": k, "n_images": len(latents), "batch_size": batch_size})
        if extra:
            hist, order, pos = extra["hist"], extra["order"], extra["pos"]
        t0 = time.time()
        for step in ckpt.steps():
            if pos + batch_size > len(order):
                order, pos = torch.randperm(len(latents), generator=gen), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            z = latents[idx.to(latents.device)]
            m = torch.randint(0, 2, (len(idx), k), generator=gen).float().to(device)
            warm = step < latent_warmup
            w = (weights.bits, 0.0, 0.0) if warm else weights.at(step - latent_warmup, steps - latent_warmup)
            ref = None
            if w[1] > 0 or w[2] > 0:
                ref = recon_all[idx.to(recon_all.device)] if cache else decode_all(model, z, encode_batch_size)
            loss, parts = codec_loss(codec, model, z, m, ref, w, perceptual, None if warm else attacks,
                                     vae_round_trip and not warm, gen, weights.latent, None if warm else strength)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(codec.parameters(), max_grad_norm)
            opt.step()
            sched.step()

            hist["step"].append(step + 1)
            hist["w_img"].append(w[1])
            hist["w_lpips"].append(w[2])
            for key in ("loss", "bce", "bit_acc", "img_mse", "psnr", "lpips"):
                hist[key].append(parts.get(key))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                psnr = f" psnr {parts['psnr']:.1f}dB" if "psnr" in parts else ""
                log(f"[codec] step {step + 1}/{steps} loss {parts['loss']:.4f} bce {parts['bce']:.4f} "
                    f"bit acc {parts['bit_acc']:.3f} delta rms {parts['delta_rms']:.3f}{psnr} ({time.time() - t0:.0f}s)")
            if progress is not None:
                progress(1)
    codec.eval()
    codec.meta = {"trained_steps": steps, "seed": int(seed), "n_images": int(len(images)), "lr": lr,
                  "batch_size": batch_size, "vae_round_trip": bool(vae_round_trip),
                  "attacks": attacks is not None, "weights": asdict(weights)}
    hist["seconds"] = time.time() - t0
    return codec.attach_reader(model), hist


# --------------------------------------------------------------------------- use

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


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))
