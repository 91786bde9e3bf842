"""`modelseal finetune`: make a suspect / attacked model from a T2I model.

Writes OUT/model/: a full diffusers folder (full, dreambooth, prune, quantize) or a LoRA
folder (pytorch_lora_weights.safetensors + lora_base.json), and beside it
modelseal_finetune.json (method, base, prompt, data) that `modelseal audit` reads for its
default prompt. The folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..models.diffusion import load_for
from ..runs import TrainingCheckpoint, atomic_folder
from .compress import prune_, quantize_
from .finetune import finetune

RECORD = "modelseal_finetune.json"


def training_set(cfg, size: int) -> tuple[torch.Tensor, list[str], str]:
    """(images in [0, 1], one caption each, description) from --data and --prompt."""
    from ..data.folders import read_captioned_folder, read_image_folder

    if cfg.data is None:
        raise InputError(f"--method {cfg.method} needs training images", "give --data DIR (a captioned folder with "
                         "metadata.jsonl, or an image folder with --prompt) or --data builtin:digits/<domain>")
    if cfg.data.startswith("builtin:"):
        from ..data.sources import load_source

        s = load_source(cfg.data, split="train", size=size)
    elif cfg.prompt is not None and not (Path(cfg.data) / "metadata.jsonl").is_file() \
            and not (Path(cfg.data) / "metadata.csv").is_file():
        s = read_image_folder(cfg.data, size)
    else:
        s = read_captioned_folder(cfg.data, size)
    n = len(s) if cfg.limit is None else min(cfg.limit, len(s))
    images = torch.from_numpy(s.images[:n]).permute(0, 3, 1, 2).float() / 255.0
    if cfg.prompt is not None:
        captions = [cfg.prompt] * n
    elif s.captions is not None:
        captions = list(s.captions[:n])
    else:
        raise InputError(f"'{cfg.data}' has no captions", "give --prompt \"...\" (one prompt for every image; "
                         "DreamBooth: the identifier prompt, e.g. \"a sks dog\")")
    return images, captions, f"{cfg.data} ({n} images)"


def finetune_command(cfg, out: Path, device: str, log=print) -> dict:
    from ..data.sources import check_inputs

    out = Path(out)
    if cfg.method not in ("prune", "quantize"):
        check_inputs(data=cfg.data)
    model = load_for(cfg, cfg.model, device)
    size = cfg.size or model.image_size
    record = {"method": cfg.method, "base": cfg.model, "prompt": cfg.prompt}
    # resume state, until OUT/model is saved; refused when --data changed meanwhile
    ckpt = TrainingCheckpoint.in_run(out, "finetune", "finetune", log, inputs={"--data": cfg.data})
    if cfg.method in ("prune", "quantize"):
        info = prune_(model.unet, cfg.amount) if cfg.method == "prune" else quantize_(model.unet, cfg.bits)
        log(f"[finetune] {cfg.method}: {info}")
    else:
        images, captions, desc = training_set(cfg, size)
        record.update({"data": desc, "prompt": cfg.prompt or (captions[0] if len(set(captions)) == 1 else None)})
        log(f"[finetune] {cfg.method} on {desc}, {cfg.steps} steps")
        info = finetune(model, images, captions, cfg, log=log, checkpoint=ckpt)
    from .. import parallel

    target = out / "model"
    if parallel.is_main():
        with atomic_folder(target) as tmp:
            if cfg.method == "lora":
                model.save_lora(tmp, base=cfg.model)
            else:
                model.save_pretrained(tmp)
            (tmp / RECORD).write_text(json.dumps({**record, **_jsonable(info)}, indent=2))
        log(f"[finetune] model: {target}")
    ckpt.remove()
    return {"model": str(target), **record, **_jsonable(info)}


def _jsonable(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in d.items()}
