"""`modelseal demo`: the embedded default end to end, written as report.html + summary.json.

Sections: the tiny zoo (CLIP zero-shot accuracy, judged T2I samples), lock (IP-CLIP),
audit (CGI-DM on a DreamBooth suspect) and watermark (SleeperMark: trigger, verification,
image attacks, a thief's fine-tuning).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .data.digits import CLASS_NAMES, DOMAINS, caption
from .models.zoo import zoo_dir, zoo_info, zoo_table
from .report.figures import bar_chart, sample_grid
from .report.html import Section, render
from .runs import atomic_write_bytes, atomic_write_text, write_json


def zoo_section_results(cfg, out: Path, log=print, device: str = "cpu") -> tuple[dict, Section]:
    """Evaluate the zoo in use; write samples.png; return results and a report section."""
    from .models.zoo_build import evaluate_zoo

    folder, origin = zoo_dir()
    t0 = time.time()
    res = evaluate_zoo(folder, per_prompt=cfg.per_prompt, steps=cfg.steps, guidance=cfg.guidance,
                       seed=cfg.seed, log=log, device=device)
    images, per = res.pop("_images"), cfg.per_prompt
    res.pop("_targets")
    # One row per domain prompt style: the first sample of each digit.
    idx = [(di * 10 + c) * per for di in range(len(DOMAINS)) for c in range(10)]
    png = sample_grid(images[idx], row_labels=[caption(d, 0).replace(" zero", " ...") for d in DOMAINS], ncols=10,
                      title="tiny:t2i samples, digits 0-9 per row (CFG %.1f, %d DDIM steps)" % (cfg.guidance, cfg.steps))
    atomic_write_bytes(out / "samples.png", png)
    rows = zoo_table()
    res["zoo"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    res["zoo_origin"] = origin
    res["zoo_build_s"] = zoo_info().get("build_s")
    res["sample_grid"] = "samples.png"
    res["eval_s"] = round(time.time() - t0, 1)
    chart = bar_chart({"CLIP zero-shot": res["clip_zero_shot"], "T2I judged": res["t2i_prompt_accuracy_by_domain"]},
                      ylabel="accuracy (%)", title="tiny zoo on the built-in digits domains", hline=10.0,
                      hline_label="chance")
    section = Section(
        title="Tiny zoo",
        text=("Real-architecture models (transformers CLIPModel; diffusers AutoencoderKL + UNet2DConditionModel "
              "+ CLIPTextModel) trained by `modelseal zoo build` on real digits shipped in PyPI packages. "
              f"T2I prompt accuracy: {res['t2i_prompt_accuracy']:.1f}% of samples read as the prompted digit "
              "by an independent CNN judge."),
        tables=[("models", [{"model": r["model"], "origin": r["origin"], "size MB": r["size_mb"],
                             "params M": r["params_m"], "sha256": r["sha256"][:12]} for r in res["zoo"]]),
                ("accuracy per domain (%)", [{"domain": d, "CLIP zero-shot": res["clip_zero_shot"][d],
                                              "T2I judged": res["t2i_prompt_accuracy_by_domain"][d]} for d in DOMAINS])],
        figures=[("accuracy per domain", chart), ("T2I samples", png)],
    )
    return res, section


def lock_section_results(cfg, out: Path, log=print, device: str = "cpu") -> tuple[dict, Section]:
    """IP-CLIP target-specified on the digits: accuracy per domain against the SL reference."""
    from .lock.run import train_command
    from .runs import write_json

    folder = out / "lock"
    folder.mkdir(parents=True, exist_ok=True)
    res = train_command(cfg, folder, device, log=log)
    res.pop("history", None)
    write_json(folder / "results.json", res)
    doms = list(res["accuracy"])
    rows = [{"domain": d, "role": "authorized" if d in res["authorized"] else
             ("unauthorized" if d in res["unauthorized"] else "other"),
             "IP-CLIP": res["accuracy"][d], "SL (no protection)": res["accuracy_sl"][d]} for d in doms]
    section = Section(
        title="lock: IP-CLIP domain locking of tiny:clip",
        text=(f"Prompts learned on {', '.join(res['authorized'])} (licensed) against "
              f"{', '.join(res['unauthorized'])} (not licensed); the CLIP towers stay frozen. "
              f"D_a = {res['D_a']:.2f}, D_u = {res['D_u']:.2f}, W_ua = {res['W_ua']:.2f}; chance {res['chance']:.0f}%."),
        tables=[("accuracy on test splits (%)", rows)],
        figures=[("accuracy per domain", (folder / "accuracy.png").read_bytes())],
    )
    return res, section


def audit_section_results(cfg, out: Path, seed: int = 0, log=print, device: str = "cpu") -> tuple[dict, Section]:
    """DreamBooth a suspect on members of one built-in subject, then audit members vs hold-out."""
    import torch

    from .attacks.run import finetune_command
    from .audit.run import audit_command
    from .config import AuditConfig, FinetuneConfig
    from .data.subjects import builtin_subject, write_split

    folder = out / "audit"
    prompt = "a sks digit"
    parts = {"members": cfg.members, "holdout": cfg.holdout}
    if cfg.null_suspect:
        parts["others"] = cfg.members
    data = write_split(builtin_subject(cfg.subject, 32, seed), folder / "data", parts)
    for name, src in (("suspect", "members"), ("null", "others")):
        if src in data:
            log(f"[demo] audit: DreamBooth {name} model on {len(list(data[src].iterdir()))} images of {cfg.subject}")
            finetune_command(FinetuneConfig(method="dreambooth", data=str(data[src]), prompt=prompt,
                                            steps=cfg.finetune_steps, class_prompt=cfg.class_prompt, seed=seed),
                             folder / name, device, log=lambda m: None)
    acfg = AuditConfig(finetuned=str(folder / "suspect" / "model"), prompt=prompt, members=data["members"],
                       holdout=data["holdout"], steps=cfg.steps, mc_samples=cfg.mc_samples, seed=seed,
                       null_finetuned=str(folder / "null" / "model") if cfg.null_suspect else None)
    res = audit_command(acfg, folder / "run", device, log=log)
    from .runs import write_json

    write_json(folder / "run" / "results.json", res)
    from PIL import Image

    strips = [r for r in res["scores"] if r["member"]][:3] + [r for r in res["scores"] if not r["member"]][:3]
    grid = torch.stack([torch.from_numpy(np.array(Image.open(folder / "run" / r["evidence"]))).permute(2, 0, 1)
                        for r in strips]).float() / 255
    png = sample_grid(grid, [f"{'member' if r['member'] else 'hold-out'} {r['score']:.2f}" for r in strips],
                      ncols=1, cell=1.6, title="original | partial | recovered")
    rows = [{"method": "CGI-DM (" + res["metric"] + ")", "AUROC": res["auroc"]}] + \
        [{"method": k, "AUROC": v} for k, v in res["baselines"].items()]
    section = Section(
        title="audit: CGI-DM on a DreamBooth suspect",
        text=(f"tiny:t2i fine-tuned (DreamBooth, '{prompt}', {cfg.finetune_steps} steps) on {cfg.members} images of "
              f"{cfg.subject} from the test split; {cfg.holdout} other images of it held out. Half of each image's "
              f"latent is removed and recovered with {cfg.steps} steps of contrasting gradient inversion. "
              f"AUROC {res['auroc']:.3f} (95% CI {res['auroc_ci'][0]:.2f}-{res['auroc_ci'][1]:.2f}); "
              f"{res['seconds_per_image']:.1f} s per image."),
        tables=[("members vs hold-out", rows)],
        figures=[("evidence (score = SSIM of the removed region)", png), ("ROC", (folder / "run" / "roc.png").read_bytes())],
    )
    keep = {k: res[k] for k in ("auroc", "auroc_ci", "tpr_at_fpr", "baselines", "metrics", "metric",
                                "seconds_per_image", "accuracy_crossfit")}
    keep["scores"] = [{k: r[k] for k in ("image", "member", "score")} for r in res["scores"]]
    return keep, section


def watermark_section_results(cfg, out: Path, seed: int = 0, log=print, device: str = "cpu") -> tuple[dict, Section]:
    """Plant SleeperMark in tiny:t2i (the zoo's codec, a fresh owner key), verify it with and
    without the trigger and under image attacks, then LoRA-fine-tune the watermarked model on
    a new domain and measure the triggered bit accuracy along the way; with `adapt_steps`, the
    same readings with the extractor adapted to the watermarked model (ours) beside them."""
    import torch

    from . import stats
    from .attacks.finetune import FinetuneOptions, finetune
    from .config import WatermarkAdaptConfig, WatermarkEmbedConfig, WatermarkVerifyConfig
    from .data.sources import load_source
    from .models.diffusion import load_t2i
    from .watermark.codec import Codec
    from .watermark.keys import generate_key, load_key, message_bits
    from .watermark.run import adapt_command, embed_command, verify_command, verify_prompts
    from .watermark.verify import decide, generate, read_bits

    folder = out / "watermark"
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "owner.key"
    if not key_file.exists():
        generate_key(key_file)
    model_id = "tiny-t2i-demo"
    ecfg = WatermarkEmbedConfig(codec="tiny:codec", key=str(key_file), model_id=model_id, trigger=cfg.trigger,
                                steps=cfg.embed_steps, lr=cfg.lr, grad_clip=None, eta=cfg.eta, tau=cfg.tau,
                                beta=cfg.beta, uncond_fraction=cfg.uncond_fraction, limit=2400, seed=seed)
    log(f"[demo] watermark: stage 2, {cfg.embed_steps} steps")
    emb = embed_command(ecfg, folder / "embed", device, log=log)
    vcfg = WatermarkVerifyConfig(model=emb["model"], codec="tiny:codec", key=str(key_file), model_id=model_id,
                                 trigger=cfg.trigger, n=cfg.n, attacks=cfg.attacks, original="tiny:t2i", seed=seed)
    ver = verify_command(vcfg, folder / "verify", device, log=log)
    fid = ver["fidelity"]
    wrong_key = folder / "someone-else.key"
    if not wrong_key.exists():
        generate_key(wrong_key)
    ver_wrong = verify_command(vcfg.model_copy(update={"key": str(wrong_key), "attacks": [], "also_without_cfg": False,
                                                       "original": None}),
                               folder / "verify-wrong-key", device, log=lambda m: None)

    ver_adapted = adapted = None
    if cfg.adapt_steps > 0:
        log(f"[demo] watermark: adapting the extractor to the watermarked model ({cfg.adapt_steps} steps)")
        acfg = WatermarkAdaptConfig(model=emb["model"], original="tiny:t2i", codec="tiny:codec", key=str(key_file),
                                    model_id=model_id, trigger=cfg.trigger, images=cfg.adapt_images,
                                    steps=cfg.adapt_steps, seed=seed)
        adapted = adapt_command(acfg, folder / "adapt", device, log=log)
        ver_adapted = verify_command(vcfg.model_copy(update={"codec": adapted["codec"], "original": None, "attacks": [],
                                                            "also_without_cfg": False}),
                                     folder / "verify-adapted", device, log=log)

    codecs = {"stage 1": Codec.from_pretrained("tiny:codec", device)}
    if ver_adapted is not None:
        codecs["adapted"] = Codec.from_pretrained(adapted["codec"], device)
    codec = codecs["stage 1"]
    bits = message_bits(load_key(key_file), model_id, codec.k)
    model = load_t2i(emb["model"], device)
    prompts, seeds = verify_prompts(vcfg)
    data = load_source(cfg.finetune_data, "train", model.image_size)
    curve = []

    def col(name: str) -> str:
        return "" if name == "stage 1" else f" ({name})"

    def probe(step: int, given: dict | None = None) -> None:
        if step in cfg.finetune_checkpoints:
            row = {"step": step}
            images = None if given else generate(model, prompts, seeds, vcfg.trigger, vcfg.guidance, vcfg.steps)
            for name, c in codecs.items():
                r = given[name] if given else decide(read_bits(c, images), bits)
                row.update({f"bit_accuracy{col(name)}": r["bit_accuracy"],
                            f"tpr@1e-6{col(name)}": r["tpr_at_fpr"]["1e-6"], f"p_value{col(name)}": r["p_value"],
                            f"verdict{col(name)}": _verdict(r)})
            curve.append(row)
            log(f"[demo] watermark after {step} {cfg.finetune_method} steps on {cfg.finetune_data}: " +
                ", ".join(f"bit accuracy{col(n)} {row['bit_accuracy' + col(n)]:.3f}" for n in codecs))

    # before fine-tuning: the verifications above (same prompts, seeds, trigger, guidance)
    probe(0, {"stage 1": ver, **({"adapted": ver_adapted} if ver_adapted else {})})
    if cfg.finetune_steps > 0:
        x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
        finetune(model, x, list(data.captions), FinetuneOptions(method=cfg.finetune_method,
                                                              steps=cfg.finetune_steps, seed=seed),
                 log=lambda m: None, on_step=probe)

    def row(label: str, r: dict, clean: bool = False) -> dict:
        pre = "clean_" if clean else ""
        return {"images": label, "bit accuracy": r[pre + "bit_accuracy"], "TPR@1e-6": r[pre + "tpr_at_fpr"]["1e-6"],
                "key test p": stats.format_p(r[pre + "p_value"]),
                "verdict": _verdict(r) if not clean else "(clean images: no claim)"}

    rows = [row("triggered, CFG 7.5", ver), row("clean (no trigger), CFG 7.5", ver, clean=True),
            row("wrong key, triggered", ver_wrong)]
    if "no_cfg" in ver:
        rows.insert(1, row("triggered, no CFG", ver["no_cfg"]))
    if ver_adapted is not None:
        at = 2 if "no_cfg" in ver else 1
        rows[at:at] = [row("triggered, CFG 7.5, adapted extractor (ours)", ver_adapted),
                       row("clean, CFG 7.5, adapted extractor (ours)", ver_adapted, clean=True)]
    attack_rows = [{"attack": k, "bit accuracy": v["bit_accuracy"], "TPR@1e-6": v["tpr_at_fpr"]["1e-6"],
                    "key test p": stats.format_p(v["p_value"]), "verdict": _verdict(v)}
                   for k, v in ver.get("attacks", {}).items()]
    section = Section(
        title="watermark: SleeperMark in tiny:t2i",
        text=(f"A {codec.k}-bit message derived from a fresh owner key is planted in tiny:t2i's up-block attention "
              f"({cfg.embed_steps} distillation steps, trigger '{vcfg.trigger}'), with the zoo's codec. "
              f"Verification generates {cfg.n} images per row from fixed seeds. Without the trigger the watermarked "
              f"model stays close to the original: PSNR {fid['psnr']:.1f} dB, SSIM {fid['ssim']:.3f} on the same "
              f"seeds. Then a thief fine-tunes it ({cfg.finetune_method}, {cfg.finetune_steps} steps on "
              f"{cfg.finetune_data}, never showing the trigger). The verdict is the key-randomization test: "
              f"its p-value asks how often a random key's message would match the images as well as the owner's "
              f"does (valid however alike one model's images read; smallest possible p 2^-{codec.k}); images are "
              "read as 8-bit files with the owner's VAE, never the suspect's."
              + (" The adapted extractor (ours) is the stage-1 extractor fitted to the watermarked model's own "
                 f"outputs ({cfg.adapt_steps} steps on images from seeds verification never uses): guidance "
                 "distorts the planted residual, and the stage-1 extractor misreads a few bits. Clean prompts "
                 f"read {ver['clean_bit_accuracy']:.3f} (stage 1) and {ver_adapted['clean_bit_accuracy']:.3f} "
                 "(adapted)."
                 if ver_adapted is not None else "")),
        tables=[("verification", rows)] + ([("image attacks (triggered images)", attack_rows)] if attack_rows else [])
        + [(f"after {cfg.finetune_method} fine-tuning on {cfg.finetune_data}", curve)],
        figures=[("triggered (top) vs clean (bottom), same seeds", (folder / "verify" / "samples.png").read_bytes())],
    )
    fields = ("bit_accuracy", "tpr_at_fpr", "p_value", "log10_p_value", "majority_agreement", "clean_bit_accuracy",
              "clean_p_value", "watermarked", "diagnostics")
    keep = {"verify": {k: ver[k] for k in fields},
            "no_cfg": ver.get("no_cfg"), "attacks": ver.get("attacks", {}),
            "wrong_key": {k: ver_wrong[k] for k in ("bit_accuracy", "p_value", "majority_agreement", "watermarked")},
            "fidelity": fid, "finetune": curve, "embed_s": emb.get("train_s"),
            "adapted": ({k: ver_adapted[k] for k in fields} if ver_adapted else None)}
    return keep, section


def _verdict(r: dict) -> str:
    return "watermarked" if r["watermarked"] else "not verified"


def run_demo(cfg, out: Path, device: str = "cpu", log=print) -> dict:
    out = Path(out)
    t0 = time.time()
    summary = {"quick": cfg.quick, "classes": CLASS_NAMES, "section_seconds": {}}
    sections = []

    def zoo():
        zoo_cfg = (cfg.zoo_quick if cfg.quick else cfg.zoo).model_copy(update={"seed": cfg.seed})
        log("[demo] tiny zoo: evaluating CLIP zero-shot and T2I samples")
        return zoo_section_results(zoo_cfg, out, log=log, device=device)

    def lock():
        lock_cfg = (cfg.lock_quick if cfg.quick else cfg.lock).to_train_config(cfg.seed)
        log("[demo] lock: IP-CLIP target-specified (mnist licensed, mnist-m not)")
        return lock_section_results(lock_cfg, out, log=log, device=device)

    def audit():
        audit_cfg = cfg.audit_quick if cfg.quick else cfg.audit
        log(f"[demo] audit: CGI-DM on a DreamBooth suspect ({audit_cfg.subject})")
        return audit_section_results(audit_cfg, out, cfg.seed, log=log, device=device)

    def watermark():
        wm_cfg = cfg.watermark_quick if cfg.quick else cfg.watermark
        log("[demo] watermark: SleeperMark in tiny:t2i")
        return watermark_section_results(wm_cfg, out, cfg.seed, log=log, device=device)

    for name, run in (("zoo", zoo), ("lock", lock), ("audit", audit), ("watermark", watermark)):
        if name not in cfg.sections:
            continue
        ts = time.time()
        summary[name], sec = run()
        summary["section_seconds"][name] = round(time.time() - ts, 1)
        sec.text += f" (This section took {summary['section_seconds'][name]:.0f} s.)"
        sections.append(sec)
        log(f"[demo] {name} section done in {summary['section_seconds'][name]:.0f} s "
            f"({time.time() - t0:.0f} s so far)")
    summary["wall_time_s"] = round(time.time() - t0, 1)
    html = render("modelseal demo", sections, meta={"quick": cfg.quick, "device": device,
                                                    "wall time (s)": summary["wall_time_s"],
                                                    **{f"{k} (s)": v for k, v in summary["section_seconds"].items()}})
    atomic_write_text(out / "report.html", html)
    write_json(out / "summary.json", summary)
    log(f"[demo] report: {out / 'report.html'}")
    return summary
