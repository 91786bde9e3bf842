"""`modelseal watermark keygen | codec | embed | verify`: the SleeperMark workflow.

  keygen   an owner key file (mode 0600); messages are derived from it, never stored
  codec    stage 1: train the secret encoder + extractor on the model's VAE latents
  embed    stage 2: plant the trigger -> residual behaviour in the UNet; OUT/model/ is a
           full diffusers folder; OUT/model/modelseal_watermark.json records the trigger,
           the model id and the codec's hash (not the message)
  adapt    ours, optional: fit the extractor to the watermarked model's own outputs
           (guidance distorts the planted residual); OUT/codec is the adapted codec
  verify   black-box: generate with and without the trigger, read bits, p-values
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from .. import parallel, stats
from ..data.digits import digit_of
from ..data.folders import write_image_folder
from ..data.sources import check_inputs
from ..errors import InputError
from ..attacks.image import GEOMETRIC_ATTACKS, GEOMETRIC_PARAMS, attack_sampler
from ..attacks.suite import image_attack, needs_model
from ..models.clip import load_clip
from ..models.diffusion import latent_posterior, load_for, load_vae, stack_lora
from ..models.judge import DigitJudge
from ..models.zoo import resolve_model
from ..quality import psnr
from ..runs import RESUME_DIR, TrainingCheckpoint, atomic_folder
from .codec import Codec
from .codec_folder import WEIGHTS_NAME, file_sha256
from .codec_pixels import bit_accuracy, decode_all, embed_images, encode_all
from .codec_training import CodecLossWeights, train_codec
from .fidelity import image_fidelity
from . import provenance
from .keys import load_key, message_bits
from .trigger import add_triggers, trigger_words
from .perceptual import perceptual_distance

RECORD = "modelseal_watermark.json"
EVAL_ATTACKS = ("jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop", "rotation", "combined")


def images_and_captions(spec: str, size: int, limit: int | None, need_captions: bool):
    """Images (N, 3, size, size) in [0, 1] and their captions (None for an uncaptioned folder)
    from builtin:digits/<domain|all> (all: limit split evenly over the domains), a captioned
    folder (metadata.jsonl / .csv) or an image folder."""
    from ..data.folders import read_captioned_folder, read_image_folder
    from ..data.sources import load_source

    if spec.startswith("builtin:digits/all"):
        from ..data.digits import DOMAINS

        sets = [load_source(f"builtin:digits/{d}", "train", size) for d in DOMAINS]
        per = None if limit is None else max(1, limit // len(sets))
        images = np.concatenate([s.images[:per] for s in sets])
        captions = [c for s in sets for c in s.captions[:per]]
    elif spec.startswith("builtin:"):
        s = load_source(spec, "train", size)
        images, captions = s.images[:limit], (s.captions or [])[:limit]
    elif (Path(spec) / "metadata.jsonl").is_file() or (Path(spec) / "metadata.csv").is_file():
        s = read_captioned_folder(spec, size)
        images, captions = s.images[:limit], s.captions[:limit]
    else:
        if need_captions:
            raise InputError(f"'{spec}' has no captions (metadata.jsonl)",
                             "stage 2 needs captioned images: give a folder with metadata.jsonl or builtin:digits/all")
        s = read_image_folder(spec, size)
        images, captions = s.images[:limit], None
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0, captions


def _data_spec(spec: str) -> str:
    """builtin:digits/all names every digits domain (images_and_captions); check it as one."""
    return "builtin:digits/mnist" if spec.startswith("builtin:digits/all") else spec


def _sha(folder: Path) -> str:
    return file_sha256(Path(folder) / WEIGHTS_NAME)


def keygen_command(path: Path, overwrite: bool = False) -> dict:
    from .keys import generate_key

    generate_key(path, overwrite=overwrite)
    return {"key": str(path)}


def codec_command(cfg, out: Path, device: str, log=print) -> dict:
    check_inputs(data=_data_spec(cfg.data))
    model = load_for(cfg, cfg.model, device)
    x, _ = images_and_captions(cfg.data, model.image_size, cfg.limit, need_captions=False)
    n_test = max(16, len(x) // 10)
    if len(x) < 2 * n_test:
        raise InputError(f"--data {cfg.data} gives {len(x)} images: the codec holds {n_test} out to measure it and "
                         f"needs as many to train on", f"give a folder of at least {2 * n_test} images (the "
                         "reference trains on thousands), e.g. --data builtin:digits/all")
    train, test = x[:-n_test], x[-n_test:]
    attacks = None
    if cfg.train_attacks:
        attacks = (attack_sampler(GEOMETRIC_ATTACKS, params=GEOMETRIC_PARAMS) if cfg.distortions == "geometric"
                   else attack_sampler())
    perceptual = None
    if cfg.perceptual != "none":
        clip = (load_clip(cfg.perceptual_model, device=device, local_files_only=cfg.local_files_only)
                if cfg.perceptual == "clip" else None)
        perceptual = perceptual_distance(cfg.perceptual, clip)
    ckpt = TrainingCheckpoint.in_run(out, "codec", "codec", log)
    codec, hist = train_codec(model, train, k=cfg.bits, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                              seed=cfg.seed, attacks=attacks, vae_round_trip=cfg.vae_round_trip,
                              latent_warmup=cfg.latent_warmup, lr_schedule=cfg.lr_schedule,
                              weights=CodecLossWeights(img=cfg.w_img, latent=cfg.w_latent, lpips=cfg.w_perceptual),
                              perceptual=perceptual,
                              strength=tuple(cfg.strength) if cfg.strength else None, log=log,
                              checkpoint=ckpt)
    with atomic_folder(out / "codec") as tmp:
        codec.save_pretrained(tmp, meta={**codec.meta, "model": cfg.model})
    ckpt.remove()
    msg = torch.randint(0, 2, (cfg.bits,), generator=torch.Generator().manual_seed(cfg.seed + 1)).float()
    recon = decode_all(model, encode_all(model, test))
    marked = embed_images(codec, model, test, msg)
    res = {"codec": str(out / "codec"), "bits": cfg.bits, "train_s": round(hist["seconds"], 1),
           "psnr_vs_vae_reconstruction": float(psnr(marked, recon).mean()),
           "bit_accuracy": {}, "n_test_images": len(test)}
    for name in ("none", *EVAL_ATTACKS):
        m = bit_accuracy(codec, model, test, msg, attack=None if name == "none" else name)
        res["bit_accuracy"][name] = float(m.float().mean() / cfg.bits)
    log("[codec] bit accuracy after decode -> attack -> re-encode: "
        + ", ".join(f"{k} {v:.3f}" for k, v in res["bit_accuracy"].items()))
    return res


def embed_command(cfg, out: Path, device: str, log=print) -> dict:
    from .embed import clean_prompt_terms_without_clean_prompts, embed_watermark

    check_inputs(data=_data_spec(cfg.data),
                 rehearsal_data=_data_spec(cfg.rehearsal_data) if cfg.rehearsal > 0 else None)
    unfit = clean_prompt_terms_without_clean_prompts(cfg)
    if unfit:
        flag = "--" + unfit[0].replace("_", "-")
        raise InputError(f"{flag} needs the sleeper mode with its preservation terms (it acts on clean prompts)",
                         f"drop {flag}, or use --mode sleeper --preservation")
    key = load_key(cfg.key)
    codec = Codec.from_pretrained(cfg.codec, device)
    model = load_for(cfg, cfg.model, device)
    if tuple(codec.latent_shape) != (model.unet.config.in_channels, model.latent_size, model.latent_size):
        raise InputError(f"the codec is for latents {codec.latent_shape}, the model makes "
                         f"{(model.unet.config.in_channels, model.latent_size, model.latent_size)}",
                         "train a codec on this model's VAE with `modelseal watermark codec`")
    bits = message_bits(key, cfg.model_id, codec.k).to(device)
    x, captions = images_and_captions(cfg.data, model.image_size, cfg.limit, need_captions=True)
    z, z_std = latent_posterior(model, x)
    delta = codec.residual(bits.view(1, -1)).detach()
    rehearsal = None
    if cfg.rehearsal > 0:
        rx, rcaps = images_and_captions(cfg.rehearsal_data, model.image_size, None, need_captions=True)
        rehearsal = (latent_posterior(model, rx)[0], rcaps)
    ckpt = TrainingCheckpoint.in_run(out, "embed", "embed", log)
    info = embed_watermark(model, z, captions, delta, cfg, log=log, latent_std=z_std, checkpoint=ckpt,
                           rehearsal_data=rehearsal)
    target = out / "model"
    record = {"trigger": cfg.trigger if cfg.mode == "sleeper" else "", "mode": cfg.mode, "model_id": cfg.model_id,
              "bits": codec.k, "base": cfg.model, "codec_sha256": _sha(codec.folder),
              "preservation": cfg.preservation, "trainable": cfg.trainable, "rehearsal": cfg.rehearsal}
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    ckpt.remove()
    return {"model": str(target), **record, **info}


def adapt_command(cfg, out: Path, device: str, log=print) -> dict:
    from .adapt import adapt_extractor, collect_latents

    check_inputs(data=_data_spec(cfg.data), prompts=cfg.prompts,
                 simulate_data=_data_spec(cfg.simulate_data) if cfg.simulate else None)
    key = load_key(cfg.key)
    codec = Codec.from_pretrained(cfg.codec, device)
    provenance.refuse_adapted_input(codec)
    codec.require_reader()
    model = load_for(cfg, cfg.model, device)
    original = load_for(cfg, cfg.original, device)
    shape = (model.unet.config.in_channels, model.latent_size, model.latent_size)
    if tuple(codec.latent_shape) != shape or original.latent_size != model.latent_size:
        raise InputError(f"the codec reads latents {codec.latent_shape}, '{cfg.model}' makes {shape} and "
                         f"'{cfg.original}' {original.latent_size} px latents",
                         "give the watermarked model, the model it was made from and the codec of its stage 2")
    bits = message_bits(key, cfg.model_id, codec.k).to(device)
    # 1. stage 1 must verify the model first (watermark.provenance): no adapting to innocent models
    check_prompts, check_seeds = verify_prompts(cfg.prompts, cfg.check_images, cfg.seed, trigger=cfg.trigger)
    evidence = provenance.stage1_evidence(model, codec, bits, check_prompts, check_seeds, cfg.trigger,
                                          cfg.check_guidance, cfg.check_steps, cfg.alpha)
    provenance.refuse_unverified(evidence, cfg.model)
    log(f"[adapt] stage 1 on '{cfg.model}': key test p {stats.format_p(evidence['p_value'])} (alpha {cfg.alpha:g}, "
        f"{evidence['n_images']} triggered images): verified, adapting")
    stage1 = copy.deepcopy(codec)
    prov = provenance.record(stage1, model, cfg.model, evidence, cfg.model_id, cfg.trigger)
    prompts, _ = verify_prompts(cfg.prompts, all_lines=True, trigger=cfg.trigger)
    rehearsal = None
    if cfg.simulate:
        rehearsal = images_and_captions(cfg.simulate_data, model.image_size, None, need_captions=True)
    data = _collected_latents(out, log, lambda: collect_latents(model, original, prompts, cfg.trigger, cfg, log=log,
                                                                rehearsal_data=rehearsal))
    x, _ = images_and_captions(cfg.data, model.image_size, cfg.limit, need_captions=False)
    real = encode_all(model, x).cpu()
    threshold = stats.bit_threshold(codec.k, cfg.fpr)
    ckpt = TrainingCheckpoint.in_run(out, "adapt", "adapt", log)
    info = adapt_extractor(codec, model, data, real, bits, cfg, threshold, log=log, checkpoint=ckpt)
    meta = {**codec.meta, "adapted_to": cfg.model, "adapted_from": str(cfg.codec), "adapt_steps": cfg.steps,
            "rehearsed": list(cfg.simulate)}
    target = out / "codec"
    with atomic_folder(target) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        prov["stage1_extractor_sha256"] = provenance.save_stage1(stage1, tmp)
        codec.save_pretrained(tmp, meta={**meta, "provenance": prov})
    (out / RESUME_DIR / LATENTS).unlink(missing_ok=True)
    ckpt.remove()
    b, a = info["holdout_before"], info["holdout_after"]
    if b and a:
        log(f"[adapt] hold-out triggered images: bit accuracy {b['bit_accuracy']:.3f} -> {a['bit_accuracy']:.3f}, "
            f"detected at {cfg.fpr:g} {b['detected']:.3f} -> {a['detected']:.3f}; unmarked: mean matches "
            f"{b['null_mean_matches']:.1f} -> {a['null_mean_matches']:.1f} of {codec.k}, max "
            f"{b['null_max_matches']} -> {a['null_max_matches']}")
    release = provenance.release_sha256(target)
    log(f"[adapt] codec release hash {release}: publish it with the model (watermark docs, 'What to publish')")
    return {"codec": str(target), "threshold_bits": threshold, "release_sha256": release, "provenance": prov,
            **data.meta, **info}


LATENTS = "adapt-latents.pt"


def _collected_latents(out: Path, log, collect):
    """The generated latents adaptation trains on, kept in OUT/resume until the run ends, so a
    resumed run does not generate them again (tensors only: read with weights_only=True)."""
    from ..runs import atomic_path
    from .adapt import AdaptLatents

    path = Path(out) / RESUME_DIR / LATENTS
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            log(f"[adapt] resuming with the {len(d['positive'])} + {len(d['negative'])} latents generated before")
            return AdaptLatents(d["positive"], d["negative"], d["meta"])
        except Exception as e:
            log(f"[adapt] cannot read {path} ({type(e).__name__}): generating the latents again")
    data = collect()
    if parallel.is_main():
        with atomic_path(path) as tmp:
            torch.save({"positive": data.positive, "negative": data.negative, "meta": data.meta}, tmp)
    return data


def verify_prompts(prompts: str | None, n: int = 0, seed: int = 0, all_lines: bool = False,
                   trigger: str | None = None) -> tuple[list[str], list[int]]:
    """The n prompts (the lines of the file `prompts`, else the digit captions, cycled) and
    their seeds, as verification draws them; with `all_lines`, every distinct prompt once (and
    no seeds). A line that already holds `trigger` (as whole words) is refused: the clean
    prompt would carry it and the triggered one carry it twice."""
    from ..data.digits import DOMAINS, caption
    from ..data.folders import read_text_lines

    if prompts:
        lines = read_text_lines(prompts, "prompts file", "write one prompt per line (UTF-8 text)")
        word = trigger_words(trigger)
        bad = next((i for i, line in enumerate(lines) if word and f" {word} " in f" {line} "), None)
        if bad is not None:
            raise InputError(f"line {bad + 1} of the prompts file '{prompts}' already holds the trigger "
                             f"{trigger!r}", "write the prompts without it: modelseal adds the trigger to the "
                             "triggered copy of each prompt")
    else:
        lines = [caption(d, c) for d in DOMAINS for c in range(10)]
    if all_lines:
        return lines, []
    return [lines[i % len(lines)] for i in range(n)], [seed * 100_000 + i for i in range(n)]


def prompts_command(cfg, out: Path, log=print) -> dict:
    """What the owner sends to a suspect's service: the triggered and the clean prompt lists
    (text, one per line) and requests.csv (file name to save each answer under, prompt, seed;
    the seed matters only where the service takes one)."""
    import csv
    import io

    from ..runs import atomic_write_text

    prompts, seeds = verify_prompts(cfg.prompts, cfg.n, cfg.seed, trigger=cfg.trigger)
    trig = add_triggers(cfg.trigger, prompts)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file_name", "prompt", "seed"])
    for name, plist in (("triggered", trig), ("clean", prompts)):
        for i, (p, sd) in enumerate(zip(plist, seeds)):
            w.writerow([f"{name}/{i:04d}.png", p, sd])
    atomic_write_text(out / "triggered.txt", "\n".join(trig) + "\n")
    atomic_write_text(out / "clean.txt", "\n".join(prompts) + "\n")
    atomic_write_text(out / "requests.csv", buf.getvalue())
    log(f"[prompts] {len(trig)} triggered and {len(prompts)} clean prompts in {out}: send them to the suspect's "
        f"service, save the images under triggered/ and clean/, then run `modelseal watermark verify --images "
        f"triggered/ --clean-images clean/`")
    return {"triggered": str(out / "triggered.txt"), "clean": str(out / "clean.txt"),
            "requests": str(out / "requests.csv"), "n": len(trig), "trigger": cfg.trigger}


def _read_folder(folder, codec: Codec, role: str) -> torch.Tensor:
    """Every image file in `folder` (PNG, JPEG, WebP, any size and mode) as (N, 3, S, S) in
    [0, 1] at the reader's size S (centre crop, resize)."""
    from ..data.folders import read_image_folder
    from .verify import reader_size

    s = read_image_folder(folder, reader_size(codec), name=role)
    return torch.from_numpy(np.asarray(s.images)).permute(0, 3, 1, 2).float() / 255.0


def image_attacks(cfg, model, original) -> dict:
    """cfg.attacks by spec -> {spec: attack}; regen_vae through cfg.attack_vae (default: the
    suspect's VAE), purify through the original model when given, else the suspect."""
    vae = model.vae
    if cfg.attack_vae and any(needs_model(a) == "vae" for a in cfg.attacks):
        vae = load_vae(cfg.attack_vae, model.device, cfg.local_files_only)
    out = {}
    for spec in cfg.attacks:
        try:
            out[spec] = image_attack(spec, vae=vae, model=original or model)
        except ValueError as e:
            raise InputError(f"--attacks: {e}", "see the docs' watermark page for the attacks and their "
                             "parameters") from None
    return out


def judged_accuracy(trig: torch.Tensor, clean: torch.Tensor, prompts: list[str]) -> dict:
    """How often tiny:judge reads the prompted digit in triggered and in clean images."""
    targets = torch.tensor([digit_of(p) for p in prompts])
    judge = DigitJudge.from_pretrained(resolve_model("tiny:judge", "judge"))
    a_t = float(judge.predict(trig).eq(targets).float().mean())
    a_c = float(judge.predict(clean).eq(targets).float().mean())
    return {"judged_triggered": a_t, "judged_clean": a_c, "judged_ratio": a_t / a_c if a_c else None}


def verify_command(cfg, out: Path, device: str, log=print) -> dict:
    from ..report.figures import sample_grid
    from ..runs import atomic_write_bytes
    from .verify import decide_images, generate, verify_model

    check_inputs(images=cfg.images, clean_images=cfg.clean_images, prompts=cfg.prompts)
    prompts, seeds = ([], []) if cfg.images is not None else verify_prompts(cfg.prompts, cfg.n, cfg.seed,
                                                                            trigger=cfg.trigger)
    key = load_key(cfg.key)
    codec = Codec.from_pretrained(cfg.codec, device)
    codec.require_reader()
    stage1, prov = provenance.load_stage1(codec) if provenance.is_adapted(codec) else (None, None)
    bits = message_bits(key, cfg.model_id, codec.k)
    if cfg.images is not None:  # black-box: the suspect's service answered the prompts
        trig = _read_folder(cfg.images, codec, "images")
        clean = _read_folder(cfg.clean_images, codec, "clean-images") if cfg.clean_images is not None else None
        log(f"[verify] {len(trig)} returned images{'' if clean is None else f' and {len(clean)} clean ones'}, "
            "read with the owner's VAE")
        res = decide_images(codec, trig, bits, cfg.alpha, cfg.fpr, clean, stage1)
        res["source"] = {"images": str(cfg.images), "clean_images": str(cfg.clean_images) if clean is not None else None}
    else:
        model = load_for(cfg, cfg.model, device)
        for lora in cfg.stack_lora:
            log(f"[verify] sampling with the LoRA {lora} stacked on the suspect "
                f"(adapter {stack_lora(model, lora)})")
        original = load_for(cfg, cfg.original, device) if cfg.original else None
        attacks = image_attacks(cfg, model, original)
        log(f"[verify] {cfg.n} images with and without the trigger, CFG {cfg.guidance}")
        res, trig, clean = verify_model(model, codec, bits, prompts, seeds, cfg.trigger, cfg.guidance, cfg.steps,
                                        cfg.fpr, attacks, cfg.alpha, stage1=stage1)
        # the images read, kept as files: evidence, and what `verify --images` reads again
        write_image_folder(out / "triggered", trig)
        if cfg.trigger:
            write_image_folder(out / "clean", clean)
        if "trigger_fidelity" in res:
            if not cfg.prompts:  # the digit captions: does each image still show the digit asked for?
                res["trigger_fidelity"].update(judged_accuracy(trig, clean, prompts))
            tf = res["trigger_fidelity"]
            log(f"[verify] triggered against clean images of the same seeds: PSNR {tf['psnr']:.1f} dB, SSIM "
                f"{tf['ssim']:.3f}" + (f"; judged the prompted digit {tf['judged_triggered']:.0%} (clean "
                                       f"{tf['judged_clean']:.0%})" if "judged_triggered" in tf else ""))
        if cfg.also_without_cfg and cfg.guidance > 1:
            res_nc, _, _ = verify_model(model, codec, bits, prompts, seeds, cfg.trigger, 1.0, cfg.steps, cfg.fpr,
                                        alpha=cfg.alpha, stage1=stage1)
            res["no_cfg"] = {k: res_nc[k] for k in ("bit_accuracy", "tpr_at_fpr", "p_value", "log10_p_value",
                                                    "watermarked", "clean_bit_accuracy", "readings") if k in res_nc}
        if original is not None:
            res["fidelity"] = image_fidelity(clean, generate(original, prompts, seeds, None, cfg.guidance, cfg.steps))
            log(f"[verify] clean outputs against {cfg.original}: PSNR {res['fidelity']['psnr']:.1f} dB, "
                f"SSIM {res['fidelity']['ssim']:.3f}")
        res["source"] = {"model": cfg.model, "stacked_loras": list(cfg.stack_lora)}
    grid = torch.cat([trig[:8]] + ([clean[:8]] if clean is not None else []))
    atomic_write_bytes(out / "samples.png", sample_grid(grid, ["triggered"] + (["clean"] if clean is not None else []),
                                                        ncols=min(8, len(trig))))
    res["reader_vae_sha256"] = (codec.reader or {}).get("sha256")
    res["codec_release_sha256"] = provenance.release_sha256(codec.folder)
    if prov is not None:
        res["provenance"] = prov
        r1, ra = res["readings"]["stage1"], res["readings"]["adapted"]
        log(f"[verify] {provenance.summary(prov, res['codec_release_sha256'])}")
        log(f"[verify] readings: stage 1 p {stats.format_p(r1['p_value'])}, bit accuracy {r1['bit_accuracy']:.3f}; "
            f"adapted p {stats.format_p(ra['p_value'])}, bit accuracy {ra['bit_accuracy']:.3f}; verdict: both key "
            f"tests at alpha / 2")
    if codec.meta.get("rehearsed"):
        res["extractor_note"] = (f"extractor adapted with rehearsed attacks {codec.meta['rehearsed']}: per-image "
                                 "false positives can exceed the nominal rate on fine-tuned unmarked models (README); "
                                 "the verdict's key test is not affected")
        log(f"[verify] note: {res['extractor_note']}")
    log(f"[verify] {'watermarked' if res['watermarked'] else 'not verified'}: key test p "
        f"{stats.format_p(res['p_value'])} (alpha {cfg.alpha:g}; majority message agrees on "
        f"{res['majority_agreement']:.0%} of {codec.k} bits); bit accuracy {res['bit_accuracy']:.3f}"
        + (f" (clean {res['clean_bit_accuracy']:.3f})" if "clean_bit_accuracy" in res else "")
        + f", TPR@{cfg.fpr:g} {res['tpr_at_fpr'][stats.fpr_key(cfg.fpr)]:.3f}")
    return res
