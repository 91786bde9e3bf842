"""`modelseal audit`: load the model pair, score images with CGI-DM, write evidence.

Two modes:
  evaluation  --members DIR --holdout DIR: AUROC (bootstrap CI, widened to the score interval
              on small samples), TPR at 1% / 5% FPR where the hold-out images can show it,
              cross-fitted accuracy, baselines (loss, calibrated loss, optional one-model
              ablations and a null suspect) on the same images
  real use    --images DIR --calibration DIR: the collection's verdict (a one-sided rank-sum
              test of the images' scores against the calibration images', known not to be
              in training), and per image a conformal p-value against the calibration
              images with a verdict under the stated control (Benjamini-Hochberg by default)

With --generated instead of --finetuned the audit is black-box (audit/blackbox.py): the same
modes and verdicts from the images the suspect's service returned.

The base model is --pretrained, else the base the suspect records (resolve_pretrained). What
cannot give a meaningful audit is refused before the work: a suspect that is its own base
(check_not_itself before loading, check_loaded after), timestep and mask options the model
cannot take (check_loaded), too few images (audit/inputs.py).

Work is cached per image batch under OUT/cache, keyed by the models and options, so an
interrupted audit resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..config import AuditConfig, InversionOptions
from ..errors import InputError
from ..models.diffusion import (DTYPES, LORA_BASE_FILE, T2IModel, adapter_is_identity, is_lora_folder, load_t2i,
                                lora_base, refuse_pickle_lora, same_model, same_weights)
from ..runs import atomic_path
from .baselines import clid_terms, clid_th, loss_scores, paired_losses, pia_scores
from .blackbox import blackbox_command
from .decision import audit_mode_result, decision_scores, detection_scores, evaluation_lines, evaluation_summary
from .evidence import roc_figure_file, write_evidence, write_report
from .inversion import invert
from .inputs import check_mode, check_sets, read_sets
from .scoring import FeatureExtractor, similarity
from ..models.zoo import resolve_model

FINETUNE_RECORD = "modelseal_finetune.json"


# --------------------------------------------------------------------------- models

def _arch(model: T2IModel) -> dict:
    c = model.unet.config
    return {"in_channels": c.in_channels, "sample_size": c.sample_size, "cross_attention_dim": c.cross_attention_dim,
            "block_out_channels": list(c.block_out_channels), "text_dim": model.text_encoder.config.hidden_size}


def load_pair(pretrained: str, finetuned: str, device: str, dtype: str = "float32",
              local_files_only: bool = False, resolution: int | None = None) -> tuple[T2IModel, T2IModel]:
    """(pretrained, finetuned). A LoRA suspect is the pretrained model with its adapter: the
    same object is returned twice, and the inversion switches the adapter on and off."""
    dt = DTYPES[dtype]
    if is_lora_folder(finetuned):
        model = load_t2i(finetuned, device, dt, local_files_only, base=pretrained, resolution=resolution)
        return model, model
    pre = load_t2i(pretrained, device, dt, local_files_only, resolution=resolution)
    ft = load_t2i(finetuned, device, dt, local_files_only, resolution=resolution)
    a, b = _arch(pre), _arch(ft)
    if a != b:
        diff = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k])
        raise InputError(f"the pretrained and fine-tuned models differ in architecture ({diff})",
                         "give the model the suspect was fine-tuned from as --pretrained")
    return pre, ft


def _record(finetuned: str, key: str) -> str | None:
    """A value `modelseal finetune` recorded beside the model, if any."""
    f = Path(str(finetuned)) / FINETUNE_RECORD
    if f.is_file():
        try:
            value = json.loads(f.read_text()).get(key)
        except (ValueError, AttributeError, OSError):
            return None
        return value if isinstance(value, str) and value else None
    return None


def default_prompt(finetuned: str) -> str | None:
    """The instance prompt `modelseal finetune` recorded beside the model, if any."""
    return _record(finetuned, "prompt")


def resolve_pretrained(cfg, log=print) -> tuple[str, str]:
    """(the base model the suspect is contrasted with, where that name came from). The base a
    suspect records wins over the default: a LoRA's lora_base.json, else the base `modelseal
    finetune` recorded beside a full model; without either, AuditConfig.pretrained_fallback.
    A --pretrained that is not a LoRA's recorded base is refused (the adapter was trained on
    that base and means nothing on another); for a full model the disagreement is said in the
    log and --pretrained is used."""
    finetuned = str(cfg.finetuned)
    lora = is_lora_folder(finetuned)
    recorded, where = (lora_base(finetuned), LORA_BASE_FILE) if lora else (_record(finetuned, "base"), FINETUNE_RECORD)
    if cfg.pretrained is None:
        return (recorded, where) if recorded else (AuditConfig.pretrained_fallback, "default")
    given = str(cfg.pretrained)
    if recorded and not same_model(given, recorded):
        if lora:
            raise InputError(f"--pretrained '{given}' is not the base the LoRA '{finetuned}' records ('{recorded}', in "
                             f"its {LORA_BASE_FILE})", "leave --pretrained out to audit against the recorded base, or, "
                             f"if '{given}' is that model under another name, write it as 'base' in {LORA_BASE_FILE}")
        log(f"[audit] note: --pretrained '{given}' is not the base '{recorded}' the suspect's {FINETUNE_RECORD} "
            "records; the suspect is contrasted with --pretrained")
    return given, "--pretrained"


def check_not_itself(pretrained: str, finetuned: str) -> None:
    """Refuse, before any model loads, a suspect that is the pretrained model itself: the
    audit contrasts the two, and that contrast is zero."""
    refuse_pickle_lora(finetuned)
    if not is_lora_folder(finetuned) and same_model(pretrained, finetuned):
        raise InputError(f"the suspect --finetuned '{finetuned}' is the pretrained model '{pretrained}' itself: the "
                         "audit contrasts the two models, and that contrast is zero",
                         "give as --finetuned the fine-tuned model under suspicion and as --pretrained the public "
                         "model it was fine-tuned from, e.g. --pretrained tiny:t2i --finetuned runs/sus/model")


def check_loaded(cfg, pre: T2IModel, ft: T2IModel) -> None:
    """After the models load, before any work: the suspect differs from the pretrained model
    (weights, or a LoRA that changes something), and the timestep and mask options fit the
    model (its T and its latent side)."""
    if pre is ft and adapter_is_identity(ft):
        raise InputError(f"the LoRA in '{cfg.finetuned}' changes nothing (every lora_B weight is zero, as in an "
                         "untrained adapter): the suspect is its base model, and the audit's contrast is zero",
                         "give a trained LoRA (e.g. `modelseal finetune --method lora` writes one)")
    if pre is not ft and same_weights(pre, ft):
        raise InputError(f"the suspect '{cfg.finetuned}' holds the same weights as the pretrained model "
                         f"'{pre.source}': the audit contrasts the two models, and that contrast is zero",
                         "give as --finetuned the fine-tuned model under suspicion, not a copy of the base")
    T = int(pre.scheduler.config.num_train_timesteps)
    if cfg.t_min >= T:
        raise InputError(f"--t-min {cfg.t_min} is not below the {T} diffusion steps of '{pre.source}'",
                         f"give --t-min from 0 to {T - 1} (e.g. 1, the default)")
    side = pre.latent_size
    if cfg.block >= side:
        raise InputError(f"--block {cfg.block} is not smaller than the {side} x {side} latent of '{pre.source}' at "
                         f"{pre.image_size} px: one mask cell would cover the whole latent",
                         f"give --block {max(1, side // 2)} or less (e.g. 2, the reference's)")


# --------------------------------------------------------------------------- scoring with a cache

def _fingerprint(source: str) -> list:
    """Weight files (name, size, mtime) of a local model folder, so a cache never outlives a
    re-trained model saved at the same path; hub ids stand for themselves."""
    source = str(source)
    folder = Path(resolve_model(source, "t2i")) if source.startswith("tiny:") else Path(source)
    if not folder.is_dir():
        return [source]
    return [source] + sorted([str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns]
                             for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin"))


def _cache_key(cfg, pretrained: str, prompt: str, role: str, images: torch.Tensor) -> str:
    blob = json.dumps({"pre": _fingerprint(pretrained), "ft": _fingerprint(cfg.finetuned),
                       "prompt": prompt, "size": cfg.size,
                       "images": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
                       "dtype": cfg.dtype, "inv": _inversion(cfg), "role": role, "features": cfg.features},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _inversion(cfg: InversionOptions) -> dict:
    """The inversion's options of an audit config (the fields of InversionOptions)."""
    return cfg.model_dump(include=set(InversionOptions.model_fields))


def score_set(pre: T2IModel, ft: T2IModel, images: torch.Tensor, prompt: str, opts: InversionOptions,
              features: FeatureExtractor | None, cache: Path | None, progress: _Progress | None = None,
              role: str = "images") -> dict:
    """CGI-DM on every image (in batches): metrics per image plus the partial/recovered images.
    Batches already in `cache` are read back (a resumed audit says so through `progress`)."""
    out: dict[str, list] = {"partial": [], "recovered": [], "keep": []}
    metrics: dict[str, list] = {}
    bs = max(1, opts.batch_size)
    starts = list(range(0, len(images), bs))
    done = [b for b in range(len(starts)) if cache is not None and (cache / f"batch{b:04d}.safetensors").is_file()]
    if done and progress is not None:
        todo = [b for b in range(len(starts)) if b not in done]
        progress.say(f"resuming: {len(done)} of {len(starts)} {role} batches were scored before (in {cache}); "
                     + (f"going on from batch {todo[0] + 1}" if todo else "nothing left to score"))
    for b, start in enumerate(starts):
        x = images[start:start + bs]
        f = cache / f"batch{b:04d}.safetensors" if cache is not None else None
        if progress is not None:
            progress.batch(f"{role} batch {b + 1}/{len(starts)}", opts.steps)
        if b in done:
            from safetensors.torch import load_file

            saved = load_file(str(f))
            if progress is not None:
                progress(opts.steps * len(x), len(x), cached=True)
        else:
            inv = invert(pre, ft, x, prompt, opts, offset=start,
                         progress=(lambda k, n=len(x): progress(n, 0)) if progress is not None else None)
            sims = similarity(inv.original, inv.recovered, inv.keep_pixels, features)
            saved = {"partial": inv.partial, "recovered": inv.recovered, "keep": inv.keep_pixels,
                     **{f"m_{k}": v for k, v in sims.items()}}
            if f is not None:
                from safetensors.torch import save_file

                with atomic_path(f) as tmp:
                    save_file({k: v.contiguous() for k, v in saved.items()}, str(tmp))
            if progress is not None:
                progress(0, len(x))
        for k in ("partial", "recovered", "keep"):
            out[k].append(saved[k])
        for k, v in saved.items():
            if k.startswith("m_"):
                metrics.setdefault(k[2:], []).append(v)
    res = {k: torch.cat(v) for k, v in out.items()}
    res["metrics"] = {k: torch.cat(v) for k, v in metrics.items()}
    return res


# --------------------------------------------------------------------------- the command

class _Progress:
    """Progress of one long phase of the audit. Over PGD steps x images on a terminal: a rich
    bar. Otherwise (stderr piped to a file, the Python API) plain lines through `log`, as the
    trainings' step lines: one at least every EVERY_S seconds and one as each batch or pass
    ends, with the time since the phase began."""
    EVERY_S = 30.0

    def __init__(self, log, label: str, total_steps: int = 0, images: int = 0):
        from rich.console import Console

        self.log, self.label, self.images = log, label, images
        self.t0 = self._last = time.time()
        self.done = self.k = self.steps = 0
        self.where = ""
        self.bar = None
        if total_steps and Console(stderr=True).is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(),
                                TextColumn("{task.fields[done]}/{task.fields[n]} images"), TimeElapsedColumn(),
                                TimeRemainingColumn(), transient=True, console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total_steps, done=0, n=images)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *a):
        if self.bar is not None:
            self.bar.__exit__(*a)

    def say(self, text: str) -> None:
        self.log(f"[audit] {self.label}: {text}")

    def tick(self, text: str, end: bool = False) -> None:
        """A plain line, when a pass ends (`end`) or EVERY_S seconds have gone by (no bar)."""
        now = time.time()
        if self.bar is None and (end or now - self._last >= self.EVERY_S):
            self._last = now
            self.say(f"{text} ({now - self.t0:.0f}s)")

    def batch(self, where: str, steps: int) -> None:
        self.where, self.k, self.steps = where, 0, steps

    def __call__(self, steps: int, images: int, cached: bool = False) -> None:
        """`steps` PGD steps x images advanced; `images` finished (score_set's protocol)."""
        self.done += images
        self.k += 1 if not images else 0
        if self.bar is not None:
            self.bar.update(self.task, advance=steps, done=self.done)
        step = "read from the cache" if cached else f"PGD step {self.k}/{self.steps}"
        self.tick(f"{self.where}, {step}; {self.done}/{self.images} images done", end=bool(images))


def audit_command(cfg, out: Path, device: str, log=print) -> dict:
    out = Path(out)
    if not cfg.finetuned and cfg.generated is None:
        raise InputError("no suspect", "give --finetuned DIR (a diffusers folder or a LoRA folder), or --generated DIR "
                         "(images the suspect's service returned) for a black-box audit")
    if cfg.finetuned and cfg.generated is not None:
        raise InputError("both --finetuned and --generated given",
                         "give the suspect's weights (--finetuned) or only its images (--generated), not both")
    mode = check_mode(cfg)
    if cfg.generated is not None:
        return blackbox_command(cfg, out, mode, device, log)
    check_sets(cfg, mode)
    finetuned = str(cfg.finetuned)
    pretrained, pretrained_from = resolve_pretrained(cfg, log)
    check_not_itself(pretrained, finetuned)
    prompt = cfg.prompt or default_prompt(finetuned)
    if not prompt:
        raise InputError("no fine-tuning prompt: the suspect's folder does not record one",
                         "give --prompt, e.g. --prompt \"a sks dog\" (the identifier prompt it was fine-tuned with)")
    pre, ft = load_pair(pretrained, finetuned, device, cfg.dtype, cfg.local_files_only, cfg.size)
    check_loaded(cfg, pre, ft)
    size = cfg.size or pre.image_size
    sets = read_sets(cfg, mode, size)
    features = FeatureExtractor(cfg.features, device, cfg.local_files_only) if cfg.features else None
    if cfg.metric == "features" and features is None:
        raise InputError("--metric features needs a feature model", "give --features tiny:clip or a DINO/CLIP checkpoint")
    log(f"[audit] {mode}: {', '.join(f'{len(v[0])} {k}' for k, v in sets.items())}; prompt '{prompt}'; "
        f"{cfg.steps} PGD steps x {cfg.mc_samples} MC samples; suspect {'LoRA (one base model)' if pre is ft else 'full model'}")

    t0 = time.time()
    scored, losses = {}, {}
    total = sum(len(v[0]) for v in sets.values())
    with _Progress(log, "CGI-DM", total * cfg.steps, total) as bar:
        for role, (x, _) in sets.items():
            scored[role] = score_set(pre, ft, x, prompt, cfg, features,
                                     out / "cache" / f"{role}-{_cache_key(cfg, pretrained, prompt, role, x)}",
                                     progress=bar,
                                     role=role)
    invert_s = time.time() - t0
    names = [n for _, ns in sets.values() for n in ns]
    images = torch.cat([x for x, _ in sets.values()])
    log(f"[audit] loss scores: L_pre and L_ft of {total} images, {cfg.loss_samples} draws each")
    for role, (x, _) in sets.items():
        losses[role] = _losses(pre, ft, x, prompt, cfg, _Progress(log, f"loss scores, {role}"))

    merged = {k: torch.cat([scored[r][k] for r in sets]) for k in ("partial", "recovered", "keep")}
    metric_vals = {m: torch.cat([scored[r]["metrics"][m] for r in sets]).numpy() for m in scored[next(iter(sets))]["metrics"]}
    l_pre = torch.cat([losses[r][0] for r in sets])
    l_ft = torch.cat([losses[r][1] for r in sets])
    log(f"[audit] PIA of the suspect and of the pretrained model on {total} images")
    pia_pre, pia_ft = _pia_pair(pre, ft, images, prompt, _Progress(log, "PIA"))
    decision = decision_scores(metric_vals[cfg.metric], l_pre.numpy(), l_ft.numpy(), pia_pre.numpy(),
                               pia_ft.numpy())
    primary = decision[cfg.score]
    evidence = write_evidence(out / "evidence", names, images, merged) if cfg.evidence else [None] * len(names)

    res = {"mode": mode, "prompt": prompt, "pretrained": pretrained, "pretrained_from": pretrained_from,
           "finetuned": finetuned,
           "suspect_kind": "lora" if pre is ft else "full", "metric": cfg.metric, "score": cfg.score,
           "image_size": size, "inversion": _inversion(cfg), "seconds_per_image": invert_s / max(1, len(names)),
           "invert_s": round(invert_s, 1)}

    def row(i: int) -> dict:
        return {**{m: float(metric_vals[m][i]) for m in metric_vals},
                **{f"score_{k.replace('-', '_')}": float(v[i]) for k, v in decision.items()},
                "L_pre": float(l_pre[i]), "L_ft": float(l_ft[i]), "PIA_pre": float(pia_pre[i]),
                "PIA_ft": float(pia_ft[i])}

    if mode == "evaluation":
        labels = np.array([1] * len(sets["members"][0]) + [0] * len(sets["holdout"][0]))
        res.update(evaluation_summary(primary, labels, seed=cfg.seed))
        res["accuracy_crossfit"] = stats.crossfit_accuracy(primary, labels, seed=cfg.seed)
        res["metrics"] = {m: stats.auroc(v, labels) for m, v in metric_vals.items()}
        res["decision_scores"] = detection_scores(decision, labels)
        base = {k: stats.auroc(v.numpy(), labels) for k, v in loss_scores(l_pre, l_ft).items()}
        extra, raw = _extra_baselines(cfg, pretrained, pre, ft, sets, prompt, features, labels, log)
        base.update(extra)
        res["baselines"] = base
        res["scores"] = [{"image": n, "member": bool(y), "score": float(s), "evidence": e, **row(i),
                          **{k: float(v[i]) for k, v in raw.items()}}
                         for i, (n, y, s, e) in enumerate(zip(names, labels, primary, evidence))]
        roc_figure_file(out, {(f"CGI-DM ({cfg.metric})" if k == "cgi-dm" else k)
                              + (" (decides)" if k == cfg.score else ""): v for k, v in decision.items()}, labels)
        for line in evaluation_lines(res, cfg.score):
            log(line)
    else:
        n_img = len(sets["images"][0])
        res.update(audit_mode_result(names, primary, n_img, cfg.alpha, cfg.control, cfg.seed, evidence,
                                     [row(i) for i in range(len(names))], log))
    write_report(out, res)
    return res


def _losses(pre: T2IModel, ft: T2IModel, x: torch.Tensor, prompt: str, cfg, bar: _Progress):
    """paired_losses with a progress line per pass over the images (and at the end)."""
    return paired_losses(pre, ft, x, [prompt] * len(x), cfg.loss_samples, cfg.seed,
                         progress=lambda i, n: bar.tick(f"draw {i}/{n}", end=i == n))


def _pia_pair(pre: T2IModel, ft: T2IModel, x: torch.Tensor, prompt: str, bar: _Progress):
    """(PIA of the pretrained model, PIA of the suspect) per image."""
    prompts = [prompt] * len(x)
    a = pia_scores(pre, x, prompts, suspect=False, progress=lambda i, n: bar.tick(f"pretrained {i}/{n} images",
                                                                                    end=i == n))
    b = pia_scores(ft, x, prompts, suspect=True, progress=lambda i, n: bar.tick(f"suspect {i}/{n} images", end=i == n))
    return a, b


def _extra_baselines(cfg, pretrained, pre, ft, sets, prompt, features, labels, log) -> tuple[dict, dict]:
    """(AUROC per extra baseline, per-image raw values: clid_d, clid_l)."""
    xs = torch.cat([sets["members"][0], sets["holdout"][0]])
    prompts = [prompt] * len(xs)
    log(f"[audit] baselines: CLiD on {len(xs)} images")
    bar = _Progress(log, "baselines")
    d, l_cond = clid_terms(ft, xs, prompts, seed=cfg.seed,
                           progress=lambda i, n: bar.tick(f"CLiD {i}/{n} images", end=i == n))
    extra = {"clid": stats.auroc(clid_th(d, l_cond).numpy(), labels)}
    steps = len(xs) * cfg.steps
    if cfg.ablations:
        for obj in ("ft-only", "pre-only"):
            log(f"[audit] ablation: PGD on {obj}")
            with _Progress(log, f"ablation {obj}", steps, len(xs)) as bar:
                r = score_set(pre, ft, xs, prompt, cfg.model_copy(update={"objective": obj}), features, None, bar)
            extra[f"cgi-dm {obj}"] = stats.auroc(r["metrics"][cfg.metric].numpy(), labels)
    if cfg.null_finetuned:
        log(f"[audit] null suspect: {cfg.null_finetuned}")
        npre, nft = load_pair(pretrained, str(cfg.null_finetuned), str(pre.device), cfg.dtype, cfg.local_files_only,
                              cfg.size)
        with _Progress(log, "null suspect", steps, len(xs)) as bar:
            r = score_set(npre, nft, xs, prompt, cfg, features, None, bar)
        l_pre, l_ft = _losses(npre, nft, xs, prompt, cfg, _Progress(log, "null suspect loss scores"))
        n_pre, n_ft = _pia_pair(npre, nft, xs, prompt, _Progress(log, "null suspect PIA"))
        null = decision_scores(r["metrics"][cfg.metric].numpy(), l_pre.numpy(), l_ft.numpy(), n_pre.numpy(),
                               n_ft.numpy())
        extra["null_suspect"] = stats.auroc(null[cfg.score], labels)  # the statistic that decides
    return extra, {"clid_d": d.numpy(), "clid_l": l_cond.numpy()}
