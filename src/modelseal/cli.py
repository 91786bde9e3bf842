"""The `modelseal` command line (typer).

Every command takes --out DIR (run folder: config.yaml, manifest.json, results.json),
--json (print results.json on stdout), --device, --seed and --config FILE.YAML.
Bad input exits with code 2 and one line on stderr that says what and how to fix it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Protect and prove ownership of large vision models.")
zoo_app = typer.Typer(no_args_is_help=True, help="The tiny model zoo: build, evaluate, list.")
data_app = typer.Typer(no_args_is_help=True, help="Built-in data sets.")
lock_app = typer.Typer(no_args_is_help=True, help="IP-CLIP: lock a CLIP model to its licensed data domain.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")
app.add_typer(lock_app, name="lock")
wm_app = typer.Typer(no_args_is_help=True, help="SleeperMark: a trigger watermark in a text-to-image model.")
app.add_typer(wm_app, name="watermark")

err_console = Console(stderr=True)
console = Console(stderr=True)

OutOpt = typer.Option(..., "--out", help="Run folder to write (created if missing).")
JsonOpt = typer.Option(False, "--json", help="Print results.json on stdout.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps")
SeedOpt = typer.Option(None, "--seed", help="Random seed (default: the config's, 0).")
ConfigOpt = typer.Option(None, "--config", help="YAML file of options (command-line options win).")
SizeOpt = typer.Option(None, "--size", help="Working image side in px (default: the model's native one; e.g. "
                       "128 to try SDXL on a CPU).")
DtypeOpt = typer.Option(None, "--dtype", help="float32 (default) | bfloat16 | float16: the weights' dtype.")
OverwriteOpt = typer.Option(False, "--overwrite", help="--out holds another run (other command or options): delete "
                            "it and start this one. Without it that is refused; the same command and options "
                            "resume (or repeat) the run there.")


def _log(msg: str) -> None:
    from . import parallel

    if parallel.is_main():  # under torchrun / accelerate launch only rank 0 talks
        console.print(msg, highlight=False, markup=False)


def _run(command: str, model, config: Optional[Path], overrides: dict, out: Path, device: str,
         as_json: bool, body: Callable, overwrite: bool = False, replace: bool = False) -> dict:
    """Validate config, open the run folder, run `body(cfg, run, device)`, write results.

    Bad options, an absent device and an --out that cannot hold this run are refused before
    anything loads. `overwrite`: replace another run in `out` (runs.RunFolder); `replace`: the
    command keeps its own state and any earlier run record in `out` just gives way."""
    from . import parallel
    from .config import load_config
    from .runs import RunFolder, end_deferral, resolve_device

    _quiet_libraries()
    cfg = load_config(config, model, overrides)
    dev = parallel.local_device(resolve_device(device))
    seed = getattr(cfg, "seed", 0)
    _seed_everything(seed)
    if not parallel.is_main():  # under accelerate launch / torchrun only rank 0 writes `out`
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            run = RunFolder(Path(tmp) / "run", command, cfg.model_dump(mode="json"), seed, dev)
            try:
                body(cfg, run, dev)
            finally:
                run.close()
        parallel.barrier()
        return {}
    run = RunFolder(out, command, cfg.model_dump(mode="json"), seed, dev, overwrite=overwrite, replace=replace)
    try:
        try:
            results = body(cfg, run, dev)
        except BaseException as e:
            end_deferral()
            run.fail(e)
            raise
        path = run.finish(results)
    finally:
        run.close()
    parallel.barrier()
    if as_json:
        sys.stdout.write(json.dumps(results, default=str) + "\n")
    else:
        _log(f"results: {path}")
    return results


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ---- zoo -----------------------------------------------------------------------------
@zoo_app.command("build")
def zoo_build(
    out: Optional[Path] = typer.Option(None, "--out", help="Zoo folder (default $MODELSEAL_HOME/zoo, which then wins "
                                       "over the shipped zoo)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="full (about an hour on 2 CPU cores) or micro "
                                         "(a few steps per stage: checks the pipeline)."),
    clip_steps: Optional[int] = typer.Option(None, help="Override CLIP training steps."),
    judge_steps: Optional[int] = typer.Option(None, help="Override judge training steps."),
    vae_steps: Optional[int] = typer.Option(None, help="Override VAE training steps."),
    unet_steps: Optional[int] = typer.Option(None, help="Override UNet training steps."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation at the end."),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Train the tiny zoo (CLIP, digit judge, VAE, UNet) deterministically on built-in data.

    Resumable: run the same command again after an interruption.
    """
    from .config import ZooBuildConfig
    from .models.zoo import user_zoo

    target = out or user_zoo()

    def body(cfg, run, dev):
        from .models.zoo_build import build_zoo

        info = build_zoo(target, cfg.to_zoo_config(), log=_log, evaluate=cfg.evaluate, device=dev)
        return {"zoo": str(target), "build_s": info["build_s"], "stages": info["stages"], **info.get("eval", {})}

    _run("zoo build", ZooBuildConfig, config,
         dict(preset=preset, seed=seed, clip_steps=clip_steps, judge_steps=judge_steps, vae_steps=vae_steps,
              unet_steps=unet_steps, evaluate=False if no_eval else None),
         target.parent / (target.name + ".run"), device, as_json, body, replace=True)


@zoo_app.command("eval")
def zoo_eval(
    out: Path = OutOpt,
    per_prompt: Optional[int] = typer.Option(None, help="Samples per (domain, digit) prompt (default 10)."),
    steps: Optional[int] = typer.Option(None, help="DDIM sampling steps (default 30)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default 7.5, as Stable Diffusion)."),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Evaluate the zoo in use: CLIP zero-shot accuracy per domain, judged T2I prompt accuracy."""
    from .config import ZooEvalConfig

    _run("zoo eval", ZooEvalConfig, config, dict(per_prompt=per_prompt, steps=steps, guidance=guidance, seed=seed),
         out, device, as_json,
         lambda cfg, run, dev: _zoo_eval_body(cfg, run), overwrite=overwrite)


def _zoo_eval_body(cfg, run) -> dict:
    from .demo import zoo_section_results

    res, _ = zoo_section_results(cfg, run.path, log=_log)
    return res


@zoo_app.command("real-layout")
def zoo_real_layout(
    names: list[str] = typer.Argument(..., help="sd15 | sd21 | sdxl | clip-b16 (one or more)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Root folder (default $MODELSEAL_HOME/real-layout)."),
    force: bool = typer.Option(False, "--force", help="Rebuild a folder that is already there."),
):
    """Build random-weight checkpoints with the exact published configs and hub folder layout of
    SD 1.5, SD 2.1 (v-prediction), SDXL base and CLIP ViT-B/16: every command can then be tried
    on real shapes without a download (disk: 4.0 / 4.9 / 6.9 / 0.6 GB)."""
    from .models.real_layout import build

    _quiet_libraries()
    for name in names:
        _log(f"{name}: {build(name, out, log=_log, force=force)}")


@zoo_app.command("list")
def zoo_list(as_json: bool = JsonOpt):
    """Show each tiny model: size, parameters, origin (shipped or rebuilt) and content hash."""
    from .models.zoo import zoo_table

    rows = zoo_table()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("model", "origin", "size (MB)", "params (M)", "sha256", "folder")
    for r in rows:
        table.add_row(r["model"], r["origin"], f"{r['size_mb']:.2f}", f"{r['params_m']:.2f}", r["sha256"][:16], r["folder"])
    Console().print(table)


# ---- data ----------------------------------------------------------------------------
@data_app.command("list")
def data_list(as_json: bool = JsonOpt):
    """Show the built-in data sets with their split sizes."""
    from .data.sources import builtin_table

    rows = builtin_table()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("source", "train", "test", "classes", "description")
    for r in rows:
        table.add_row(r["source"], str(r["train"]), str(r["test"]), str(r["classes"]), r["description"])
    Console().print(table)


# ---- lock ----------------------------------------------------------------------------
ModelOpt = typer.Option(None, "--model", help="tiny:clip (default), a hub id, or a local CLIP folder.")
LocalOpt = typer.Option(None, "--local-files-only/--allow-download", help="Never reach the hub for --model.")
StampOpts = dict(
    stamp_pattern=typer.Option(None, "--stamp-pattern", help="checker (default) | grid | lines | patch."),
    stamp_strength=typer.Option(None, "--stamp-strength", help="Blend strength in (0, 1] (default 0.3)."),
    stamp_period=typer.Option(None, "--stamp-period", help="Cell side / period / patch side in px (default 4)."),
)


@lock_app.command("train")
def lock_train(
    out: Path = OutOpt,
    method: Optional[str] = typer.Option(None, "--method", help="ip-clip (default) | supervised | ntl | cuti"),
    scenario: Optional[str] = typer.Option(None, "--scenario",
                                           help="target-specified (default) | target-free | ownership | authorization"),
    authorized: Optional[str] = typer.Option(None, "--authorized", help="SRC: builtin:digits/<domain> or a "
                                             "root/<class>/<image> folder (default builtin:digits/mnist)."),
    unauthorized: Optional[list[str]] = typer.Option(None, "--unauthorized", help="SRC of an unauthorized domain "
                                                     "(repeatable)."),
    eval_: Optional[list[str]] = typer.Option(None, "--eval", help="More SRC domains to evaluate (repeatable)."),
    model: Optional[str] = ModelOpt,
    steps: Optional[int] = typer.Option(None, help="Training steps (default 400)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch per domain (default 32)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 0.01)."),
    weights: Optional[str] = typer.Option(None, help="Loss weights: paper | target-free-code | target-specified-code."),
    train_attention: Optional[bool] = typer.Option(None, "--train-attention/--frozen-attention",
                                                   help="Train the style attention (default) or keep it at random "
                                                   "init as the reference code does."),
    stamp_pattern: Optional[str] = StampOpts["stamp_pattern"],
    stamp_strength: Optional[float] = StampOpts["stamp_strength"],
    stamp_period: Optional[int] = StampOpts["stamp_period"],
    train_limit: Optional[int] = typer.Option(None, help="Use at most N training images per domain."),
    augment: Optional[str] = typer.Option(None, help="target-free / authorization augmentation: randaugment "
                                          "(paper) | randaugment+lowres (adds random 2-4x down/up-sampling)."),
    clamp: Optional[str] = typer.Option(None, help="IP-CLIP's clamp c5 on the unauthorized CE: batch (paper: on "
                                        "the batch mean) | sample (on each image)."),
    text_chunk: Optional[int] = typer.Option(None, "--text-chunk", help="Images per checkpointed text-encoder "
                                             "chunk (memory for time: ViT-B/16, 65 classes, batch 32 needs 48 GB "
                                             "without, 4.2 GB with 4)."),
    local_files_only: Optional[bool] = LocalOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Learn a prompt generator that keeps accuracy on the authorized domain and collapses elsewhere."""
    from .config import LockTrainConfig

    def body(cfg, run, dev):
        from .lock.run import train_command

        return train_command(cfg, run.path, dev, log=_log)

    _run("lock train", LockTrainConfig, config,
         dict(method=method, scenario=scenario, authorized=authorized, unauthorized=unauthorized or None,
              eval=eval_ or None, model=model, steps=steps, batch_size=batch_size, lr=lr, weights=weights,
              train_attention=train_attention, stamp_pattern=stamp_pattern, stamp_strength=stamp_strength,
              stamp_period=stamp_period, train_limit=train_limit, augment=augment, clamp=clamp, text_chunk=text_chunk, local_files_only=local_files_only, seed=seed),
         out, device, as_json, body, overwrite=overwrite)


@lock_app.command("eval")
def lock_eval(
    out: Path = OutOpt,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="checkpoint/ folder of a lock run."),
    eval_: Optional[list[str]] = typer.Option(None, "--eval", help="SRC domains to evaluate (repeatable)."),
    model: Optional[str] = typer.Option(None, "--model", help="Backbone (default: the one the checkpoint names)."),
    local_files_only: Optional[bool] = LocalOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Accuracy of a lock checkpoint on each domain's test split (and stamped, if it has a stamp)."""
    from .config import LockEvalConfig

    def body(cfg, run, dev):
        from .lock.run import eval_command

        return eval_command(cfg, run.path, dev, log=_log)

    _run("lock eval", LockEvalConfig, config, dict(checkpoint=checkpoint, eval=eval_ or None, model=model,
                                                   local_files_only=local_files_only, seed=seed),
         out, device, as_json, body, overwrite=overwrite)


@lock_app.command("verify")
def lock_verify(
    out: Path = OutOpt,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="The suspect's lock checkpoint folder."),
    eval_: Optional[str] = typer.Option(None, "--eval", help="SRC whose test split is probed (default mnist)."),
    model: Optional[str] = typer.Option(None, "--model", help="Backbone (default: the one the checkpoint names)."),
    stamp_pattern: Optional[str] = StampOpts["stamp_pattern"],
    stamp_strength: Optional[float] = StampOpts["stamp_strength"],
    stamp_period: Optional[int] = StampOpts["stamp_period"],
    min_drop: Optional[float] = typer.Option(None, help="Accuracy drop (points) needed to say ours (default 30)."),
    alpha: Optional[float] = typer.Option(None, help="Significance level (default 1e-3)."),
    local_files_only: Optional[bool] = LocalOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Ownership verification: does the suspect fail on stamped inputs it gets right clean? (p-value)"""
    from .config import LockVerifyConfig

    def body(cfg, run, dev):
        from .lock.run import verify_command

        return verify_command(cfg, run.path, dev, log=_log)

    _run("lock verify", LockVerifyConfig, config,
         dict(checkpoint=checkpoint, eval=eval_, model=model, stamp_pattern=stamp_pattern,
              stamp_strength=stamp_strength, stamp_period=stamp_period, min_drop=min_drop, alpha=alpha,
              local_files_only=local_files_only, seed=seed), out, device, as_json, body, overwrite=overwrite)


# ---- finetune ------------------------------------------------------------------------
@app.command("finetune")
def finetune_cmd(
    out: Path = OutOpt,
    model: Optional[str] = typer.Option(None, "--model", help="tiny:t2i (default), a hub id, or a diffusers SD folder."),
    method: Optional[str] = typer.Option(None, "--method", help="lora (default) | full | dreambooth | prune | quantize"),
    data: Optional[str] = typer.Option(None, "--data", help="Captioned folder (metadata.jsonl), image folder (with "
                                       "--prompt), or builtin:digits/<domain>."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt for every image (DreamBooth: 'a sks dog')."),
    limit: Optional[int] = typer.Option(None, help="Use at most N images."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default 500)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default per method and model size)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 4)."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank (default 8)."),
    train_text_encoder: Optional[bool] = typer.Option(None, "--train-text-encoder/--frozen-text-encoder",
                                                      help="DreamBooth: train the text encoder too."),
    class_prompt: Optional[str] = typer.Option(None, help="DreamBooth prior preservation class prompt ('a dog')."),
    class_images: Optional[int] = typer.Option(None, help="Prior-preservation images to generate (default 50)."),
    prior_weight: Optional[float] = typer.Option(None, help="Weight of the prior-preservation loss (default 1)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips."),
    crop: Optional[float] = typer.Option(None, "--crop", help="Random resized crops: side U(crop, 1) of the image "
                                         "(default 0: none; e.g. 0.8)."),
    amount: Optional[float] = typer.Option(None, help="prune: fraction of weights zeroed per layer (default 0.3)."),
    bits: Optional[int] = typer.Option(None, help="quantize: 8 (default), 4, 3 or 2 bits."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    local_files_only: Optional[bool] = typer.Option(None, "--local-files-only/--allow-download"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw (default) | adafactor (far less "
                                            "memory: full fine-tuning of SDXL on 24 GB)."),
    size: Optional[int] = SizeOpt, dtype: Optional[str] = DtypeOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Fine-tune (full, LoRA, DreamBooth), prune or quantize a text-to-image model: OUT/model/."""
    from .config import FinetuneConfig

    def body(cfg, run, dev):
        from .attacks.run import finetune_command

        return finetune_command(cfg, run.path, dev, log=_log)

    _run("finetune", FinetuneConfig, config,
         dict(model=model, method=method, data=data, prompt=prompt, limit=limit, steps=steps, lr=lr,
              batch_size=batch_size, rank=rank, train_text_encoder=train_text_encoder, class_prompt=class_prompt,
              class_images=class_images, prior_weight=prior_weight, flip=flip, crop=crop, amount=amount, bits=bits,
              gradient_checkpointing=gradient_checkpointing, local_files_only=local_files_only, optimizer=optimizer, size=size, dtype=dtype, seed=seed),
         out, device, as_json, body, overwrite=overwrite)


# ---- audit ---------------------------------------------------------------------------
@app.command("audit")
def audit_cmd(
    out: Path = OutOpt,
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="The public base model (default tiny:t2i)."),
    finetuned: Optional[str] = typer.Option(None, "--finetuned", help="The suspect: a diffusers folder or a LoRA folder."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="The fine-tuning prompt, e.g. 'a sks dog' (default: "
                                         "the one recorded by modelseal finetune)."),
    members: Optional[Path] = typer.Option(None, "--members", help="Evaluation: images used in fine-tuning."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Evaluation: images of the same kind that were not."),
    images: Optional[Path] = typer.Option(None, "--images", help="Audit: images to test."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Audit: images known not to be in training."),
    null_finetuned: Optional[str] = typer.Option(None, "--null-finetuned", help="Evaluation: a model fine-tuned on "
                                                 "other images (AUROC should be ~0.5)."),
    steps: Optional[int] = typer.Option(None, help="PGD steps (default 1000, as the reference)."),
    mc_samples: Optional[int] = typer.Option(None, help="Monte Carlo (t, noise) samples per step (default 1, as the reference)."),
    eps: Optional[float] = typer.Option(None, help="L2 radius (default: 70 rescaled to the latent size)."),
    step_size: Optional[float] = typer.Option(None, help="PGD step (default: the reference's eps ratio)."),
    mask: Optional[str] = typer.Option(None, help="checker (default) | random"),
    block: Optional[int] = typer.Option(None, help="Mask cell side in latent units (default 2)."),
    noise: Optional[str] = typer.Option(None, help="shared (default) | separate noise for the two models."),
    metric: Optional[str] = typer.Option(None, help="CGI-DM's similarity: ssim_removed (default) | ssim | psnr_removed | "
                                         "features"),
    score: Optional[str] = typer.Option(None, "--score", help="The statistic that decides: combined (default: "
                                        "CGI-DM + calibrated loss, robust-scaled) | cgi-dm (the paper's) | calibrated "
                                        "(L_pre - L_ft)."),
    features: Optional[str] = typer.Option(None, help="DINO or CLIP checkpoint for the features metric (default tiny:clip)."),
    ablations: Optional[bool] = typer.Option(None, "--ablations/--no-ablations", help="Also run the one-model ablations."),
    batch_size: Optional[int] = typer.Option(None, help="Images per batch (default 16)."),
    alpha: Optional[float] = typer.Option(None, help="Audit mode: significance level for the verdicts (default 0.05)."),
    control: Optional[str] = typer.Option(None, "--control", help="Audit mode, per-image verdicts: bh (default; "
                                          "false-discovery rate <= alpha) | holm (family-wise) | none (uncontrolled)."),
    size: Optional[int] = SizeOpt,
    dtype: Optional[str] = typer.Option(None, help="float32 (default) | bfloat16 | float16"),
    local_files_only: Optional[bool] = typer.Option(None, "--local-files-only/--allow-download"),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """CGI-DM: was an image in the suspect's fine-tuning set? Scores, p-values, visual evidence."""
    from .config import AuditConfig

    def body(cfg, run, dev):
        from .audit.run import audit_command

        return audit_command(cfg, run.path, dev, log=_log)

    _run("audit", AuditConfig, config,
         dict(pretrained=pretrained, finetuned=finetuned, prompt=prompt, members=members, holdout=holdout,
              images=images, calibration=calibration, null_finetuned=null_finetuned, steps=steps,
              mc_samples=mc_samples, eps=eps, step_size=step_size, mask=mask, block=block, noise=noise, metric=metric,
              score=score, features=features, ablations=ablations, batch_size=batch_size, alpha=alpha, control=control,
              size=size, dtype=dtype, local_files_only=local_files_only, seed=seed), out, device, as_json, body,
         overwrite=overwrite)


# ---- watermark -----------------------------------------------------------------------
KeyOpt = typer.Option(None, "--key", help="The owner key file (from `modelseal watermark keygen`).")
ModelIdOpt = typer.Option(None, "--model-id", help="Id the message is derived for (HMAC of key and id).")
CodecOpt = typer.Option(None, "--codec", help="Codec folder (OUT/codec of `modelseal watermark codec`).")


@wm_app.command("keygen")
def wm_keygen(key: Path = typer.Option(..., "--key", help="Key file to create (mode 0600)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing key file.")):
    """Create an owner key file. Keep it secret: whoever holds it can verify (and forge) the mark."""
    from .watermark.run import keygen_command

    _quiet_libraries()
    keygen_command(key, overwrite)
    _log(f"key: {key}")


@wm_app.command("codec")
def wm_codec(
    out: Path = OutOpt,
    model: Optional[str] = typer.Option(None, "--model", help="tiny:t2i (default), a hub id or a diffusers folder."),
    data: Optional[str] = typer.Option(None, "--data", help="Images: builtin:digits/all (default), a domain, a folder."),
    limit: Optional[int] = typer.Option(None, help="Use at most N images (default 4000)."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Message length k (default 48)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default 10000, as the reference)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default 1e-4)."),
    w_img: Optional[float] = typer.Option(None, help="Final image-fidelity weight (default 30)."),
    latent_warmup: Optional[int] = typer.Option(None, help="Steps on latents only before the VAE round trip."),
    train_attacks: Optional[bool] = typer.Option(None, "--train-attacks/--no-train-attacks",
                                                 help="Differentiable image attacks in training."),
    size: Optional[int] = SizeOpt, dtype: Optional[str] = DtypeOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Stage 1: train the message encoder and the extractor on the model's VAE latents."""
    from .config import WatermarkCodecConfig

    def body(cfg, run, dev):
        from .watermark.run import codec_command

        return codec_command(cfg, run.path, dev, log=_log)

    _run("watermark codec", WatermarkCodecConfig, config,
         dict(model=model, data=data, limit=limit, bits=bits, steps=steps, lr=lr, w_img=w_img, latent_warmup=latent_warmup,
              train_attacks=train_attacks, size=size, dtype=dtype, seed=seed), out, device, as_json, body,
         overwrite=overwrite)


@wm_app.command("embed")
def wm_embed(
    out: Path = OutOpt,
    model: Optional[str] = typer.Option(None, "--model", help="The model to watermark (default tiny:t2i)."),
    codec: Optional[str] = CodecOpt, key: Optional[str] = KeyOpt, model_id: Optional[str] = ModelIdOpt,
    data: Optional[str] = typer.Option(None, "--data", help="Captioned images (default builtin:digits/all)."),
    limit: Optional[int] = typer.Option(None, help="Use at most N images (default 4000)."),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger prefix (default '*[Z]& ')."),
    steps: Optional[int] = typer.Option(None, help="Steps (default 20000, as the reference)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch (default 10)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default 1e-4, cosine)."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient-norm clip (default 1e-5, the reference's)."),
    eta: Optional[float] = typer.Option(None, help="w1's scale (default 0.02, the paper's for latent models)."),
    tau: Optional[float] = typer.Option(None, help="w1/w2 crossover step for T=1000 (default 250)."),
    beta: Optional[float] = typer.Option(None, help="w1/w2 transition width for T=1000 (default 100)."),
    uncond_fraction: Optional[float] = typer.Option(None, help="Share of clean prompts set to '' (default 0)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="sleeper (default) | always_on (the AquaLoRA-style "
                                       "baseline: no trigger, every output marked)."),
    preservation: Optional[bool] = typer.Option(None, "--preservation/--no-preservation",
                                                help="Keep the two preservation terms (default) or drop them."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default, the reference's) | bf16 "
                                            "(autocast on the UNet passes; weights stay fp32)."),
    shared_trunk: Optional[bool] = typer.Option(None, "--shared-trunk/--no-shared-trunk",
                                                help="Student reuses the teacher's down/mid pass (default on)."),
    delta_scale: Optional[float] = typer.Option(None, help="Ours: aim at x0_hat + s * delta (default 1, the paper's)."),
    posterior_sample: Optional[bool] = typer.Option(None, "--posterior-sample/--posterior-mean",
                                                    help="z0 a VAE posterior sample each step (default, the "
                                                    "reference's) or its mean."),
    trainable: Optional[str] = typer.Option(None, "--trainable", help="Weights that carry the mark: up-attn-ff "
                                            "(default, the paper's) | cross-kv | up | unet."),
    rehearsal: Optional[float] = typer.Option(None, help="Ours: weight of the rehearsed-drift term, which keeps the "
                                              "mark under a simulated thief's fine-tuning (default 0: off)."),
    rehearsal_data: Optional[str] = typer.Option(None, help="The simulated thief's captioned data "
                                                 "(default builtin:textures)."),
    rehearsal_steps: Optional[int] = typer.Option(None, help="Simulated thief steps per drift (default 200)."),
    rehearsal_every: Optional[int] = typer.Option(None, help="Stage-2 steps between drifts (default 500)."),
    rehearsal_lr: Optional[float] = typer.Option(None, help="The simulated thief's lr (default 1e-4)."),
    size: Optional[int] = SizeOpt, dtype: Optional[str] = DtypeOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Stage 2: distil the trigger -> message behaviour into the UNet's up-block attention."""
    from .config import WatermarkEmbedConfig

    def body(cfg, run, dev):
        from .watermark.run import embed_command

        return embed_command(cfg, run.path, dev, log=_log)

    _run("watermark embed", WatermarkEmbedConfig, config,
         dict(model=model, codec=codec, key=key, model_id=model_id, data=data, limit=limit, trigger=trigger, steps=steps,
              batch_size=batch_size, lr=lr, grad_clip=grad_clip, eta=eta, tau=tau, beta=beta,
              uncond_fraction=uncond_fraction, mode=mode, preservation=preservation,
              gradient_checkpointing=gradient_checkpointing, precision=precision, shared_trunk=shared_trunk,
              delta_scale=delta_scale, posterior_sample=posterior_sample, trainable=trainable, rehearsal=rehearsal,
              rehearsal_data=rehearsal_data, rehearsal_steps=rehearsal_steps, rehearsal_every=rehearsal_every,
              rehearsal_lr=rehearsal_lr, size=size, dtype=dtype, seed=seed), out, device, as_json, body,
         overwrite=overwrite)


@wm_app.command("adapt")
def wm_adapt(
    out: Path = OutOpt,
    model: Optional[str] = typer.Option(None, "--model", help="The watermarked model (OUT/model of `watermark embed`)."),
    original: Optional[str] = typer.Option(None, "--original", help="The model before stage 2 (default tiny:t2i)."),
    codec: Optional[str] = CodecOpt, key: Optional[str] = KeyOpt, model_id: Optional[str] = ModelIdOpt,
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger prefix (default '*[Z]& ')."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text file, one prompt per line."),
    steps: Optional[int] = typer.Option(None, help="Extractor training steps (default 1500)."),
    simulate: Optional[list[str]] = typer.Option(None, "--simulate", help="Rehearse a thief's fine-tuning "
                                                 "method:steps[:lr] (repeatable), e.g. lora:2000:1e-4. More robust "
                                                 "readings, but more false positives on fine-tuned unmarked models "
                                                 "(README)."),
    simulate_data: Optional[str] = typer.Option(None, "--simulate-data", help="Captioned SRC the rehearsals "
                                                "fine-tune on (default builtin:textures)."),
    size: Optional[int] = SizeOpt, dtype: Optional[str] = DtypeOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Ours, after stage 2: fit the extractor to the watermarked model's outputs (OUT/codec)."""
    from .config import WatermarkAdaptConfig

    def body(cfg, run, dev):
        from .watermark.run import adapt_command

        return adapt_command(cfg, run.path, dev, log=_log)

    _run("watermark adapt", WatermarkAdaptConfig, config,
         dict(model=model, original=original, codec=codec, key=key, model_id=model_id, trigger=trigger,
              prompts=prompts, steps=steps, simulate=simulate, simulate_data=simulate_data, size=size, dtype=dtype, seed=seed),
         out, device, as_json, body, overwrite=overwrite)


@wm_app.command("prompts")
def wm_prompts(
    out: Path = OutOpt,
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger prefix (default '*[Z]& ')."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text file, one prompt per line "
                                          "(default: the digit captions)."),
    n: Optional[int] = typer.Option(None, "--n", help="Prompts per list (default 64)."),
    as_json: bool = JsonOpt, seed: Optional[int] = SeedOpt, config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Black-box verification, step 1: the triggered and clean prompt lists (and seeds) to send
    to a suspect's service; then `watermark verify --images`."""
    from .config import WatermarkPromptsConfig

    def body(cfg, run, dev):
        from .watermark.run import prompts_command

        return prompts_command(cfg, run.path, log=_log)

    _run("watermark prompts", WatermarkPromptsConfig, config, dict(trigger=trigger, prompts=prompts, n=n, seed=seed),
         out, "cpu", as_json, body, overwrite=overwrite)


@wm_app.command("verify")
def wm_verify(
    out: Path = OutOpt,
    model: Optional[str] = typer.Option(None, "--model", help="The suspect model (diffusers or LoRA folder): "
                                        "white-box."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the images the suspect's service "
                                          "returned for the triggered prompts of `watermark prompts`: black-box."),
    clean_images: Optional[Path] = typer.Option(None, "--clean-images", help="Folder of the images it returned "
                                                "for the clean prompts (optional)."),
    codec: Optional[str] = CodecOpt, key: Optional[str] = KeyOpt, model_id: Optional[str] = ModelIdOpt,
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger prefix (default '*[Z]& ')."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text file, one prompt per line."),
    original: Optional[str] = typer.Option(None, "--original", help="The unwatermarked model: also report "
                                           "PSNR / SSIM of clean outputs against it."),
    n: Optional[int] = typer.Option(None, "--n", help="Images (default 64)."),
    guidance: Optional[float] = typer.Option(None, help="CFG scale (default 7.5); also checked without CFG."),
    fpr: Optional[float] = typer.Option(None, help="Per-image false-positive rate for TPR (default 1e-6)."),
    alpha: Optional[float] = typer.Option(None, help="Level of the model-level key test (default 1e-3)."),
    size: Optional[int] = SizeOpt, dtype: Optional[str] = DtypeOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Is the owner's message in this model? Key-randomization test on triggered images (from
    --model, or the files of --images), read with the owner's VAE; per-image TPR at FPR."""
    from .config import WatermarkVerifyConfig

    def body(cfg, run, dev):
        from .watermark.run import verify_command

        return verify_command(cfg, run.path, dev, log=_log)

    _run("watermark verify", WatermarkVerifyConfig, config,
         dict(model=model, images=images, clean_images=clean_images, codec=codec, key=key, model_id=model_id,
              trigger=trigger, prompts=prompts, original=original, n=n, guidance=guidance, fpr=fpr, alpha=alpha,
              size=size, dtype=dtype, seed=seed), out, device, as_json, body, overwrite=overwrite)


# ---- demo ----------------------------------------------------------------------------
@app.command("demo")
def demo(
    out: Path = OutOpt,
    quick: bool = typer.Option(False, "--quick", help="Smaller, faster run (under 3 minutes on 2 CPU cores)."),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    overwrite: bool = OverwriteOpt,
):
    """Run everything on the embedded default (tiny zoo, built-in data): report.html + summary.json."""
    from .config import DemoConfig

    def body(cfg, run, dev):
        from .demo import run_demo

        return run_demo(cfg, run.path, device=dev, log=_log)

    _run("demo", DemoConfig, config, dict(quick=quick or None, seed=seed), out, device, as_json, body,
         overwrite=overwrite)


def _quiet_libraries() -> None:
    """Weight-loading progress bars and dtype notices of transformers / diffusers are noise
    around our own progress and would bury a one-line error."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        # diffusers also logs, at error level, the exception it then raises ("An error occurred
        # while trying to fetch ..."): a second line beside our own one-line error
        dlog.set_verbosity(dlog.CRITICAL)
    except ImportError:
        pass


def _usage_error(e) -> None:
    """A click usage error (bad option value, unknown option, missing option) as one line."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `modelseal lock` alone: the help is the answer
        e.show()
        sys.exit(2)
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "modelseal"
    err = InputError(" ".join(e.format_message().split()), f"see '{where} --help'")
    err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(2)


def _interrupted() -> None:
    """Ctrl-C: exit 130; SIGTERM: 143 (128 + the signal, as a shell reports it); one line."""
    import signal

    from .runs import stop_signal

    sig = stop_signal() or signal.SIGINT
    how = "" if sig == signal.SIGINT else f" ({signal.Signals(sig).name})"
    err_console.print(f"interrupted{how}; rerun the same command to resume", highlight=False, markup=False,
                      soft_wrap=True)
    sys.exit(128 + int(sig))


def main(argv: list[str] | None = None) -> None:
    from .runs import install_signal_handlers, restore_signal_handlers

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    handlers = install_signal_handlers()
    try:
        try:
            code = app(args=argv, standalone_mode=False, prog_name="modelseal")
        except InputError as e:
            err_console.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            _interrupted()
        except SystemExit:
            raise
        except Exception as e:
            # Usage errors of the click that typer runs on (vendored or not) carry an exit code.
            if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
                _usage_error(e)
            raise
        # Under standalone_mode=False typer returns an exit code instead of exiting: 130 for a
        # KeyboardInterrupt (ours: Ctrl-C or SIGTERM), others from ctx.exit(n).
        if code == 130:
            _interrupted()
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    finally:
        restore_signal_handlers(handlers)


if __name__ == "__main__":
    main()
