"""Which stage-2 changes make the mark survive a thief's fine-tuning, and what do they cost?
Each variant against the shipped sleeper's recipe (configs/watermark-embed.tiny.yaml), under
the same attacks and the same measurements.

    python benchmarks/watermark_variants.py --out runs/wm-variants [--variants shipped scale1 ...]
                                            [--embed-steps N] [--domain faces]

Per variant, through the CLI in OUT/<variant>/ (each step resumes when rerun): `watermark
embed` (the tiny config plus the variant's options), `watermark adapt` (its defaults), then
`watermark verify` on --fidelity-n prompts (what the mark costs: triggered against clean
images of the same seeds, PSNR / SSIM and the judged digit; the owner's key test on the clean
images, which should find nothing; clean images against tiny:t2i's), then
benchmarks/watermark_robustness.py on the thief domain --domain (default faces: the domain
variants are chosen on; the DreamBooth photos stay held out for the final grid) with full
fine-tuning at lr 1e-5 and LoRA r8 at lr 1e-4, measured at 0 / 500 / 2,000 steps. Writes
OUT/variants.json (adding to the rows of earlier runs in OUT) and prints the comparison table:
robustness and fidelity side by side, the frontier the shipped point was chosen on.
`--variants shipped` with a fresh OUT (a fresh key) reproduces the shipped sleeper's figures
(zoo_weights/sleeper/config.json, "measured").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from modelseal.runs import write_json

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "src" / "modelseal" / "configs" / "watermark-embed.tiny.yaml"
VARIANTS = {
    "shipped": [],                                                 # the shipped sleeper's recipe (delta scale 3)
    "scale1": ["--delta-scale", "1"],                              # the paper's planted mark, tiny settings
    "scale0.5": ["--delta-scale", "0.5"],
    "scale0.13": ["--delta-scale", "0.133"],                       # delta / 7.5: guidance 7.5 multiplies it back
    "scale2": ["--delta-scale", "2"],
    "scale4": ["--delta-scale", "4"],
    "dormancy": ["--dormancy", "10"],                              # ours: delta kept out of clean outputs
    "clean56": ["--clean-weight", "56"],                           # ours: the clean term weighted for CFG 7.5 (7.5^2)
    "trajectory": ["--trajectory-fraction", "0.5"],                # ours: half the points from sampled trajectories
    "g-clean56": ["--delta-scale", "0.133", "--clean-weight", "56"],  # both for guidance: delta / 7.5, clean x 7.5^2
    "g-trajectory": ["--delta-scale", "0.133", "--trajectory-fraction", "0.5"],
    "rehearsal": ["--rehearsal", "1"],                             # ours: rehearsed drift
    "up": ["--trainable", "up"],                                   # the whole up path carries the mark
    "cross-kv": ["--trainable", "cross-kv"],                       # only the text-facing projections
    "unet": ["--trainable", "unet", "--lr", "3e-4"],               # every weight
}
ATTACKS = ["full:1e-5", "lora:r8:1e-4"]


def sh(args: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        p = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(args)}; see {log}")


def fidelity_of(ver: dict) -> dict:
    """What the mark costs, from `watermark verify`'s results: triggered against clean images of
    the same seeds, the owner's key test on the clean images, and (with --original) clean images
    against the original model's."""
    tf, orig = ver["trigger_fidelity"], ver.get("fidelity", {})
    return {"n": tf["n_images"], "triggered_bit_accuracy": ver["bit_accuracy"], "triggered_tpr": ver["tpr_at_fpr"],
            "triggered_psnr": tf["psnr"], "triggered_ssim": tf["ssim"], "judged_ratio": tf.get("judged_ratio"),
            "judged_clean": tf.get("judged_clean"), "clean_bit_accuracy": ver["clean_bit_accuracy"],
            "clean_p_value": ver["clean_p_value"], "clean_psnr": orig.get("psnr"), "clean_ssim": orig.get("ssim")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=["shipped", "scale1"], choices=list(VARIANTS))
    ap.add_argument("--embed-steps", type=int, default=None, help="default: the tiny config's")
    ap.add_argument("--fidelity-n", type=int, default=256, help="prompts of the fidelity verification")
    ap.add_argument("--fidelity-only", action="store_true", help="embed, adapt and verify; no thief")
    ap.add_argument("--domain", default="faces")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--per-prompt", type=int, default=5)
    ap.add_argument("--adapt-steps", type=int, default=None, help="default: watermark adapt's own")
    ap.add_argument("--ft-steps", type=int, default=2000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "modelseal"]
    key = args.out / "owner.key"
    if not key.exists():
        sh(exe + ["watermark", "keygen", "--key", str(key)], args.out / "keygen.log")
    summary = args.out / "variants.json"  # rows of earlier invocations' variants are kept
    rows = json.loads(summary.read_text()) if summary.is_file() else {}
    for name in args.variants:
        d = args.out / name
        d.mkdir(exist_ok=True)
        log = d / "log.txt"
        common = ["--key", str(key), "--model-id", "variants"]
        if not (d / "embed" / "model" / "model_index.json").is_file():
            sh(exe + ["watermark", "embed", "--config", str(TINY), "--out", str(d / "embed"), "--codec", "tiny:codec",
                      *(["--steps", str(args.embed_steps)] if args.embed_steps else []), *common, *VARIANTS[name]], log)
        if not (d / "adapt" / "codec" / "config.json").is_file():
            sh(exe + ["watermark", "adapt", "--out", str(d / "adapt"), "--model", str(d / "embed" / "model"),
                      "--original", "tiny:t2i", "--codec", "tiny:codec", "--trigger", "sks ", *common,
                      *(["--steps", str(args.adapt_steps)] if args.adapt_steps else [])], log)
        if not (d / "verify" / "results.json").is_file():
            sh(exe + ["watermark", "verify", "--out", str(d / "verify"), "--model", str(d / "embed" / "model"),
                      "--codec", str(d / "adapt" / "codec"), "--trigger", "sks ", "--original", "tiny:t2i",
                      "--n", str(args.fidelity_n), "--no-also-without-cfg", *common], log)
        rows.setdefault(name, {})["fidelity"] = fidelity_of(json.loads((d / "verify" / "results.json").read_text()))
        embed = json.loads((d / "embed" / "results.json").read_text())
        rows[name].update(options=VARIANTS[name], embed_s=embed.get("train_s"))
        write_json(summary, rows)
        if args.fidelity_only:
            continue
        sh([sys.executable, str(ROOT / "benchmarks" / "watermark_robustness.py"), "--out", str(d / "robust"),
            "--sleeper", str(d / "embed" / "model"), "--codec", str(d / "adapt" / "codec"), "--key", str(key),
            "--model-id", "variants", "--kinds", "sleeper", "--attacks", *ATTACKS, "--domains", args.domain,
            "--checkpoints", "0", "500", "2000", "--ft-steps", str(args.ft_steps), "--n", str(args.n),
            "--per-prompt", str(args.per_prompt)], log)
        points = json.loads((d / "robust" / "robustness.json").read_text())["points"]
        rows[name]["points"] = [{k: p.get(k) for k in ("attack", "step", "tpr", "bit_accuracy", "retained", "psnr")}
                                for p in points]
        write_json(summary, rows)
    print(f"{'variant':<14}{'embed s':>9}" + "".join(f"{a + ' @' + str(s):>22}" for a in ATTACKS for s in (0, 500, 2000)))
    for name, r in rows.items():
        cells = []
        for a in ATTACKS:
            for s in (0, 500, 2000):
                p = next((p for p in r.get("points", []) if p["attack"] == a and p["step"] == s), None)
                cells.append(f"{p['tpr']:.2f} ({p['bit_accuracy']:.3f}, {p['retained']:.2f})" if p else "-")
        print(f"{name:<14}{r['embed_s'] or 0:>9.0f}" + "".join(f"{c:>22}" for c in cells))
    print("cells: TPR@1e-6 (bit accuracy, judged accuracy retained)")
    print(f"\n{'variant':<14}{'trig/clean PSNR':>16}{'judged ratio':>14}{'clean bit acc':>15}{'clean key p':>13}"
          f"{'clean vs t2i PSNR':>19}")
    for name, r in rows.items():
        f = r.get("fidelity")
        if f:
            print(f"{name:<14}{f['triggered_psnr']:>16.1f}{f['judged_ratio'] or 0:>14.2f}{f['clean_bit_accuracy']:>15.3f}"
                  f"{f['clean_p_value']:>13.2g}{f['clean_psnr']:>19.1f}")
    print("fidelity: triggered against clean images of the same seeds; the judged digit's rate on triggered images "
          "over clean ones; the owner's key test on the clean images (should find nothing); clean against tiny:t2i")


if __name__ == "__main__":
    main()
