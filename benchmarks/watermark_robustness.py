"""Does the watermark survive the thief's fine-tuning? SleeperMark (triggered) against the
always-on baseline (AquaLoRA-style: the same distillation without a trigger, so every
output carries the residual), both fine-tuned with LoRA and with full fine-tuning on a new
captioned domain that never shows the trigger; bit accuracy and TPR at FPR 1e-6 measured
along the way.

    python benchmarks/watermark_robustness.py --codec runs/wm/codec/codec --out runs/wm-robust
    python benchmarks/watermark_robustness.py --codec C --out O --sleeper M1 --always-on M2

Without --sleeper / --always-on both are embedded here first (stage 2 with --embed-steps,
--eta) and saved under OUT (reused when present). Writes OUT/robustness.json and
OUT/robustness.png (bit accuracy and TPR against fine-tuning steps). `--kinds unmarked`
adds a null control: the original model fine-tuned the same way and read with the same
trigger and key (its "TPR" is a false-positive rate; it should stay near 0).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def bits_for(args, k: int) -> torch.Tensor:
    from modelseal.watermark.keys import load_key, message_bits

    key = load_key(args.key) if args.key else np.random.default_rng(args.seed).bytes(32)
    return message_bits(key, args.model_id, k)


def embedded(kind: str, args, codec, bits, log) -> Path | str:
    """The watermarked model of `kind` (sleeper | always_on): given, or embedded and saved;
    for `unmarked`, the original model (a null control: its detection rate is a false-positive rate)."""
    from modelseal.models.diffusion import load_t2i
    from modelseal.models.diffusion import latent_posterior
    from modelseal.watermark.embed import EmbedOptions, embed_watermark
    from modelseal.watermark.run import images_and_captions

    if kind == "unmarked":
        return args.model
    given = args.sleeper if kind == "sleeper" else args.always_on
    if given:
        return Path(given)
    folder = args.out / kind
    if (folder / "model_index.json").is_file():
        log(f"[robustness] reusing {folder}")
        return folder
    model = load_t2i(args.model)
    x, caps = images_and_captions("builtin:digits/all", model.image_size, args.embed_images, need_captions=True)
    delta = codec.residual(bits.view(1, -1)).detach()
    opts = EmbedOptions(trigger=args.trigger, steps=args.embed_steps, lr=args.lr, grad_clip=None, eta=args.eta,
                        tau=args.tau, beta=args.beta, uncond_fraction=args.uncond_fraction, mode=kind,
                        posterior_sample=not args.posterior_mean, seed=args.seed)
    z, z_std = latent_posterior(model, x)
    info = embed_watermark(model, z, caps, delta, opts, log=log, latent_std=z_std)
    tmp = args.out / f"{kind}.partial"
    model.save_pretrained(tmp)
    tmp.rename(folder)
    (folder / "embed.json").write_text(json.dumps(info, indent=2))
    return folder


def measure(model, codec, bits, prompts, seeds, trigger, guidance, steps, reference=None) -> dict:
    """Bits under the trigger; with `reference` (clean images of the model before fine-tuning),
    how far fine-tuning moved the clean outputs (PSNR on the same seeds)."""
    from modelseal.watermark.codec import psnr
    from modelseal.watermark.verify import decide, generate, read_bits

    s = decide(read_bits(codec, generate(model, prompts, seeds, trigger, guidance, steps)), bits)
    out = {"bit_accuracy": s["bit_accuracy"], "tpr": s["tpr_at_fpr"]["1e-6"], "p_value": s["p_value"],
           "watermarked": s["watermarked"]}
    if reference is not None:
        out["clean_psnr_vs_before"] = float(psnr(generate(model, prompts, seeds, None, guidance, steps), reference).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="tiny:t2i")
    ap.add_argument("--sleeper", default=None, help="a SleeperMark-watermarked model folder")
    ap.add_argument("--always-on", default=None, help="an always-on-watermarked model folder")
    ap.add_argument("--key", default=None, help="owner key file (default: a seeded random key)")
    ap.add_argument("--model-id", default="robustness")
    ap.add_argument("--embed-steps", type=int, default=3000)
    ap.add_argument("--embed-images", type=int, default=2400)
    ap.add_argument("--eta", type=float, default=0.3)
    ap.add_argument("--tau", type=float, default=100.0)
    ap.add_argument("--beta", type=float, default=30.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--uncond-fraction", type=float, default=0.2)
    ap.add_argument("--posterior-mean", action="store_true", help="stage 2 on the VAE posterior mean, as "
                    "configs/watermark-embed.tiny.yaml (default: a posterior sample per step)")
    ap.add_argument("--data", default="builtin:faces", help="the thief's captioned domain")
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    ap.add_argument("--kinds", nargs="+", default=["sleeper", "always_on"], choices=["sleeper", "always_on", "unmarked"])
    ap.add_argument("--ft-steps", type=int, default=2000)
    ap.add_argument("--ft-lr", type=float, default=None, help="fine-tuning lr (default: finetune.default_lr)")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 100, 250, 500, 1000, 2000])
    ap.add_argument("--n", type=int, default=64, help="images per measurement")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30, help="sampling steps")
    ap.add_argument("--trigger", default="sks ", help="as in configs/watermark-embed.tiny.yaml")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from modelseal.attacks.finetune import FinetuneOptions, finetune
    from modelseal.data.digits import DOMAINS, caption
    from modelseal.data.sources import load_source
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.verify import generate

    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    codec = Codec.from_pretrained(args.codec)
    bits = bits_for(args, codec.k)
    lines = [caption(d, c) for d in DOMAINS for c in range(10)]
    prompts = [lines[i % len(lines)] for i in range(args.n)]
    seeds = [500_000 + i for i in range(args.n)]
    data = load_source(args.data, "train", load_t2i(args.model).image_size)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    checkpoints = sorted({c for c in args.checkpoints if c <= args.ft_steps})
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "curves": {}}
    for kind in args.kinds:
        folder = embedded(kind, args, codec, bits, log)
        trigger = None if kind == "always_on" else args.trigger
        base = load_t2i(folder)
        with torch.no_grad():
            reference = generate(base, prompts, seeds, None, args.guidance, args.steps)
        for method in args.methods:
            model = copy.deepcopy(base)
            curve = []

            def probe(step: int) -> None:
                if step in checkpoints:
                    r = measure(model, codec, bits, prompts, seeds, trigger, args.guidance, args.steps, reference)
                    curve.append({"step": step, **r})
                    log(f"[robustness] {kind} {method} step {step}: bit acc {r['bit_accuracy']:.3f} "
                        f"TPR@1e-6 {r['tpr']:.3f}; clean outputs vs before {r['clean_psnr_vs_before']:.1f} dB")

            t0 = time.time()
            probe(0)
            if args.ft_steps > 0:
                finetune(model, x, list(data.captions), FinetuneOptions(method=method, steps=args.ft_steps,
                                                                      lr=args.ft_lr, seed=args.seed),
                         log=lambda s: None, on_step=probe)
            results["curves"][f"{kind}/{method}"] = {"points": curve, "seconds": round(time.time() - t0, 1)}
            (args.out / "robustness.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "robustness.png")
    print(f"{'model/method':<22}" + "".join(f"{c:>8}" for c in checkpoints))
    for name, c in results["curves"].items():
        print(f"{name:<22}" + "".join(f"{p['tpr']:>8.3f}" for p in c["points"]) + "   TPR@1e-6")
        print(f"{'':<22}" + "".join(f"{p['bit_accuracy']:>8.3f}" for p in c["points"]) + "   bit acc")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, c in results["curves"].items():
        steps = [max(p["step"], 1) for p in c["points"]]
        style = "-" if name.startswith("sleeper") else "--"
        axes[0].plot(steps, [p["tpr"] for p in c["points"]], style, marker="o", label=name)
        axes[1].plot(steps, [p["bit_accuracy"] for p in c["points"]], style, marker="o", label=name)
    for ax, label in zip(axes, ("TPR at FPR 1e-6", "bit accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("fine-tuning steps (0 plotted at 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.rename(path)


if __name__ == "__main__":
    main()
