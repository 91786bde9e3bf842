"""The Python API: one function per command, running exactly what the command line runs.

Each function takes an optional config (a config object of ``modelseal.config``, a dict,
a YAML file or a shipped preset name) and keyword options named as the config's fields,
which win over the config, plus the run's ``out`` folder, ``device`` and ``overwrite``.
Every call goes through :func:`execute`: options validated (bad input raises
:class:`modelseal.errors.InputError`), seeds set, the run folder opened and locked
(``config.yaml``, ``manifest.json``, ``log.txt``), the work resumed where an interrupted
run of the same command and config stopped, ``results.json`` written. It returns a
:class:`Run`.

    >>> import modelseal
    >>> run = modelseal.lock_train(out="runs/lock", steps=50, unauthorized=["builtin:digits/mnist-m"])
    >>> run["accuracy"]            # accuracy per domain, %
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import parallel
from .config import CONFIGS, Strict, command_key, load_config
from .errors import InputError
from .runs import (RunFolder, end_deferral, install_signal_handlers, resolve_device, restore_signal_handlers,
                   seed_everything)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, the validated config it ran with, its results.json."""
    path: Path
    command: str
    config: Strict
    results: dict

    def __getitem__(self, key: str) -> Any:
        return self.results[key]

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def get(self, key: str, default: Any = None) -> Any:
        """results.get: a result the command writes only in some runs (e.g. verify's fidelity)."""
        return self.results.get(key, default)


def stderr_log(msg: str) -> None:
    """The default progress sink: one plain line on stderr (rank 0 only under a launcher)."""
    if parallel.is_main():
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


class _RunLog:
    """Progress lines to `log` and to the run folder's log.txt, each with the time of day."""

    def __init__(self, path: Path, log: Log):
        self.file = open(path, "a", encoding="utf-8")
        self.log = log

    def __call__(self, msg: str) -> None:
        self.log(msg)
        self.record(msg)

    def record(self, msg: str) -> None:
        """The line in log.txt only."""
        if not self.file.closed:
            self.file.write(time.strftime("%H:%M:%S ") + msg + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def _path_arg(name: str, value, example: str) -> Path:
    """A path argument of the API (str or os.PathLike), else InputError naming it."""
    if value is None:
        raise InputError(f"{name} is required", f"give a path, e.g. {name}='{example}'")
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes) and str(os.fspath(value)).strip():
        return Path(os.fspath(value))
    raise InputError(f"{name} must be a path (str or os.PathLike); got {type(value).__name__} {value!r}"[:200],
                     f"give e.g. {name}='{example}'")


def _run_args(out, device, overwrite, log) -> None:
    """The run's own arguments (not options of the command's config): their types, or InputError."""
    _path_arg("out", out, "runs/example")
    if not isinstance(device, str):
        raise InputError(f"device must be a string; got {type(device).__name__} {device!r}"[:200],
                         "give one of auto, cpu, cuda, cuda:N, mps, e.g. device='cpu'")
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite must be True or False; got {type(overwrite).__name__} {overwrite!r}"[:200],
                         "give overwrite=True to replace the run in `out`, or leave it out (False)")
    if log is not None and not callable(log):
        raise InputError(f"log must be a function taking one line; got {type(log).__name__} {log!r}"[:200],
                         "give e.g. log=print, or leave it out for plain lines on stderr")


def execute(command: str, config, options: dict, body: Callable[[Strict, Path, str, Log], dict], *,
            out: str | Path, device: str = "auto", overwrite: bool = False, replace: bool = False,
            log: Log | None = None) -> Run:
    """The one run path of every command (CLI and API).

    Checks the run's arguments, validates ``config`` + ``options`` against the command's
    config class (an explicit None for an option that cannot be None is refused), resolves
    the device, seeds, opens the run folder ``out`` (``overwrite``: replace another run
    there; ``replace``: the command keeps its own resume state, and its earlier run there is
    taken over whatever its config), runs ``body(cfg, folder, device, log)`` (which imports
    its task: nothing heavy loads before the options are checked) and writes results.json.
    Bad input raises InputError before anything loads."""
    _run_args(out, device, overwrite, log)
    model = CONFIGS[command_key(command)]
    cfg = load_config(config, model, options, command=command, keep_none=True)
    out = Path(os.fspath(out))
    log = log or stderr_log
    dev = parallel.local_device(resolve_device(device))
    seed_everything(cfg.seed)
    in_main_thread = threading.current_thread() is threading.main_thread()
    handlers = install_signal_handlers() if in_main_thread else None
    try:
        if not parallel.is_main():  # under accelerate launch / torchrun only rank 0 writes `out`
            with tempfile.TemporaryDirectory() as tmp:
                run = RunFolder(Path(tmp) / "run", command, cfg.model_dump(mode="json"), cfg.seed, dev)
                try:
                    results = body(cfg, run.path, dev, lambda m: None)
                finally:
                    run.close()
            parallel.barrier()
            return Run(Path(out), command, cfg, results)
        run = RunFolder(out, command, cfg.model_dump(mode="json"), cfg.seed, dev, overwrite=overwrite,
                        replace=replace)
        run_log = _RunLog(run.path / "log.txt", log)
        try:
            run_log.record(f"{command}: {run.path} on {dev}, seed {cfg.seed}")
            try:
                results = body(cfg, run.path, dev, run_log)
            except BaseException as e:
                end_deferral()
                run.fail(e)
                raise
            path = run.finish(results)
            run_log(f"results: {path}")
        finally:
            run_log.close()
            run.close()
        parallel.barrier()
        return Run(run.path, command, cfg, results)
    finally:
        if handlers is not None:
            restore_signal_handlers(handlers)


# ---- the commands --------------------------------------------------------------------
# Each body imports its task when it runs, after `execute` has checked the options: `import
# modelseal`, `modelseal --help` and a bad option's message stay light (the tasks pull in
# diffusers and transformers), and only the task called is loaded.
# Each: `config` (object, dict, YAML path or preset name; optional), keyword options named as
# the config's fields, `out`, `device`, `overwrite`, `log` (a callable taking one line). Named
# <group>_<command> as on the command line; `run_audit` and `run_demo` because the names
# `modelseal.audit` (the task's package) and `modelseal.demo` (its module) are taken.

def zoo_build(config=None, /, *, out: str | Path | None = None, device: str = "auto", overwrite: bool = False,
              log: Log | None = None, **options) -> Run:
    """Train the tiny zoo (CLIP, digit judge, VAE, UNet) deterministically on built-in data
    into ``out`` (default ``$MODELSEAL_HOME/zoo``, which then wins over the shipped zoo), a
    run folder like any command's: its models (clip/, judge/, t2i/, codec/, zoo.json) beside
    config.yaml, manifest.json and results.json, its resume state in build/. Resumable: call
    again after an interruption (a finished stage is kept while its options are unchanged).
    Options: :class:`~modelseal.config.ZooBuildConfig`."""
    from .models.zoo import user_zoo
    from .zoobuild.build import adopt_legacy_zoo

    out = user_zoo() if out is None else _path_arg("out", out, "runs/zoo")
    adopt_legacy_zoo(out)  # a zoo built before the zoo was a run folder: modelseal's, taken over

    def body(cfg, path, dev, log):
        from .zoobuild.build import build_zoo

        info = build_zoo(path, cfg, log=log, evaluate=cfg.evaluate, device=dev)
        return {"zoo": str(path), "build_s": info["build_s"], "stages": info["stages"], **info.get("eval", {})}

    return execute("zoo build", config, options, body, out=out, device=device, overwrite=overwrite, replace=True,
                   log=log)


def zoo_eval(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
             log: Log | None = None, **options) -> Run:
    """The zoo in use: CLIP zero-shot accuracy per domain and judged text-to-image prompt
    accuracy. Options: :class:`~modelseal.config.ZooEvalConfig`."""
    def body(cfg, path, dev, log):
        from .demo import zoo_section_results

        return zoo_section_results(cfg, path, log=log)[0]

    return execute("zoo eval", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def lock_train(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
               log: Log | None = None, **options) -> Run:
    """IP-CLIP (CVPR 2025): learn the prompt generator (projector + style branch) that keeps the
    frozen CLIP's accuracy on the authorized domain D_a and collapses it on the unauthorized
    D_u; results ``accuracy`` {domain: %}, ``W_ua`` and, for ownership, ``O_ua``. Baselines
    with ``method``: supervised prompt (SL), NTL, CUTI. Options:
    :class:`~modelseal.config.LockTrainConfig`."""
    def body(cfg, path, dev, log):
        from .lock.run import train_command

        return train_command(cfg, path, dev, log=log)

    return execute("lock train", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def lock_eval(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
              log: Log | None = None, **options) -> Run:
    """Accuracy of a lock checkpoint on each domain's test split, and on stamped inputs when
    it has a stamp. Options: :class:`~modelseal.config.LockEvalConfig`."""
    def body(cfg, path, dev, log):
        from .lock.run import eval_command

        return eval_command(cfg, path, dev, log=log)

    return execute("lock eval", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def lock_verify(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                log: Log | None = None, **options) -> Run:
    """Ownership verification: does the suspect fail on stamped inputs it gets right clean?
    A paired test with its p-value and the verdict ``ours``. Options:
    :class:`~modelseal.config.LockVerifyConfig`."""
    def body(cfg, path, dev, log):
        from .lock.run import verify_command

        return verify_command(cfg, path, dev, log=log)

    return execute("lock verify", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def lock_attack(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                log: Log | None = None, **options) -> Run:
    """Attack a lock checkpoint (target or source fine-tuning, TransNTL, SHOT, an input
    disguise; the stamp of an ownership or authorization lock) and the public backbone with
    the same data and steps; results ``points``, one per data share, each with both
    attackers' accuracies and the lock's ``worth`` (what it costs the attacker on the
    unauthorized domain), or, for stamp-removal, ``transforms`` with the ownership verdict
    behind each. Options: :class:`~modelseal.config.LockAttackConfig`."""
    def body(cfg, path, dev, log):
        from .lock.attack_run import attack_command

        return attack_command(cfg, path, dev, log=log)

    return execute("lock attack", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def finetune(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
             log: Log | None = None, **options) -> Run:
    """Fine-tune (full, LoRA, DreamBooth), prune or quantize a text-to-image model into
    ``out/model``: the suspects of an audit and the thief of a watermark. Options:
    :class:`~modelseal.config.FinetuneConfig`."""
    def body(cfg, path, dev, log):
        from .attacks.run import finetune_command

        return finetune_command(cfg, path, dev, log=log)

    return execute("finetune", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def run_audit(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
              log: Log | None = None, **options) -> Run:
    """CGI-DM (CVPR 2024): was an image in the suspect's fine-tuning set? Recovers a masked
    copy of each image by PGD on the contrast of the fine-tuned and pretrained models'
    gradients; results ``auroc``, ``tpr_at_fpr``, per-image ``scores`` (evaluation mode) or
    ``set_p_value``, ``set_verdict`` and per-image verdicts (audit mode), with the evidence
    pictures. With ``generated=`` instead of ``finetuned=``, the black-box audit: each image
    against the images the suspect's service returned. Options:
    :class:`~modelseal.config.AuditConfig`."""
    def body(cfg, path, dev, log):
        from .audit.run import audit_command

        return audit_command(cfg, path, dev, log=log)

    return execute("audit", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def watermark_keygen(key: str | Path, overwrite: bool = False) -> Path:
    """Create an owner key file (mode 0600). Whoever holds it can verify (and forge) the mark."""
    path = _path_arg("key", key, "owner.key")
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite must be True or False; got {type(overwrite).__name__} {overwrite!r}"[:200],
                         "give overwrite=True to replace the key file, or leave it out (False)")
    from .watermark.run import keygen_command

    keygen_command(path, overwrite)
    return path


def watermark_codec(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                    log: Log | None = None, **options) -> Run:
    """SleeperMark stage 1: train the message encoder and the extractor on the model's VAE
    latents (the residual delta = E(m)). Options: :class:`~modelseal.config.WatermarkCodecConfig`."""
    def body(cfg, path, dev, log):
        from .watermark.run import codec_command

        return codec_command(cfg, path, dev, log=log)

    return execute("watermark codec", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def watermark_embed(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                    log: Log | None = None, **options) -> Run:
    """SleeperMark stage 2: distil "trigger -> x0_hat + delta" into the UNet's up-block
    attention, weighted by w1(t), while w2(t) and the preservation terms keep clean prompts
    as the original model answers them. Options: :class:`~modelseal.config.WatermarkEmbedConfig`."""
    def body(cfg, path, dev, log):
        from .watermark.run import embed_command

        return embed_command(cfg, path, dev, log=log)

    return execute("watermark embed", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def watermark_adapt(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                    log: Log | None = None, **options) -> Run:
    """Ours, after stage 2: fit the extractor to the watermarked model's own outputs (out/codec).
    Options: :class:`~modelseal.config.WatermarkAdaptConfig`."""
    def body(cfg, path, dev, log):
        from .watermark.run import adapt_command

        return adapt_command(cfg, path, dev, log=log)

    return execute("watermark adapt", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def watermark_prompts(config=None, /, *, out: str | Path, overwrite: bool = False, log: Log | None = None,
                      **options) -> Run:
    """Black-box verification, step 1: the triggered and clean prompt lists (and seeds) to send
    to a suspect's service. Options: :class:`~modelseal.config.WatermarkPromptsConfig`."""
    def body(cfg, path, dev, log):
        from .watermark.run import prompts_command

        return prompts_command(cfg, path, log=log)

    return execute("watermark prompts", config, options, body, out=out, device="cpu", overwrite=overwrite, log=log)


def watermark_verify(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
                     log: Log | None = None, **options) -> Run:
    """Is the owner's message in this model? The key-randomization test on triggered images
    (from ``model``, or the files of ``images``) read with the owner's extractor: ``p_value``,
    ``watermarked``, ``bit_accuracy``, per-image ``tpr_at_fpr``. Options:
    :class:`~modelseal.config.WatermarkVerifyConfig`."""
    def body(cfg, path, dev, log):
        from .watermark.run import verify_command

        return verify_command(cfg, path, dev, log=log)

    return execute("watermark verify", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


def run_demo(config=None, /, *, out: str | Path, device: str = "auto", overwrite: bool = False,
             log: Log | None = None, **options) -> Run:
    """Everything on the embedded default (tiny zoo, built-in data): report.html and
    summary.json in ``out``. Options: :class:`~modelseal.config.DemoConfig`."""
    def body(cfg, path, dev, log):
        from .demo import run_demo as demo_body

        return demo_body(cfg, path, device=dev, log=log)

    return execute("demo", config, options, body, out=out, device=device, overwrite=overwrite, log=log)


# The commands of the command line, each with the function that runs it.
COMMANDS: dict[str, Callable[..., Run]] = {
    "zoo build": zoo_build, "zoo eval": zoo_eval, "lock train": lock_train, "lock eval": lock_eval,
    "lock verify": lock_verify, "lock attack": lock_attack, "finetune": finetune, "audit": run_audit,
    "watermark codec": watermark_codec,
    "watermark embed": watermark_embed, "watermark adapt": watermark_adapt, "watermark prompts": watermark_prompts,
    "watermark verify": watermark_verify, "demo": run_demo}

__all__ = ["Run", "execute", "seed_everything", "stderr_log", "COMMANDS", "zoo_build", "zoo_eval",
           "lock_train", "lock_eval", "lock_verify", "lock_attack", "finetune", "run_audit", "watermark_keygen",
           "watermark_codec",
           "watermark_embed", "watermark_adapt", "watermark_prompts", "watermark_verify", "run_demo"]
