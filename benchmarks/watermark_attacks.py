"""The field's image attacks and stacked adapters against a watermarked model, with what the
mark costs beside them (docs/benchmarks/watermark.md, "Image attacks of the field").

1. `watermark verify` on the model with every attack of the table (one run: the same
   triggered images under each), its trigger fidelity and its clean images' key test; then
   VAE regeneration through another autoencoder (`--attack-vae`; by default a tiny VAE
   trained here by the zoo's own recipe with another seed, about 4 min, kept in OUT);
2. a third party's LoRA, trained with `modelseal finetune --method lora` on another domain
   from the original model, stacked on the watermarked one (`--stack-lora`): the verdict
   on what the stacked model samples, per LoRA strength of training.

    python benchmarks/watermark_attacks.py --out runs/bench-attacks            # the shipped sleeper
    python benchmarks/watermark_attacks.py --out runs/b --model runs/wm/model --codec runs/adapt/codec \
        --key owner.key --model-id my-model --trigger "sks " --original tiny:t2i
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import modelseal
from modelseal.models.sleeper_entry import entry_record
from modelseal.runs import git_sha
from modelseal.stats import format_p
from modelseal.watermark.keys import generate_key

ATTACKS = ["none", "jpeg", "gaussian_blur", "gaussian_noise", "resize", "color_jitter", "crop:keep=0.9", "crop",
           "crop:keep=0.7", "crop:keep=0.5", "crop:keep=0.7,position=random", "rotation:angle=5",
           "rotation:angle=15", "combined", "regen_vae", "purify:strength=0.1", "purify:strength=0.2",
           "purify:strength=0.3"]
LORAS = [("faces", 500, 1e-4), ("faces", 2000, 1e-4), ("textures", 1000, 1e-4)]  # domain, steps, lr


def commit() -> str:
    return (git_sha() or "unknown")[:7]


def other_vae(folder: Path) -> Path:
    """A tiny VAE by the zoo's recipe (zoobuild.stages.train_vae) with seed 1: an autoencoder
    of the same kind that the owner's reader never used; trained once into `folder`."""
    from modelseal.config import ZooConfig
    from modelseal.zoobuild.stages import train_vae

    if not (folder / "vae" / "config.json").is_file():
        info = train_vae(ZooConfig(seed=1), folder, log=print)
        (folder / "vae.json").write_text(json.dumps(info, indent=2))
    return folder / "vae"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="tiny:sleeper")
    ap.add_argument("--codec", default="tiny:sleeper-codec")
    ap.add_argument("--key", help="owner key (default: the shipped sleeper's published demo key)")
    ap.add_argument("--model-id")
    ap.add_argument("--trigger")
    ap.add_argument("--original", default="tiny:t2i")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--loras", nargs="*", default=[f"{d}:{s}:{lr:g}" for d, s, lr in LORAS],
                    help="third-party LoRAs to stack, domain:steps:lr (domain: a built-in source name)")
    ap.add_argument("--attack-vae", help="the other autoencoder regen_vae goes through (default: train one)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.attack_vae is None:
        args.attack_vae = str(other_vae(args.out / "attack-vae"))
    if args.key is None:
        rec = entry_record()
        args.key = str(args.out / "demo.key")
        if not Path(args.key).exists():
            generate_key(args.key, secret=bytes.fromhex(rec["demo_key"]["secret"]))
        args.model_id, args.trigger = args.model_id or rec["model_id"], args.trigger or rec["trigger"]
    common = dict(model=args.model, codec=args.codec, key=args.key, model_id=args.model_id, trigger=args.trigger,
                  n=args.n, also_without_cfg=False, overwrite=True)
    t0 = time.time()
    run = modelseal.watermark_verify(out=args.out / "verify", original=args.original, attacks=ATTACKS, **common)
    regen = modelseal.watermark_verify(out=args.out / "verify-other-vae", attacks=["regen_vae"],
                                       attack_vae=args.attack_vae, **common)
    attacked = {**run["attacks"], "regen_vae (another VAE)": regen["attacks"]["regen_vae"]}
    rows = [{"attack": k, **{m: v[m] for m in ("bit_accuracy", "p_value", "watermarked", "psnr")},
             "tpr": v["tpr_at_fpr"]["1e-6"]} for k, v in attacked.items()]
    cost = {"trigger_fidelity": run["trigger_fidelity"], "clean_bit_accuracy": run["clean_bit_accuracy"],
            "clean_p_value": run["clean_p_value"], "fidelity": run.get("fidelity")}
    stacked = []
    for spec in args.loras:
        domain, steps, lr = spec.split(":")
        ft = modelseal.finetune(out=args.out / f"lora-{domain}-{steps}", method="lora", data=f"builtin:{domain}",
                                model=args.original, steps=int(steps), lr=float(lr), overwrite=True)
        v = modelseal.watermark_verify(out=args.out / f"stacked-{domain}-{steps}", stack_lora=[str(ft.path / "model")],
                                       attacks=[], **common)
        stacked.append({"lora": spec, "bit_accuracy": v["bit_accuracy"], "tpr": v["tpr_at_fpr"]["1e-6"],
                        "p_value": v["p_value"], "watermarked": v["watermarked"],
                        "trigger_fidelity": v["trigger_fidelity"]})
    out = {"commit": commit(), "model": args.model, "codec": args.codec, "n": args.n, "attacks": rows, "cost": cost,
           "stacked": stacked, "seconds": round(time.time() - t0, 1)}
    (args.out / "attacks.json").write_text(json.dumps(out, indent=2))
    print(f"{'attack':<32}{'bit acc':>9}{'TPR@1e-6':>10}{'key p':>10}  verdict        PSNR dB")
    for r in rows:
        print(f"{r['attack']:<32}{r['bit_accuracy']:>9.3f}{r['tpr']:>10.2f}{format_p(r['p_value']):>10}  "
              f"{'watermarked' if r['watermarked'] else 'not verified':<15}{r['psnr']:>6.1f}")
    tf = cost["trigger_fidelity"]
    print(f"cost: triggered vs clean PSNR {tf['psnr']:.1f} dB SSIM {tf['ssim']:.3f}"
          + (f", judged {tf['judged_triggered']:.0%} vs {tf['judged_clean']:.0%}" if "judged_triggered" in tf else "")
          + f"; clean images bit acc {cost['clean_bit_accuracy']:.3f}, key p {format_p(cost['clean_p_value'])}")
    for s in stacked:
        print(f"stacked LoRA {s['lora']:<20} bit acc {s['bit_accuracy']:.3f} TPR {s['tpr']:.2f} "
              f"p {format_p(s['p_value'])} {'watermarked' if s['watermarked'] else 'not verified'}")
    print(f"commit {out['commit']}, {out['seconds']:.0f} s; {args.out / 'attacks.json'}")


if __name__ == "__main__":
    main()
