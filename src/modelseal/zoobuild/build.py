"""`modelseal zoo build`: the stages in order into the work folder build/ of the zoo's run
folder (a finished stage is kept while the options it depends on are unchanged), then each
model published into the zoo folder in one rename, zoo.json (what marks a zoo as built) last.
Nothing is written outside the zoo folder."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..config import ZooConfig
from ..runs import ZOO_FILES, ZOO_WORK, atomic_folder, atomic_write_text, write_json
from ..runs.folder import MANIFEST_VERSION, TOOL, read_manifest
from .evaluate import _Log, evaluate_zoo
from .stages import train_clip, train_codec_stage, train_judge, train_unet, train_vae, unet_init_weights


def build_zoo(out: Path, cfg: ZooConfig | None = None, log=None, stages=("clip", "judge", "vae", "unet", "codec"),
              evaluate: bool = True, device: str = "cpu") -> dict:
    """Build the zoo into the folder `out` (the zoo build's run folder: RunFolder checked that
    nothing there but the build's own entries shares their names); resumable: stages already
    finished in out/build are kept."""
    cfg = cfg or ZooConfig()
    if cfg.unet_init and "unet" in stages:
        unet_init_weights(cfg.unet_init)  # refused before any stage trains
    log = _Log(log)
    out = Path(out)
    work = out / ZOO_WORK
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    state_file = work / "state.json"
    new_cfg = _jsonable(cfg.model_dump(include=set(ZooConfig.model_fields)))  # the recipe, not the run's options
    state = json.loads(state_file.read_text()) if state_file.exists() else {"config": new_cfg, "done": {}}
    # A finished stage is kept while the options it depends on are unchanged.
    for stage in list(state["done"]):
        keys = _stage_keys(stage, new_cfg)
        if any(state["config"].get(k) != new_cfg[k] for k in keys):
            log(f"[zoo] {stage}: options changed, rebuilding it")
            state["done"].pop(stage)
            if stage == "unet":
                (work / "unet_ckpt.pt").unlink(missing_ok=True)
    if "unet" not in state["done"] and any(state["config"].get(k) != new_cfg[k] for k in _stage_keys("unet", new_cfg)):
        (work / "unet_ckpt.pt").unlink(missing_ok=True)  # a checkpoint from other options must not resume
    state["config"] = new_cfg
    t0 = time.time()
    for stage in stages:
        if stage in state["done"]:
            log(f"[zoo] {stage}: already built, kept")
            continue
        fn = {"clip": train_clip, "judge": train_judge, "vae": train_vae, "codec": train_codec_stage}.get(stage)
        info = fn(cfg, work, log, device) if fn else train_unet(cfg, work, work, log, device)
        state["done"][stage] = info
        state_file.write_text(json.dumps(state, indent=2))
    info = {"config": state["config"], "stages": state["done"],
            "build_s": round(sum(v.get(f"{k}_train_s", 0) for k, v in state["done"].items()), 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
    (work / "zoo.json").write_text(json.dumps(info, indent=2))
    if evaluate:
        res = evaluate_zoo(work, per_prompt=cfg.eval_per_prompt, steps=cfg.eval_steps, guidance=cfg.guidance, log=log,
                           device=device)
        info["eval"] = {k: v for k, v in res.items() if not k.startswith("_")}
        (work / "zoo.json").write_text(json.dumps(info, indent=2))
    # Publish: zoo.json (what makes the folder a zoo, models/zoo.py) goes first and comes back
    # last, each model folder replaced in one rename meanwhile; only the build's own entries.
    (out / "zoo.json").unlink(missing_ok=True)
    for name in ZOO_FILES:
        src = work / name
        if name != "zoo.json" and src.is_dir():
            with atomic_folder(out / name) as tmp:
                shutil.copytree(src, tmp)
    atomic_write_text(out / "zoo.json", (work / "zoo.json").read_text())
    log(f"[zoo] built into {out} in {time.time() - t0:.0f}s (this run)")
    return info


def adopt_legacy_zoo(folder: Path) -> bool:
    """A zoo built before the zoo was a run folder (clip/, judge/, t2i/, codec/ and zoo.json,
    nothing else, and no manifest): modelseal wrote it, so it gets the manifest that says so
    and a rebuild goes on there. Anything else is left alone (and RunFolder judges it)."""
    folder = Path(folder)
    if not folder.is_dir() or read_manifest(folder) is not None:
        return False
    names = {e.name for e in folder.iterdir()}
    try:
        record = json.loads((folder / "zoo.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not names or not names <= set(ZOO_FILES) or not isinstance(record, dict) or not {"config", "stages"} <= \
            record.keys():
        return False
    write_json(folder / "manifest.json", {"tool": TOOL, "manifest_version": MANIFEST_VERSION, "command": "zoo build",
                                          "status": "done", "files": sorted(names | {"manifest.json"})})
    return True


def _stage_keys(stage: str, cfg: dict) -> list[str]:
    """Options a stage's result depends on (the UNet depends on the CLIP and VAE too)."""
    common = ["seed", "image_size", "save_dtype"]
    own = {"clip": "clip_", "judge": "judge_", "vae": "vae_"}
    if stage in own:
        return common + [k for k in cfg if k.startswith(own[stage])]
    if stage == "codec":
        return common + [k for k in cfg if k.startswith(("vae_", "codec_"))] + ["t2i_image_size"]
    return common + [k for k in cfg if k.startswith(("clip_", "vae_", "unet_"))] + ["ema_decay", "cfg_dropout",
                                                                                   "t2i_image_size"]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=list))
