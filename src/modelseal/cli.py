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
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")

err_console = Console(stderr=True)
console = Console(stderr=True)

OutOpt = typer.Option(..., "--out", help="Run folder to write (created if missing).")
JsonOpt = typer.Option(False, "--json", help="Print results.json on stdout.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps")
SeedOpt = typer.Option(None, "--seed", help="Random seed (default: the config's, 0).")
ConfigOpt = typer.Option(None, "--config", help="YAML file of options (command-line options win).")


def _log(msg: str) -> None:
    console.print(msg, highlight=False, markup=False)


def _run(command: str, model, config: Optional[Path], overrides: dict, out: Path, device: str,
         as_json: bool, body: Callable) -> dict:
    """Validate config, open the run folder, run `body(cfg, run, device)`, write results."""
    from .config import load_config
    from .runs import RunFolder, resolve_device

    cfg = load_config(config, model, overrides)
    dev = resolve_device(device)
    seed = getattr(cfg, "seed", 0)
    _seed_everything(seed)
    run = RunFolder(out, command, cfg.model_dump(mode="json"), seed, dev)
    results = body(cfg, run, dev)
    path = run.finish(results)
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
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default 4)."),
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
