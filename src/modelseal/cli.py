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

err_console = Console(stderr=True)
console = Console(stderr=True)

OutOpt = typer.Option(..., "--out", help="Run folder to write (created if missing).")
JsonOpt = typer.Option(False, "--json", help="Print results.json on stdout.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps")
SeedOpt = typer.Option(None, "--seed", help="Random seed (default: the config's, 0).")
ConfigOpt = typer.Option(None, "--config", help="YAML file of options (command-line options win).")


def _log(msg: str) -> None:
    from . import parallel

    if parallel.is_main():  # under torchrun / accelerate launch only rank 0 talks
        console.print(msg, highlight=False, markup=False)


def _run(command: str, model, config: Optional[Path], overrides: dict, out: Path, device: str,
         as_json: bool, body: Callable) -> dict:
    """Validate config, open the run folder, run `body(cfg, run, device)`, write results."""
    from . import parallel
    from .config import load_config
    from .runs import RunFolder, resolve_device

    cfg = load_config(config, model, overrides)
    dev = parallel.local_device(resolve_device(device))
    seed = getattr(cfg, "seed", 0)
    _seed_everything(seed)
    if not parallel.is_main():  # under accelerate launch / torchrun only rank 0 writes `out`
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            body(cfg, RunFolder(Path(tmp) / "run", command, cfg.model_dump(mode="json"), seed, dev), dev)
        parallel.barrier()
        return {}
    run = RunFolder(out, command, cfg.model_dump(mode="json"), seed, dev)
    results = body(cfg, run, dev)
    path = run.finish(results)
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
         target.parent / (target.name + ".run"), device, as_json, body)


@zoo_app.command("eval")
def zoo_eval(
    out: Path = OutOpt,
    per_prompt: Optional[int] = typer.Option(None, help="Samples per (domain, digit) prompt (default 10)."),
    steps: Optional[int] = typer.Option(None, help="DDIM sampling steps (default 30)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default 7.5, as Stable Diffusion)."),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Evaluate the zoo in use: CLIP zero-shot accuracy per domain, judged T2I prompt accuracy."""
    from .config import ZooEvalConfig

    _run("zoo eval", ZooEvalConfig, config, dict(per_prompt=per_prompt, steps=steps, guidance=guidance, seed=seed),
         out, device, as_json, lambda cfg, run, dev: _zoo_eval_body(cfg, run))


def _zoo_eval_body(cfg, run) -> dict:
    from .demo import zoo_section_results

    res, _ = zoo_section_results(cfg, run.path, log=_log)
    return res


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
    local_files_only: Optional[bool] = LocalOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
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
              stamp_period=stamp_period, train_limit=train_limit, augment=augment, clamp=clamp, local_files_only=local_files_only, seed=seed),
         out, device, as_json, body)


@lock_app.command("eval")
def lock_eval(
    out: Path = OutOpt,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="checkpoint/ folder of a lock run."),
    eval_: Optional[list[str]] = typer.Option(None, "--eval", help="SRC domains to evaluate (repeatable)."),
    model: Optional[str] = typer.Option(None, "--model", help="Backbone (default: the one the checkpoint names)."),
    local_files_only: Optional[bool] = LocalOpt,
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Accuracy of a lock checkpoint on each domain's test split (and stamped, if it has a stamp)."""
    from .config import LockEvalConfig

    def body(cfg, run, dev):
        from .lock.run import eval_command

        return eval_command(cfg, run.path, dev, log=_log)

    _run("lock eval", LockEvalConfig, config, dict(checkpoint=checkpoint, eval=eval_ or None, model=model,
                                                   local_files_only=local_files_only, seed=seed),
         out, device, as_json, body)


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
):
    """Ownership verification: does the suspect fail on stamped inputs it gets right clean? (p-value)"""
    from .config import LockVerifyConfig

    def body(cfg, run, dev):
        from .lock.run import verify_command

        return verify_command(cfg, run.path, dev, log=_log)

    _run("lock verify", LockVerifyConfig, config,
         dict(checkpoint=checkpoint, eval=eval_, model=model, stamp_pattern=stamp_pattern,
              stamp_strength=stamp_strength, stamp_period=stamp_period, min_drop=min_drop, alpha=alpha,
              local_files_only=local_files_only, seed=seed), out, device, as_json, body)


# ---- demo ----------------------------------------------------------------------------
@app.command("demo")
def demo(
    out: Path = OutOpt,
    quick: bool = typer.Option(False, "--quick", help="Smaller, faster run (under 3 minutes on 2 CPU cores)."),
    as_json: bool = JsonOpt, device: str = DeviceOpt, seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Run everything on the embedded default (tiny zoo, built-in data): report.html + summary.json."""
    from .config import DemoConfig

    def body(cfg, run, dev):
        from .demo import run_demo

        return run_demo(cfg, run.path, device=dev, log=_log)

    _run("demo", DemoConfig, config, dict(quick=quick or None, seed=seed), out, device, as_json, body)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        app(args=argv, standalone_mode=False)
    except InputError as e:
        err_console.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        # Usage errors of the click that typer runs on (vendored or not) carry an exit code.
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
