"""Lock checkpoints: only the learned weights (safetensors) plus a JSON card that names the
backbone they belong to (its id and a content hash of its weights)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.folders import read_json_file
from ..errors import InputError
from ..models.weights import read_safetensors
from ..runs import atomic_path, write_json

WEIGHTS = "lock.safetensors"
CARD = "lock.json"


def backbone_hash(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes and bytes of every parameter and buffer, in name order."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_lock(folder: str | Path, state: dict[str, torch.Tensor], card: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    write_json(folder / CARD, card)
    return folder


def read_card(folder: str | Path) -> dict:
    folder = Path(folder)
    card = folder / CARD
    if not card.is_file() or not (folder / WEIGHTS).is_file():
        raise InputError(f"'{folder}' is not a lock checkpoint (needs {CARD} and {WEIGHTS})",
                         "give the checkpoint/ folder written by `modelseal lock train`")
    data = read_json_file(card, "lock card", "restore the checkpoint from its run folder")
    if not isinstance(data, dict) or not isinstance(data.get("backbone"), dict) or "sha256" not in data["backbone"]:
        raise InputError(f"{card} is not a lock card (no backbone hash)", "restore the checkpoint from its run folder")
    return data


def load_lock_state(folder: str | Path, backbone: torch.nn.Module, card: dict | None = None) -> dict[str, torch.Tensor]:
    """Learned weights, after checking they were trained on this very backbone."""
    card = card or read_card(folder)
    got = backbone_hash(backbone)
    want = card["backbone"]["sha256"]
    if got != want:
        raise InputError(f"checkpoint '{folder}' was trained on backbone {card['backbone']['source']} "
                         f"(sha256 {want[:12]}), not on this one (sha256 {got[:12]})",
                         "pass --model with the backbone the checkpoint names")
    return read_weights(Path(folder) / WEIGHTS)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or one clear error when it is corrupt or truncated."""
    return read_safetensors(path, "the lock weights", "restore it, or rerun `modelseal lock train`")
