"""SleeperMark stage-2 step time and peak memory against the reference's structure (4 UNet
passes per step: each network, each prompt alone, fp32), same model, same batch, same loss.

Variants:
  reference      4 passes, fp32 (the reference runs --mixed_precision no), and, as in its
                 training loop, the batch's VAE encoding (a posterior sample) and both
                 prompt sets' text encoding every step (--no-encode leaves these out)
  ours-2pass     teacher and student each see [triggered; clean] as one batch
  ours           the same, and the student reuses the teacher's down/mid pass (shared_trunk)
  ours-bf16      ours under bf16 autocast (fp32 weights and optimiser)
  ours-ckpt      ours with gradient checkpointing (memory for time)
  ours-bf16-ckpt both

Each variant runs in its own process so its peak memory (max RSS on CPU, max allocated on
CUDA) is its own.

    python benchmarks/watermark_speed.py                                   # tiny:t2i, CPU
    python benchmarks/watermark_speed.py --device cuda --model sd15-random --batch 4 \
        --variants reference,ours-2pass,ours,ours-bf16,ours-bf16-ckpt      # on a GPU, 512 px
"""
from __future__ import annotations

import argparse
import json

import torch

from measure import peak_memory, run_variant, seconds_per_step


VARIANTS = ["reference", "ours-2pass", "ours", "ours-bf16", "ours-ckpt", "ours-bf16-ckpt"]


def worker(args) -> dict:
    from modelseal.models.diffusion import latent_posterior
    from modelseal.config import EmbedOptions
    from modelseal.watermark.embed import Stage2Loss, prepare_student

    dev = args.device
    if args.model == "sd15-random":
        from sd15 import sd15_random

        model = sd15_random(dev)
    else:
        from modelseal.models.diffusion import load_t2i

        model = load_t2i("tiny:t2i", dev)
    v = args.variant
    teacher, params = prepare_student(model, v.endswith("-ckpt"), teacher="copy" if v == "reference" else "shared")
    c, n = model.unet.config.in_channels, model.latent_size
    delta = torch.randn(1, c, n, n, device=dev) * 0.1
    opts = EmbedOptions(passes=4 if v == "reference" else 2, shared_trunk=v != "ours-2pass",
                        precision="bf16" if "bf16" in v else "fp32")
    loss_fn = Stage2Loss(model, teacher, delta, opts)
    opt = torch.optim.AdamW(params, lr=1e-4)
    pixels = torch.rand(args.batch, 3, n * model.vae_scale, n * model.vae_scale)
    prompts = ["a photo"] * args.batch
    prompts_tr = ["*[Z]& " + p for p in prompts]
    z_mean, z_std = latent_posterior(model, pixels)
    ctx, ctx_tr = model.encode_prompts(prompts), model.encode_prompts(prompts_tr)
    g = torch.Generator().manual_seed(0)

    def step():
        if v == "reference" and not args.no_encode:
            # The reference encodes every batch with the VAE (a posterior sample) and both prompt
            # sets with the text encoder inside its training step; stage 2 here does it once.
            with torch.no_grad():
                zb = model.encode_images(pixels, sample=True).float()
                cb, cb_tr = model.encode_prompts(prompts), model.encode_prompts(prompts_tr)
            loss, _ = loss_fn(zb, cb, cb_tr, g)
        else:  # ours: a posterior sample from the mean and std computed once (embed_watermark's way)
            zb = z_mean + z_std * torch.randn(z_mean.shape, generator=g).to(dev)
            loss, _ = loss_fn(zb, ctx, ctx_tr, g)
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
    ap.add_argument("--variants", default="reference,ours-2pass,ours", help="comma-separated, see above")
    ap.add_argument("--no-encode", action="store_true", help="leave the reference's per-step VAE and text "
                    "encoding out (UNet passes alone)")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown or "reference" not in variants:
        raise SystemExit(f"--variants takes 'reference' and any of {VARIANTS}; got {sorted(unknown)}")
    res = {}
    for variant in variants:
        argv = ["--device", args.device, "--model", args.model, "--batch", str(args.batch), "--steps",
                str(args.steps), "--warmup", str(args.warmup)] + (["--no-encode"] if args.no_encode else [])
        res[variant] = run_variant(__file__, variant, argv)
        print(json.dumps(res[variant]), flush=True)
    ref = res["reference"]
    print(f"stage-2 step, {args.model}, batch {args.batch}, {args.device} (peak memory: {ref['memory']}):")
    for variant, r in res.items():
        print(f"  {variant:15s} {r['ms_per_step']:9.1f} ms/step  {ref['ms_per_step'] / r['ms_per_step']:5.2f}x  "
              f"peak {r['peak_mb']:8.0f} MB")


if __name__ == "__main__":
    main()
