"""CGI-DM cost per image: ours against the reference code's structure, same models, same steps.

Reference structure (Revelio's PGD loop, re-written here to measure it): one image at a
time, one Monte Carlo sample per step, UNet parameters left requiring grad, J.backward
with retain_graph=True every step, separate noise for the two models, two full model
copies (also for a LoRA suspect). Ours: images batched, parameters frozen, one
autograd.grad call per step, shared noise, a LoRA suspect as one base model.

Both run the same number of PGD steps with one MC sample per step, so the AUROC they
reach on the same members / hold-out images is comparable; the suspect is a DreamBooth
fine-tune of tiny:t2i made here. Each variant runs in its own process so its peak
memory (max RSS on CPU, max allocated on CUDA) is its own.

On sd15-random both variants run in --dtype (the reference holds its two pipelines in
fp16); --suspect full gives both variants two UNets, --suspect lora gives ours one base
UNet with a rank-8 LoRA switched on and off (the reference: two full copies).

    python benchmarks/audit_speed.py                 # tiny zoo, CPU
    python benchmarks/audit_speed.py --device cuda --model sd15-random --size 512 --images 4 --dtype fp16
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from measure import peak_memory, run_variant


def reference_invert(pre, ft, x, prompt, steps, eps_r, step_size, keep, g):
    """One image: the reference's loop structure (params requiring grad, retained graphs)."""
    for m in (pre, ft):
        m.unet.requires_grad_(True)
    z0 = pre.encode_images(x).float().detach()
    with torch.no_grad():
        z_p = pre.encode_images(pre.decode_latents(z0 * keep)).float()
        ctx = pre.encode_prompts([prompt])
    alphas = pre.scheduler.alphas_cumprod.to(z0.device)
    delta = torch.zeros_like(z0, requires_grad=True)
    for _ in range(steps):
        z = keep * z0 + (1 - keep) * (z_p + delta)
        t = torch.randint(1, 1000, (1,), generator=g).to(z0.device)
        a = alphas[t].view(-1, 1, 1, 1)
        losses = []
        for m in (pre, ft):
            eps = torch.randn(z0.shape, generator=g).to(z0.device)
            pred = m.unet((a.sqrt() * z + (1 - a).sqrt() * eps).to(m.dtype), t, encoder_hidden_states=ctx).sample
            losses.append(((pred.float() - eps) ** 2).mean())
        j = losses[0] - losses[1]
        j.backward(retain_graph=True)
        with torch.no_grad():
            gr = delta.grad * (1 - keep)
            nd = delta + step_size * gr / gr.norm().clamp_min(1e-12)
            nd = nd * torch.clamp(eps_r / nd.norm().clamp_min(1e-12), max=1.0)
            delta.copy_(nd)
            delta.grad = None
    with torch.no_grad():
        return pre.decode_latents(keep * z0 + (1 - keep) * (z_p + delta))


def worker(args) -> dict:
    from modelseal.audit.inversion import block_mask, invert, radius
    from modelseal.audit.run import load_pair
    from modelseal.audit.scoring import similarity
    from modelseal.config import InversionOptions
    from modelseal.data.folders import read_image_folder
    from modelseal.stats import auroc

    dev = args.device
    if args.model == "sd15-random":
        from sd15 import sd15_random

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        pre = sd15_random(dev).to(dtype=dtype)
        if args.variant == "ours" and args.suspect_kind == "lora":
            from modelseal.attacks.finetune import add_lora

            add_lora(pre, 8)
            pre.to(dtype=dtype).requires_grad_(False)
            ft = pre
        else:
            ft = sd15_random(dev).to(dtype=dtype)
        x = torch.rand(args.images, 3, args.size, args.size)
        labels = None
    else:
        pre, ft = load_pair("tiny:t2i", args.suspect, dev)
        if args.variant == "reference" and pre is ft:
            raise SystemExit("reference variant needs a full suspect")
        mem = read_image_folder(Path(args.data) / "members", pre.image_size).images
        hold = read_image_folder(Path(args.data) / "holdout", pre.image_size).images
        import numpy as np

        x = torch.from_numpy(np.concatenate([mem, hold])).permute(0, 3, 1, 2).float() / 255
        labels = [1] * len(mem) + [0] * len(hold)
    opts = InversionOptions(steps=args.steps, mc_samples=1, batch_size=args.batch)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.time()
    if args.variant == "ours":
        recs, keeps = [], []
        for s in range(0, len(x), args.batch):
            inv = invert(pre, ft, x[s:s + args.batch], "a sks digit", opts, offset=s)
            recs.append(inv.recovered); keeps.append(inv.keep_pixels)
        rec, keep_px = torch.cat(recs), torch.cat(keeps)
    else:
        g = torch.Generator().manual_seed(0)
        lat = x.shape[-1] // pre.vae_scale
        keep = block_mask((lat, lat), 2).to(dev).view(1, 1, lat, lat)
        eps_r, step = radius(opts, torch.zeros(1, 4, lat, lat), keep.cpu())
        rec = torch.cat([reference_invert(pre, ft, x[i:i + 1], "a sks digit", args.steps, float(eps_r[0]),
                                          float(step[0]), keep, g).cpu() for i in range(len(x))])
        keep_px = torch.nn.functional.interpolate(keep.cpu(), size=x.shape[-2:]).expand(len(x), 1, *x.shape[-2:])
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    sec = (time.time() - t0) / len(x)
    out = {"variant": args.variant, "seconds_per_image": sec, **peak_memory(dev)}
    if labels is not None:
        s = similarity(x, rec, keep_px)["ssim_removed"].numpy()
        out["auroc_ssim_removed"] = auroc(s, labels)
    return out


def make_suspect(tmp: Path, members: int) -> tuple[str, str]:
    from modelseal.attacks.run import finetune_command
    from modelseal.config import FinetuneConfig
    from modelseal.data.subjects import builtin_subject, write_split

    f = write_split(builtin_subject("mnist/5"), tmp / "data", {"members": members, "holdout": members})
    finetune_command(FinetuneConfig(method="dreambooth", data=str(f["members"]), prompt="a sks digit", steps=200),
                     tmp / "suspect", "cpu", log=lambda m: None)
    return str(tmp / "suspect" / "model"), str(tmp / "data")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=["tiny", "sd15-random"])
    ap.add_argument("--size", type=int, default=512, help="sd15-random image size")
    ap.add_argument("--images", type=int, default=8, help="members and hold-out each (tiny), or images (sd15)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="sd15-random weights")
    ap.add_argument("--suspect-kind", default="full", choices=["full", "lora"], help="sd15-random suspect")
    ap.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--suspect", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if args.model == "tiny":
            suspect, data = make_suspect(Path(tmp), args.images)
            extra = ["--suspect", suspect, "--data", data]
        res = {}
        for variant in ("reference", "ours"):
            res[variant] = run_variant(__file__, variant, [
                "--device", args.device, "--model", args.model, "--size", str(args.size), "--images",
                str(args.images), "--steps", str(args.steps), "--batch", str(args.batch), "--dtype", args.dtype,
                "--suspect-kind", args.suspect_kind, *extra])
            print(json.dumps(res[variant]), flush=True)
    ref, ours = res["reference"], res["ours"]
    print(f"seconds per image at {args.steps} steps: reference {ref['seconds_per_image']:.3f}, "
          f"ours {ours['seconds_per_image']:.3f}  -> {ref['seconds_per_image'] / ours['seconds_per_image']:.1f}x faster")
    print(f"peak memory ({ours['memory']}): reference {ref['peak_mb']:.0f} MB, ours {ours['peak_mb']:.0f} MB")
    if "auroc_ssim_removed" in ours:
        print(f"AUROC (ssim_removed): reference {ref['auroc_ssim_removed']:.3f}, ours {ours['auroc_ssim_removed']:.3f}")


if __name__ == "__main__":
    main()
