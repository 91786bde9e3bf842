"""The codec's folder: config.json + model.safetensors, and the owner's VAE in vae/.

Written with safetensors and read back without unpickling. The owner's VAE (the only encoder
bits are read through) is stored beside the codec with its sha256; a VAE that does not match
it is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Self

import torch

from ..data.folders import read_json_file
from ..errors import InputError
from ..models.diffusion import T2IModel
from ..models.weights import compare_shapes, read_safetensors
from ..models.zoo import resolve_model
from ..runs import atomic_path, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CODEC_CLASS = "SleeperMarkCodec"
CODEC_VERSION = 1
READER_VAE = "vae"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


class CodecFolder:
    """What a Codec (codec.Codec) adds to read and write its folder and carry the owner's VAE:
    uses the codec's `config`, `state_dict`, `meta`, `reader` and `folder`; from_pretrained
    builds the class it is called on from config.json."""

    @property
    def vae(self):
        """The owner's VAE: the only encoder bits are read through. Kept out of the module
        tree, so it is neither in the codec's state dict nor among its trained parameters."""
        return self.__dict__.get("_reader_vae")

    def set_vae(self, vae) -> None:
        self.__dict__["_reader_vae"] = vae

    def attach_reader(self, model: T2IModel) -> Self:
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
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> Self:
        if str(folder).startswith("tiny:"):
            folder = resolve_model(str(folder), "codec")
        folder = Path(folder)
        fix = "give OUT/codec of `modelseal watermark codec` (or of `watermark adapt`), or tiny:codec"
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise InputError(f"'{folder}' is not a watermark codec folder", fix)
        cfg = read_json_file(folder / CONFIG_NAME, "codec config", fix)
        if not isinstance(cfg, dict) or cfg.get("_class_name") != CODEC_CLASS:
            raise InputError(f"'{folder}' does not hold a SleeperMark codec", fix)
        if cfg.get("format_version") != CODEC_VERSION:
            raise InputError(f"codec in '{folder}' has format version {cfg.get('format_version')!r}, this "
                             f"modelseal reads {CODEC_VERSION}", "upgrade modelseal or retrain the codec")
        state = read_safetensors(folder / WEIGHTS_NAME, "the codec weights", fix)
        try:
            codec = cls(cfg["k"], tuple(cfg["latent_shape"]), cfg.get("hidden"), cfg.get("upsample"),
                        cfg.get("width"), cfg.get("stages"), cfg.get("mlp_hidden"), cfg.get("dropout", 0.1))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot build the codec that '{folder / CONFIG_NAME}' describes: {why}", fix) from None
        why = compare_shapes({k: tuple(v.shape) for k, v in codec.state_dict().items()},
                             {k: tuple(v.shape) for k, v in state.items()}, WEIGHTS_NAME, CONFIG_NAME)
        if why:
            raise InputError(f"the codec in '{folder}' does not match its {CONFIG_NAME}: {why}",
                             f"keep {CONFIG_NAME} and {WEIGHTS_NAME} of one codec together (restore the folder), "
                             "or retrain it with `modelseal watermark codec`")
        codec.load_state_dict(state, strict=True)
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
