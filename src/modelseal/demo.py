"""`modelseal demo`: the embedded default end to end, written as report.html + summary.json.

Sections: the tiny zoo (CLIP zero-shot accuracy, judged T2I samples), lock (IP-CLIP),
audit (CGI-DM on a DreamBooth suspect) and watermark (SleeperMark: trigger, verification,
image attacks, a thief's fine-tuning).
"""
from __future__ import annotations

import os
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
    from .zoobuild.evaluate import evaluate_zoo

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
    from .audit.evidence import baseline_rows
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
    rows = [{"method": ("CGI-DM (" + res["metric"] + ")" if k == "cgi-dm" else k) + (" (decides)" if k == res["score"] else ""),
             "AUROC": v["auroc"], "TPR@1%": "n/a" if v["tpr_at_fpr"]["0.01"] is None else v["tpr_at_fpr"]["0.01"]}
            for k, v in res["decision_scores"].items()] + \
        baseline_rows(res)
    section = Section(
        title="audit: CGI-DM on a DreamBooth suspect",
        text=(f"tiny:t2i fine-tuned (DreamBooth, '{prompt}', {cfg.finetune_steps} steps) on {cfg.members} images of "
              f"{cfg.subject} from the test split; {cfg.holdout} other images of it held out. Half of each image's "
              f"latent is removed and recovered with {cfg.steps} steps of contrasting gradient inversion. "
              f"AUROC {res['auroc']:.3f} (95% CI {res['auroc_ci'][0]:.2f}-{res['auroc_ci'][1]:.2f}) by the "
              f"{res['score']} score, which decides; CGI-DM's similarity alone "
              f"{res['decision_scores']['cgi-dm']['auroc']:.3f}; "
              f"{res['seconds_per_image']:.1f} s per image."),
        tables=[("members vs hold-out", rows)],
        figures=[(f"evidence (score: {res['score']})", png), ("ROC", (folder / "run" / "roc.png").read_bytes())],
    )
    keep = {k: res[k] for k in ("auroc", "auroc_ci", "tpr_at_fpr", "baselines", "metrics", "metric", "score",
                                "decision_scores",
                                "seconds_per_image", "accuracy_crossfit")}
    keep["scores"] = [{k: r[k] for k in ("image", "member", "score")} for r in res["scores"]]
    return keep, section


def watermark_section_results(cfg, out: Path, seed: int = 0, log=print, device: str = "cpu") -> tuple[dict, Section]:
    """SleeperMark on the embedded default: stage 2 run briefly from tiny:t2i (how it is done),
    then the shipped sleeper (tiny:sleeper, trained for the README's measurements, with its
    adapted extractor tiny:sleeper-codec and the package's published demo key) verified with
    and without the trigger, with a wrong key and under image attacks, then stolen: a thief
    fine-tunes it on faces, and at each checkpoint the verdict stands beside what the thief
    kept (judged digit-prompt accuracy against the original's, drift of clean outputs)."""
    import copy

    import torch

    from . import stats
    from .attacks.finetune import finetune
    from .attacks.utility import UtilityProbe
    from .config import FinetuneOptions, WatermarkEmbedConfig, WatermarkVerifyConfig, load_config
    from .data.sources import load_source
    from .models.diffusion import load_t2i
    from .models.judge import DigitJudge
    from .models.sleeper_entry import entry_record
    from .models.zoo import resolve_model
    from .quality import psnr
    from .watermark.codec import Codec
    from .watermark.keys import generate_key, load_key, message_bits
    from .watermark.provenance import load_stage1
    from .watermark.robustness import mark_and_utility
    from .watermark.run import embed_command, verify_command, verify_prompts

    folder = out / "watermark"
    folder.mkdir(parents=True, exist_ok=True)

    # 1. how stage 2 is done: a fresh owner key, a few hundred distillation steps
    own_key = folder / "owner.key"
    if not own_key.exists():
        generate_key(own_key)
    ecfg = load_config("watermark-embed.tiny", WatermarkEmbedConfig,  # the tiny zoo's recipe, briefly
                       {"key": str(own_key), "model_id": "tiny-t2i-demo", "trigger": cfg.trigger,
                        "steps": cfg.embed_steps, "seed": seed}, command="watermark embed")
    record = entry_record()
    log(f"[demo] watermark: stage 2 from tiny:t2i, {cfg.embed_steps} steps (the shipped sleeper had "
        f"{record.get('stage2', {}).get('steps', '?')})")
    emb = embed_command(ecfg, folder / "embed", device, log=log)

    # 2. the shipped sleeper, verified with the published demo key
    key_file = folder / "demo-owner.key"
    if not key_file.exists():
        generate_key(key_file, secret=bytes.fromhex(record["demo_key"]["secret"]))
    model_id, trigger = record["model_id"], record["trigger"]
    vcfg = WatermarkVerifyConfig(model="tiny:sleeper", codec="tiny:sleeper-codec", key=str(key_file),
                                 model_id=model_id, trigger=trigger, n=cfg.n, attacks=cfg.attacks,
                                 steps=cfg.steps, also_without_cfg=cfg.also_without_cfg, original="tiny:t2i",
                                 seed=seed)
    log("[demo] watermark: verifying the shipped sleeper (tiny:sleeper) with its adapted extractor")
    ver = verify_command(vcfg, folder / "verify", device, log=log)
    fid, tf = ver["fidelity"], ver["trigger_fidelity"]
    quiet = {"attacks": [], "also_without_cfg": False, "original": None}
    # the same images read again from the files verify wrote (black-box, as from a service):
    # with the paper's stage-1 extractor, and with a stranger's key
    files = {"model": None, "images": folder / "verify" / "triggered", "clean_images": folder / "verify" / "clean"}
    ver_stage1 = verify_command(vcfg.model_copy(update={**quiet, **files, "codec": "tiny:codec"}),
                                folder / "verify-stage1", device, log=lambda m: None)
    wrong_key = folder / "someone-else.key"
    if not wrong_key.exists():
        generate_key(wrong_key)
    ver_wrong = verify_command(vcfg.model_copy(update={**quiet, **files, "key": str(wrong_key)}),
                               folder / "verify-wrong-key", device, log=lambda m: None)
    ver_unmarked = verify_command(vcfg.model_copy(update={**quiet, "model": "tiny:t2i"}),
                                  folder / "verify-unmarked", device, log=lambda m: None)

    # 3. the thief: fine-tune the stolen sleeper; mark and utility at each checkpoint
    codec = Codec.from_pretrained("tiny:sleeper-codec", device)
    stage1, _ = load_stage1(codec)
    bits = message_bits(load_key(key_file), model_id, codec.k)
    base = load_t2i("tiny:sleeper", device)
    probe = UtilityProbe(DigitJudge.from_pretrained(resolve_model("tiny:judge", "judge")),
                         per_prompt=cfg.utility_per_prompt, steps=cfg.steps, seed=seed)
    original_acc = probe.accuracy(probe.samples(load_t2i("tiny:t2i", device)))["prompt_accuracy"]
    before = probe.samples(base)
    prompts, seeds = verify_prompts(vcfg.prompts, vcfg.n, vcfg.seed)
    data = load_source(cfg.finetune_data, "train", base.image_size)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    curves = []
    for method, lr in ((m.split(":")[0], float(m.split(":")[1])) for m in cfg.finetune):
        model = copy.deepcopy(base)

        def probe_at(step: int, method=method, model=model) -> None:
            if step not in cfg.finetune_checkpoints:
                return
            if step == 0:  # the thief's step 0 is the sleeper that was just verified, on the same seeds
                r = {"tpr": ver["tpr_at_fpr"]["1e-6"], "bit_accuracy": ver["bit_accuracy"],
                     "p_value": ver["p_value"], "watermarked": ver["watermarked"],
                     "retained": probe.accuracy(before)["prompt_accuracy"] / original_acc,
                     "psnr": float(psnr(before, before).mean())}
            else:
                r = mark_and_utility(model, codec, bits, trigger, prompts, seeds, probe, before, original_acc,
                                     guidance=vcfg.guidance, steps=vcfg.steps, stage1=stage1)
            verdict = _verdict(r)
            curves.append({"attack": f"{method}, lr {lr:g}", "step": step, "TPR@1e-6": r["tpr"],
                           "bit accuracy": r["bit_accuracy"], "key test p": stats.format_p(r["p_value"]),
                           "verdict": verdict, "judged accuracy kept": r["retained"],
                           "clean PSNR vs before (dB)": r["psnr"]})
            log(f"[demo] watermark: thief {method} lr {lr:g}, step {step}: TPR {r['tpr']:.2f}, "
                f"{verdict} (p {r['p_value']:.1e}); the thief keeps {r['retained']:.0%} of the judged accuracy")

        probe_at(0)
        finetune(model, x, list(data.captions), FinetuneOptions(method=method, steps=max(cfg.finetune_checkpoints),
                                                              lr=lr, seed=seed),
                 log=lambda m: None, on_step=probe_at)

    def row(label: str, r: dict, clean: bool = False) -> dict:
        pre = "clean_" if clean else ""
        tf = r.get("trigger_fidelity") if not clean else None
        return {"images": label, "bit accuracy": r[pre + "bit_accuracy"], "TPR@1e-6": r[pre + "tpr_at_fpr"]["1e-6"],
                "key test p": stats.format_p(r[pre + "p_value"]),
                "verdict": _verdict(r) if not clean else "(clean images: no claim)",
                "PSNR vs clean (dB)": round(tf["psnr"], 1) if tf else "",
                "judged digit, triggered / clean": (f"{tf['judged_triggered']:.0%} / {tf['judged_clean']:.0%}"
                                                    if tf and "judged_triggered" in tf else "")}

    rows = [row("triggered, CFG 7.5", ver)]
    if "no_cfg" in ver:
        rows.append(row("triggered, no CFG", ver["no_cfg"]))
    rows += [row("clean (no trigger), CFG 7.5", ver, clean=True),
             row("triggered, stage-1 extractor (the paper's)", ver_stage1),
             row("triggered, someone else's key", ver_wrong),
             row("tiny:t2i (never watermarked), triggered", ver_unmarked)]
    attack_rows = [{"attack": k, "bit accuracy": v["bit_accuracy"], "TPR@1e-6": v["tpr_at_fpr"]["1e-6"],
                    "key test p": stats.format_p(v["p_value"]), "verdict": _verdict(v),
                    "PSNR vs triggered (dB)": round(v["psnr"], 1)}
                   for k, v in ver.get("attacks", {}).items()]
    s2 = record.get("stage2", {})
    stage1_p = ver["provenance"]["stage1_evidence"]["p_value"]
    section = Section(
        title="watermark: SleeperMark in tiny:t2i",
        text=(f"Stage 2 distils a {codec.k}-bit message into tiny:t2i's up-block attention under the trigger "
              f"'{trigger}'; here it ran {cfg.embed_steps} steps from a fresh key to show how "
              f"({emb.get('train_s', 0):.0f} s; final loss terms "
              + ", ".join(f"{k} {v:.4f}" for k, v in emb.get("final", {}).items()) + "). "
              f"The model verified below is the shipped sleeper (tiny:sleeper: {s2.get('steps', 0):,} stage-2 steps, "
              f"only its {record['trained_parameters']:,} trained weights ship) with its adapted extractor, "
              "checked with the demo owner's key, which is published with the package (it shows how verification "
              "works; it proves nothing). "
              f"Verification generates {cfg.n} images per row from fixed seeds. What the mark costs, on the same "
              f"seeds: the sleeper's clean images against tiny:t2i's, PSNR {fid['psnr']:.1f} dB, SSIM "
              f"{fid['ssim']:.3f}; its triggered images against its clean ones, PSNR {tf['psnr']:.1f} dB, SSIM "
              f"{tf['ssim']:.3f}, the prompted digit judged in {tf['judged_triggered']:.0%} of triggered and "
              f"{tf['judged_clean']:.0%} of clean images (SleeperMark promises an invisible residual: triggered "
              "images that show what the prompt asks for). The "
              "verdict is the key-randomization test: how often a random key's message matches the images as well "
              f"as the owner's (valid however alike one model's images read; smallest possible p 2^-{codec.k}), "
              "read by both the adapted extractor and the stage-1 extractor it carries, each at alpha / 2: an "
              "extractor fitted to one model's outputs is no evidence alone (its provenance: the stage-1 "
              f"verification of the model it was fitted on, p {stats.format_p(stage1_p)}; "
              f"codec release hash {ver['codec_release_sha256'][:16]}). "
              f"Then a thief fine-tunes the stolen sleeper on {cfg.finetune_data}, never showing the trigger; "
              "beside each verdict, the share of the original's judged digit-prompt accuracy the thief's model "
              f"keeps (tiny:judge, {len(probe.prompts)} prompts)."),
        tables=[("verification", rows)] + ([("image attacks (triggered images)", attack_rows)] if attack_rows else [])
        + [(f"the thief's fine-tuning on {cfg.finetune_data}", curves)],
        figures=[("triggered (top) vs clean (bottom), same seeds", (folder / "verify" / "samples.png").read_bytes())],
    )
    fields = ("bit_accuracy", "tpr_at_fpr", "p_value", "log10_p_value", "majority_agreement", "clean_bit_accuracy",
              "clean_p_value", "watermarked", "diagnostics", "trigger_fidelity")
    brief = ("bit_accuracy", "tpr_at_fpr", "p_value", "majority_agreement", "watermarked")
    keep = {"verify": {k: ver[k] for k in fields}, "readings": ver.get("readings"),
            "provenance": ver.get("provenance"), "codec_release_sha256": ver.get("codec_release_sha256"),
            "no_cfg": ver.get("no_cfg"), "attacks": ver.get("attacks", {}),
            "stage1_extractor": {k: ver_stage1[k] for k in brief},
            "wrong_key": {k: ver_wrong[k] for k in brief}, "unmarked": {k: ver_unmarked[k] for k in brief},
            "fidelity": fid, "finetune": curves, "embed": {k: emb.get(k) for k in ("steps", "train_s", "final")},
            "sleeper": {"stage2": s2, "trained_parameters": record["trained_parameters"]}}
    return keep, section


def _verdict(r: dict) -> str:
    return "watermarked" if r["watermarked"] else "not verified"


def _section(name: str, cfg, out: Path, device: str, log) -> tuple[dict, Section]:
    """Run one section of the demo with its (quick or full) settings."""
    if name == "zoo":
        zoo_cfg = (cfg.zoo_quick if cfg.quick else cfg.zoo).model_copy(update={"seed": cfg.seed})
        log("[demo] tiny zoo: evaluating CLIP zero-shot and T2I samples")
        return zoo_section_results(zoo_cfg, out, log=log, device=device)
    if name == "lock":
        lock_cfg = (cfg.lock_quick if cfg.quick else cfg.lock).to_train_config(cfg.seed)
        log("[demo] lock: IP-CLIP target-specified (mnist licensed, mnist-m not)")
        return lock_section_results(lock_cfg, out, log=log, device=device)
    if name == "audit":
        audit_cfg = cfg.audit_quick if cfg.quick else cfg.audit
        log(f"[demo] audit: CGI-DM on a DreamBooth suspect ({audit_cfg.subject})")
        return audit_section_results(audit_cfg, out, cfg.seed, log=log, device=device)
    wm_cfg = cfg.watermark_quick if cfg.quick else cfg.watermark
    log("[demo] watermark: SleeperMark in tiny:t2i")
    return watermark_section_results(wm_cfg, out, cfg.seed, log=log, device=device)


def _run_sections(names: list[str], cfg, out: Path, device: str, log) -> list[tuple[str, dict, Section, float]]:
    """The sections `names` one after the other: (name, results, report section, seconds) each."""
    done = []
    for name in names:
        ts = time.time()
        res, sec = _section(name, cfg, out, device, log)
        done.append((name, res, sec, round(time.time() - ts, 1)))
        log(f"[demo] {name} section done in {done[-1][3]:.0f} s")
    return done


# Rough shares of a demo's CPU time, to split the sections between processes.
_WEIGHT = {"zoo": 1.0, "lock": 1.5, "audit": 1.5, "watermark": 3.0}


def section_groups(names: list[str], processes: int) -> list[list[str]]:
    """Split the sections between `processes` workers: heaviest first, each to the lightest group."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(processes, len(names))))]
    for name in sorted(names, key=lambda n: -_WEIGHT[n]):
        min(groups, key=lambda g: sum(_WEIGHT[n] for n in g)).append(name)
    order = {n: i for i, n in enumerate(names)}
    return [sorted(g, key=order.get) for g in groups]


def _worker(names: list[str], cfg, out: Path, device: str, queue) -> None:
    """One worker process: one torch thread, the run's seed, the sections; its log lines and
    its results (or its error) go back through `queue`."""
    import signal
    import traceback

    import torch

    from .runs import seed_everything

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers on Ctrl-C
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    try:
        queue.put(("done", _run_sections(names, cfg, out, device, lambda m: queue.put(("log", m)))))
    except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
        queue.put(("error", e, traceback.format_exc()))


def _run_in_processes(groups: list[list[str]], cfg, out: Path, device: str, log) -> list:
    """Each group of sections in its own single-threaded process (on a CPU of several cores the
    tiny models leave a second torch thread mostly idle, a second process not)."""
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("spawn")  # no fork after torch started its threads
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(g, cfg, out, device, queue), daemon=True) for g in groups]
    for w in workers:
        w.start()
    done, left = [], len(workers)
    try:
        while left:
            try:
                msg = queue.get(timeout=1.0)
            except queue_module.Empty:
                if any(w.exitcode not in (None, 0) for w in workers):
                    raise RuntimeError("a demo worker process died (out of memory?); rerun with --processes 1")
                continue
            if msg[0] == "log":
                log(msg[1])
            elif msg[0] == "done":
                done += msg[1]
                left -= 1
            else:
                _, err, tb = msg
                raise err from RuntimeError("in the demo's worker process:\n" + tb)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
    return done


def run_demo(cfg, out: Path, device: str = "cpu", log=print) -> dict:
    """The demo's sections, in one process or (on a CPU of two cores or more, `cfg.processes`)
    split between single-threaded worker processes; then report.html and summary.json."""
    out = Path(out)
    t0 = time.time()
    names = [n for n in ("zoo", "lock", "audit", "watermark") if n in cfg.sections]
    processes = cfg.processes or (min(2, os.cpu_count() or 1) if device == "cpu" else 1)
    groups = section_groups(names, processes)
    summary = {"quick": cfg.quick, "classes": CLASS_NAMES, "processes": len(groups), "section_seconds": {}}
    if len(groups) > 1:
        log(f"[demo] {len(groups)} processes: " + " | ".join(", ".join(g) for g in groups))
        done = _run_in_processes(groups, cfg, out, device, log)
    else:
        done = _run_sections(names, cfg, out, device, log)
    by_name = {d[0]: d for d in done}
    sections = []
    for name in names:
        _, summary[name], sec, seconds = by_name[name]
        summary["section_seconds"][name] = seconds
        sec.text += f" (This section took {seconds:.0f} s.)"
        sections.append(sec)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    html = render("modelseal demo", sections, meta={"quick": cfg.quick, "device": device,
                                                    "processes": len(groups),
                                                    "wall time (s)": summary["wall_time_s"],
                                                    **{f"{k} (s)": v for k, v in summary["section_seconds"].items()}})
    atomic_write_text(out / "report.html", html)
    write_json(out / "summary.json", summary)
    log(f"[demo] report: {out / 'report.html'} ({summary['wall_time_s']:.0f} s)")
    return summary
