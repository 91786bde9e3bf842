"""SleeperMark stage-2 step time and peak memory: ours (2 UNet passes per step: teacher and
student each see [triggered; clean] as one batch) against the reference's structure (4
passes: each network, each prompt alone), same model, same batch, same loss.

Each variant runs in its own process so its peak memory (max RSS on CPU, max allocated on
CUDA) is its own.

    python benchmarks/watermark_speed.py                                   # tiny:t2i, CPU
    python benchmarks/watermark_speed.py --device cuda --model sd15-random --batch 4   # on a GPU, 512 px
"""
from __future__ import annotations

import argparse
import json

import torch

from measure import peak_memory, run_variant, seconds_per_step


def worker(args) -> dict:
    from modelseal.watermark.embed import EmbedOptions, Stage2Loss, prepare_student

    dev = args.device
    if args.model == "sd15-random":
        from sd15 import sd15_random

        model = sd15_random(dev)
    else:
        from modelseal.models.diffusion import load_t2i

        model = load_t2i("tiny:t2i", dev)
    if args.bf16:
        model.unet.to(torch.bfloat16)
    teacher, params = prepare_student(model, args.checkpointing)
    c, n = model.unet.config.in_channels, model.latent_size
    delta = torch.randn(1, c, n, n, device=dev) * 0.1
    opts = EmbedOptions(passes=2 if args.variant == "ours" else 4)
    loss_fn = Stage2Loss(model, teacher, delta, opts)
    opt = torch.optim.AdamW(params, lr=1e-4)
    z0 = torch.randn(args.batch, c, n, n, device=dev)
    ctx = model.encode_prompts(["a photo"] * args.batch)
    ctx_tr = model.encode_prompts(["*[Z]& a photo"] * args.batch)
    g = torch.Generator().manual_seed(0)

    def step():
        loss, _ = loss_fn(z0, ctx, ctx_tr, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms = seconds_per_step(step, args.steps, dev, args.warmup) * 1000
    return {"variant": args.variant, "ms_per_step": ms, **peak_memory(dev)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=["tiny", "sd15-random"])
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    res = {}
    for variant in ("reference", "ours"):
        argv = ["--device", args.device, "--model", args.model, "--batch", str(args.batch), "--steps",
                str(args.steps), "--warmup", str(args.warmup)]
        argv += ["--bf16"] if args.bf16 else []
        argv += ["--checkpointing"] if args.checkpointing else []
        res[variant] = run_variant(__file__, variant, argv)
        print(json.dumps(res[variant]))
    ref, ours = res["reference"], res["ours"]
    print(f"stage-2 step, batch {args.batch}: reference (4 passes) {ref['ms_per_step']:.1f} ms, ours (2 passes) "
          f"{ours['ms_per_step']:.1f} ms -> {ref['ms_per_step'] / ours['ms_per_step']:.2f}x faster")
    print(f"peak memory ({ours['memory']}): reference {ref['peak_mb']:.0f} MB, ours {ours['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
