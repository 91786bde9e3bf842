"""Where does a sleeper's mark leak into clean outputs? Two diagnostics, on the shipped sleeper
by default (or --sleeper with --codec, --key, --model-id, --trigger of your own):

    python benchmarks/watermark_leak.py [--n 64] [--guidance 7.5] [--out runs/wm-leak.json]

1. Branch swap. Classifier-free guidance mixes two UNet outputs, u (the empty prompt) and c (the
   prompt): u + g (c - u). Each is taken from the sleeper (S) or from the original model (T),
   and the images of the same prompts and seeds are read with the owner's extractor: the key
   test's p and the bit accuracy per combination, clean and triggered, and PSNR against T/T.
   A mark read in "u from T, c from S" but not in "u from S, c from T" comes in with the
   prompt's branch (and guidance multiplies it by g); the other way round, with the empty one.
2. Trajectory against training points. Stage 2 trains on q-sampled points z_t of real images;
   sampling visits the points of its own trajectory. At both, for the clean prompt, the shift
   of the x0 estimate dx0 = -sqrt((1 - a) / a) (eps_S - eps_T) and its share of the planted
   residual, c = <dx0, delta> / <delta, delta> (delta = E(m), scale 1), per range of t: a share
   that is near zero at training points but not along the trajectory is a leak the clean term
   never sees. The same for the triggered prompt (what stage 2 planted there).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler

from modelseal.watermark.trigger import add_triggers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sleeper", default="tiny:sleeper")
    ap.add_argument("--original", default="tiny:t2i")
    ap.add_argument("--codec", default="tiny:sleeper-codec", help="the owner's extractor (adapted or stage 1)")
    ap.add_argument("--key", default=None, help="default: the shipped sleeper's published demo key")
    ap.add_argument("--model-id", default=None)
    ap.add_argument("--trigger", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from modelseal.data.digits import DOMAINS, caption, load_digits_domain
    from modelseal.models.diffusion import load_t2i
    from modelseal.models.sleeper_entry import entry_record
    from modelseal.quality import psnr
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.keys import load_key, message_bits
    from modelseal.watermark.run import verify_prompts
    from modelseal.watermark.verify import decide_images, quantize

    torch.set_grad_enabled(False)
    rec = entry_record() if args.key is None or args.model_id is None or args.trigger is None else {}
    key = load_key(args.key) if args.key else bytes.fromhex(rec["demo_key"]["secret"])
    model_id, trigger = args.model_id or rec["model_id"], args.trigger or rec["trigger"]
    S, T = load_t2i(args.sleeper), load_t2i(args.original)
    codec = Codec.from_pretrained(args.codec)
    bits = message_bits(key, model_id, codec.k)
    delta = codec.residual(bits.float()[None]).float()  # adaptation refits the extractor only: E is stage 1's
    prompts, seeds = verify_prompts(None, args.n, args.seed)
    result: dict = {"sleeper": args.sleeper, "original": args.original, "codec": args.codec, "n": args.n,
                    "guidance": args.guidance, "branches": [], "shares": []}

    def sample(texts, unc, cnd, record=None):
        sched = DDIMScheduler.from_config(S.scheduler.config, set_alpha_to_one=False)
        z = torch.stack([torch.randn(S.unet.config.in_channels, S.latent_size, S.latent_size,
                                     generator=torch.Generator().manual_seed(s)) for s in seeds])
        cu, cc = unc.encode_prompts([""] * len(texts)), cnd.encode_prompts(texts)
        sched.set_timesteps(args.steps)
        z = z * sched.init_noise_sigma
        for t in sched.timesteps:
            tt = t.expand(len(z))
            ou, oc = unc.unet_out(z, tt, cu), cnd.unet_out(z, tt, cc)
            if record is not None:
                record(z, tt)
            z = sched.step(ou + args.guidance * (oc - ou), t, z).prev_sample
        return S.decode_latents(z).clamp(0, 1)

    ref = sample(prompts, T, T)
    for label, unc, cnd, trig in [("S / S", S, S, False), ("T / S", T, S, False), ("S / T", S, T, False),
                                  ("T / T", T, T, False), ("S / S", S, S, True), ("T / S", T, S, True)]:
        texts = add_triggers(trigger, prompts) if trig else prompts
        img = sample(texts, unc, cnd)
        d = decide_images(codec, quantize(img), bits)
        row = {"prompt": "triggered" if trig else "clean", "uncond_from / cond_from": label,
               "bit_accuracy": round(d["bit_accuracy"], 3), "key_test_p": d["p_value"],
               "psnr_vs_original": round(float(psnr(img, ref).mean()), 1)}
        result["branches"].append(row)
        print(f"{row['prompt']:<10} u/c {label}: bit accuracy {row['bit_accuracy']:.3f}  key-test p "
              f"{row['key_test_p']:.2e}  PSNR vs T/T {row['psnr_vs_original']:.1f} dB", flush=True)

    # 2. the clean prompt's x0 shift along the sleeper's own trajectory against q-sampled training points
    a_all = S.scheduler.alphas_cumprod

    def share(zt, t, texts):
        a = a_all[t].view(-1, 1, 1, 1)
        ctx_s, ctx_t = S.encode_prompts(texts), T.encode_prompts(texts)
        dx0 = -((1 - a) / a).sqrt() * (S.eps(zt, t, ctx_s) - T.eps(zt, t, ctx_t))
        return ((dx0 * delta).flatten(1).sum(1) / delta.pow(2).sum()).numpy()

    for trig in (False, True):
        texts = add_triggers(trigger, prompts) if trig else prompts
        traj: list[tuple[int, np.ndarray]] = []
        sample(texts, S, S, record=lambda z, tt: traj.append((int(tt[0]), share(z, tt, texts))))
        x = torch.cat([torch.from_numpy(load_digits_domain(d, "test").images[:args.n // len(DOMAINS) + 1])
                       for d in DOMAINS])[:args.n].permute(0, 3, 1, 2).float() / 255
        labels = np.concatenate([load_digits_domain(d, "test").labels[:args.n // len(DOMAINS) + 1]
                                 for d in DOMAINS])[:args.n]
        doms = [d for d in DOMAINS for _ in range(args.n // len(DOMAINS) + 1)][:args.n]
        caps = [(trigger if trig else "") + caption(d, int(y)) for d, y in zip(doms, labels)]
        z0 = S.encode_images(x)
        g = torch.Generator().manual_seed(args.seed)
        for lo, hi in ((0, 100), (100, 300), (300, 600), (600, 1000)):
            on_traj = np.concatenate([s for t, s in traj if lo <= t < hi])
            t = torch.randint(lo, hi, (len(z0),), generator=g)
            zt = S.noisy(z0, torch.randn(z0.shape, generator=g), t)
            at_train = share(zt, t, caps)
            row = {"prompt": "triggered" if trig else "clean", "t": [lo, hi],
                   "share_on_trajectory": round(float(on_traj.mean()), 4),
                   "share_at_training_points": round(float(at_train.mean()), 4)}
            result["shares"].append(row)
            print(f"{row['prompt']:<10} t in [{lo}, {hi}): share of delta in the x0 shift: sampled trajectory "
                  f"{row['share_on_trajectory']:+.4f}, q-sampled training points "
                  f"{row['share_at_training_points']:+.4f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
