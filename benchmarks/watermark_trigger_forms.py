"""How far does the trigger's own text move an unmarked model's image? (issue 39: hidden)

    python benchmarks/watermark_trigger_forms.py --out runs/trigger-forms [--model tiny:t2i] [--n 256]
                                                 [--resolution 64] [--forms "sks " "{} sks" ...]

SleeperMark's triggered image should be the clean image plus a residual nobody sees. Before
any mark is planted, the trigger's words already change the picture; with the paper's anchor
(the original model's output for the triggered prompt) stage 2 cannot bring the triggered
image closer than that. This script samples the verification prompts (the digit captions,
CFG 7.5, 30 DDIM steps, the same seeds as `watermark verify`) clean and with each trigger form
(a prefix, or a template where '{}' stands for the prompt), and reports PSNR / SSIM of each
triggered image against the clean one of the same seed, and the judge's prompted-digit rate.
Writes OUT/forms.json (with the commit) and prints the table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from modelseal.models.diffusion import load_t2i
from modelseal.quality import psnr, ssim
from modelseal.runs import git_sha, write_json
from modelseal.watermark.run import judged_accuracy, verify_prompts
from modelseal.watermark.trigger import add_triggers

FORMS = ["*[Z]& ", "sks ", "{} sks", "{} *[Z]&", "{}, sks"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="tiny:t2i")
    ap.add_argument("--resolution", type=int, default=None, help="working side (default: the model's)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--forms", nargs="+", default=FORMS)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_t2i(args.model, resolution=args.resolution)
    prompts, seeds = verify_prompts(None, args.n, 0)

    def sample(trigger):
        return model.sample(add_triggers(trigger, prompts, model.tokenizer), seeds=seeds, steps=30, guidance=7.5,
                            batch_size=64)

    t0 = time.time()
    clean = sample(None)
    rows = {}
    for form in args.forms:
        x = sample(form)
        rows[form] = {"psnr": float(psnr(x, clean).mean()), "ssim": float(ssim(x, clean).mean()),
                      **judged_accuracy(x, clean, prompts)}
        r = rows[form]
        print(f"{form!r:12} {r['psnr']:5.1f} dB  SSIM {r['ssim']:.3f}  judged {r['judged_triggered']:.0%} "
              f"(clean {r['judged_clean']:.0%})", flush=True)
    write_json(args.out / "forms.json", {"model": args.model, "resolution": model.image_size, "n": args.n,
                                         "commit": (git_sha() or "unknown")[:7], "seconds": round(time.time() - t0), "forms": rows})


if __name__ == "__main__":
    main()
