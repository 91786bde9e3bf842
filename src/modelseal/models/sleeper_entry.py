"""The shipped SleeperMark model of the tiny zoo (`tiny:sleeper`, `tiny:sleeper-codec`).

A watermarked tiny:t2i differs from the shipped one only in the weights stage 2 trained, so
the package holds just those (zoo_weights/sleeper/unet_trained.safetensors, float32) with
the adapted extractor (sleeper/codec/) and a record (sleeper/config.json: trigger, model id,
the demo owner's key, how it was trained and measured). The first use writes the full model
folder (the shipped tiny:t2i with those weights put back) to $MODELSEAL_HOME/derived/, where
every command can load it like any diffusers folder.

The demo owner's key is published with the package: anyone can verify with it, and anyone
could claim this model with it. It shows how verification works; it proves nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..runs import atomic_folder
from .zoo_files import SHIPPED_ZOO, folder_hash, modelseal_home

ENTRY = SHIPPED_ZOO / "sleeper"
TRAINED = "unet_trained.safetensors"
RECORD = "config.json"


def entry_record(entry: Path = ENTRY) -> dict:
    if not (entry / RECORD).is_file() or not (entry / TRAINED).is_file():
        raise InputError(f"no shipped sleeper in '{entry}'", "reinstall modelseal (the package ships zoo_weights/sleeper)")
    return json.loads((entry / RECORD).read_text())


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")).items()}


def package_sleeper(model: str | Path, codec: str | Path, key: bytes, model_id: str, trigger: str, out: Path,
                    base: Path = SHIPPED_ZOO / "t2i", info: dict | None = None) -> dict:
    """Write a zoo entry for the watermarked `model` (a tiny:t2i after stage 2): the UNet
    weights that differ from `base`, the extractor `codec`, the record. Returns the record."""
    model, codec, out = Path(model), Path(codec), Path(out)
    before, after = _unet_weights(base), _unet_weights(model)
    if before.keys() != after.keys():
        raise InputError(f"'{model}' is not a tiny:t2i architecture", "give a watermarked tiny:t2i folder")
    trained = {k: v.contiguous() for k, v in after.items() if not torch.equal(v, before[k])}
    if not trained:
        raise InputError(f"'{model}' has the same UNet weights as '{base}'", "give the watermarked model")
    record = {"_class_name": "SleeperZooEntry", "base": "tiny:t2i", "base_unet_sha256": _sha_unet(base),
              "trigger": trigger, "model_id": model_id,
              "demo_key": {"secret": key.hex(), "note": "published with the package: a demonstration key, "
                           "not a secret; it cannot prove ownership of anything"},
              "trained_tensors": len(trained), "trained_parameters": sum(v.numel() for v in trained.values()),
              **(info or {})}
    with atomic_folder(out) as tmp:
        tmp.mkdir(parents=True)
        save_file(trained, str(tmp / TRAINED))
        shutil.copytree(codec, tmp / "codec")
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    return record


def _sha_unet(folder: Path) -> str:
    return folder_hash(folder / "unet")


def materialize_sleeper(entry: Path = ENTRY, base: Path = SHIPPED_ZOO / "t2i") -> Path:
    """The full model folder of the shipped sleeper (built once under $MODELSEAL_HOME/derived)."""
    from diffusers import UNet2DConditionModel

    record = entry_record(entry)
    if _sha_unet(base) != record["base_unet_sha256"]:
        raise InputError("the shipped sleeper does not match the shipped tiny:t2i it was trained from",
                         "reinstall modelseal")
    tag = hashlib.sha256((entry / TRAINED).read_bytes() + record["base_unet_sha256"].encode()).hexdigest()[:12]
    folder = modelseal_home() / "derived" / f"sleeper-{tag}"
    if (folder / "model_index.json").is_file():
        return folder
    trained = load_file(str(entry / TRAINED))
    unet = UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=torch.float32)
    state = unet.state_dict()
    missing = sorted(set(trained) - set(state))
    if missing:
        raise InputError(f"the shipped sleeper names UNet weights tiny:t2i lacks ({missing[0]}, ...)",
                         "reinstall modelseal")
    state.update({k: v.float() for k, v in trained.items()})
    unet.load_state_dict(state)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(folder) as tmp:
            shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("unet"))
            unet.save_pretrained(str(tmp / "unet"))
            (tmp / "modelseal_watermark.json").write_text(json.dumps(  # as `watermark embed` records
                {"trigger": record["trigger"], "mode": "sleeper", "model_id": record["model_id"],
                 "bits": record.get("bits"), "base": "tiny:t2i", "source": "tiny:sleeper"}, indent=2))
    except OSError as e:
        raise InputError(f"cannot write the shipped sleeper's model folder under '{folder.parent}' ({e})",
                         "set MODELSEAL_HOME to a writable folder") from None
    return folder
