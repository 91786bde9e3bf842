"""The tiny zoo: where its models live and how names like 'tiny:clip' resolve.

The zoo built by `modelseal zoo build` ships inside the package (zoo_weights/). A zoo
rebuilt or built by the user in $MODELSEAL_HOME/zoo (default ~/.cache/modelseal/zoo) wins
over the shipped one. Each model is a folder in its library's own layout:
  clip/   transformers CLIPModel + CLIPTokenizer + CLIPImageProcessor
  t2i/    diffusers Stable Diffusion layout (unet, vae, text_encoder, tokenizer, scheduler)
  judge/  the independent digit classifier used to score T2I samples
  codec/  the SleeperMark stage-1 watermark codec for t2i's VAE latents (config.json + safetensors)
and zoo.json records how it was built (config, seed, steps, times, metrics).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from .zoo_files import SHIPPED_ZOO, damaged, folder_hash, folder_size, modelseal_home

TINY_MODELS = ("clip", "t2i", "judge", "codec")
# Shipped beside the zoo (models/sleeper_entry.py): SleeperMark in the shipped tiny:t2i and its
# adapted extractor; name -> the kind of model it is.
TINY_EXTRAS = {"sleeper": "t2i", "sleeper-codec": "codec"}


def user_zoo() -> Path:
    return modelseal_home() / "zoo"


def zoo_dir() -> tuple[Path, str]:
    """The zoo in use and its origin: ('rebuilt' in $MODELSEAL_HOME) or 'shipped'."""
    user = user_zoo()
    if (user / "zoo.json").exists():
        return user, "rebuilt"
    if (SHIPPED_ZOO / "zoo.json").exists():
        return SHIPPED_ZOO, "shipped"
    raise InputError("no tiny zoo found (neither shipped nor in $MODELSEAL_HOME/zoo)",
                     "run `modelseal zoo build` or reinstall modelseal")


def _damaged_zoo(folder: Path, origin: str, what: str) -> InputError:
    if origin == "rebuilt":
        return InputError(f"the rebuilt tiny zoo in {folder} is damaged ({what})",
                          f"rebuild it with `modelseal zoo build`, or delete {folder} to use the shipped zoo")
    return InputError(f"the shipped tiny zoo in {folder} is damaged ({what})", "reinstall modelseal")


def zoo_model_folder(which: str) -> Path:
    """The folder of the zoo's model `which` (clip, t2i, judge, codec), checked before any
    library opens it: a damaged one is one InputError naming it."""
    folder, origin = zoo_dir()
    problem = damaged(folder / which)
    if problem is not None:
        raise _damaged_zoo(folder, origin, f"{which}/: {problem}")
    return folder / which


def zoo_info() -> dict:
    folder, origin = zoo_dir()
    try:
        info = json.loads((folder / "zoo.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise _damaged_zoo(folder, origin, "zoo.json is not valid JSON") from None
    if not isinstance(info, dict):
        raise _damaged_zoo(folder, origin, "zoo.json does not hold the build's record")
    info["folder"] = str(folder)
    info["origin"] = origin
    return info


def resolve_model(name: str, kind: str) -> str:
    """'tiny:<kind>' -> local folder of the zoo in use; anything else is passed through
    (a local folder, or a hub id for from_pretrained)."""
    if name.startswith("tiny:"):
        which = name.split(":", 1)[1]
        if which not in TINY_MODELS and which not in TINY_EXTRAS:
            raise InputError(f"unknown tiny model '{name}'",
                             f"use one of: {', '.join('tiny:' + m for m in (*TINY_MODELS, *TINY_EXTRAS))}")
        if TINY_EXTRAS.get(which, which) != kind:
            raise InputError(f"'{name}' is not a {kind} model",
                             "use " + " or ".join(f"tiny:{m}" for m in (*TINY_MODELS, *TINY_EXTRAS)
                                                  if TINY_EXTRAS.get(m, m) == kind))
        if which == "sleeper":
            from .sleeper_entry import materialize_sleeper

            return str(materialize_sleeper())
        if which == "sleeper-codec":
            from .sleeper_entry import ENTRY, entry_record

            entry_record()
            return str(ENTRY / "codec")
        return str(zoo_model_folder(which))
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"model path '{name}' is a file", f"give the model's folder ({LAYOUTS.get(kind, '')})")
        refuse_pickle_weights(p, kind)
        return str(p)
    # 'runs/wm' where runs/ is a local folder is a missing folder, not a hub id (a hub look-up
    # would retry over the network before failing)
    local_parent = name.count("/") == 1 and Path(name).parent.is_dir()
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or local_parent:
        raise InputError(f"model folder '{name}' does not exist",
                         f"check the path, or give a hub id such as {HUB_EXAMPLES.get(kind, 'org/name')}")
    return name


LAYOUTS = {"clip": "config.json, model.safetensors, tokenizer files",
           "t2i": "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"}
HUB_EXAMPLES = {"clip": "openai/clip-vit-base-patch16", "t2i": "runwayml/stable-diffusion-v1-5"}
_WEIGHT_DIRS = {"clip": ("",), "features": ("",), "t2i": ("unet", "vae", "text_encoder")}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_weights(folder: Path, kind: str) -> None:
    """A model folder whose weights exist only as pickle files (pytorch_model.bin, ...) is
    refused before anything opens them: unpickling runs code from whoever wrote the file."""
    for sub in _WEIGHT_DIRS.get(kind, ("",)):
        d = folder / sub if sub else folder
        if not d.is_dir():
            continue
        files = [f for f in d.iterdir() if f.is_file()]
        if any(f.suffix == ".safetensors" for f in files):
            continue
        pickles = sorted(f.name for f in files if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InputError(f"'{d}' holds its weights only as pickle ({', '.join(pickles[:2])}), which modelseal "
                             "never opens (unpickling can run code)",
                             "convert them to safetensors where you trust the file, e.g. load it and "
                             "save_pretrained(..., safe_serialization=True), then give that folder")


def zoo_table() -> list[dict]:
    """One row per tiny model: name, origin, size, parameter count, content hash."""
    from safetensors import safe_open

    folder, origin = zoo_dir()
    rows = []
    for name in TINY_MODELS:
        sub = folder / name
        if not sub.exists():
            continue
        zoo_model_folder(name)
        params = 0
        for f in sub.rglob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    shape = st.get_slice(k).get_shape()
                    n = 1
                    for d in shape:
                        n *= d
                    params += n
        rows.append({"model": f"tiny:{name}", "origin": origin, "size_mb": folder_size(sub) / 2**20,
                     "params_m": params / 1e6, "sha256": folder_hash(sub), "folder": str(sub)})
    entry = SHIPPED_ZOO / "sleeper"
    if (entry / "config.json").is_file():  # the shipped sleeper: stage 2's weights over tiny:t2i
        trained = json.loads((entry / "config.json").read_text()).get("trained_parameters", 0)
        rows.append({"model": "tiny:sleeper", "origin": "shipped (+ codec)",
                     "size_mb": folder_size(entry) / 2**20, "params_m": trained / 1e6,
                     "sha256": folder_hash(entry), "folder": str(entry)})
    return rows


def hub_access(path: str, marker: str, local_files_only: bool) -> bool:
    """The local_files_only to load `path` with. A local folder: unchanged. A hub id that is
    in the local cache: loaded from it without the network when the hub cannot be reached. A
    hub id that is neither cached nor reachable: one InputError at once, instead of minutes
    of retries and a message about a missing config.json."""
    if Path(path).exists():
        return local_files_only
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(path, marker), str)
    except Exception:  # a malformed id: let from_pretrained say so
        return local_files_only
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        reachable = False
    else:
        reachable = hub_reachable()
    if cached:
        return local_files_only or not reachable
    if not reachable:
        raise InputError(f"'{path}' is not in the local Hugging Face cache and the hub cannot be reached "
                         f"(offline{' by --local-files-only' if local_files_only else ''})",
                         "download it where there is network (`huggingface-cli download " + path + "`) and copy "
                         "the cache, or give a local folder")
    return local_files_only


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection (no request is sent)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False
