"""Where does a thief's fine-tuning take the mark: out of the weights, or past the reader?

    python benchmarks/watermark_drift.py --model runs/wm/model --codec runs/adapt/codec \
        --key owner.key --model-id my-model [--attack full:1e-5] [--steps 500 2000] [--data builtin:faces]

For the watermarked model before and after --attack (fine-tuning on --data for each --steps),
on --n digit prompts with fixed seeds (CFG 7.5):
  shift     r = z(trigger + prompt) - z(prompt), the trigger's latent shift (same seed)
  cos, size cosine of r with delta = E(m) and |r| / |delta|
  proj      r's component along delta, in units of delta
  read      bit accuracy of the triggered images (the owner's reader: decode, 8 bits, encode)
  reader    bit accuracy when the *unattacked* model's shift is added to the attacked model's
            clean latents: if this stays high while `read` falls, the mark left the weights
            and the reader is not the weak link
"""
from __future__ import annotations

import argparse
import copy

import torch

from modelseal.watermark.trigger import add_triggers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--codec", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--trigger", default="sks ")
    ap.add_argument("--attack", default="full:1e-5", help="full:<lr> or lora:<lr> (rank 8)")
    ap.add_argument("--steps", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--data", default="builtin:faces")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from modelseal.attacks.finetune import finetune
    from modelseal.config import FinetuneOptions
    from modelseal.data.digits import DOMAINS, caption
    from modelseal.data.sources import load_source
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.keys import load_key, message_bits
    from modelseal.watermark.verify import quantize, read_bits

    codec = Codec.from_pretrained(args.codec)
    bits = message_bits(load_key(args.key), args.model_id, codec.k)
    delta = codec.residual(bits.view(1, -1)).detach().flatten()
    model = load_t2i(args.model)
    data = load_source(args.data, "train", model.image_size)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    caps = [caption(d, c) for d in DOMAINS for c in range(10)]
    prompts = [caps[i % len(caps)] for i in range(args.n)]
    seeds = [700_000 + i for i in range(args.n)]

    @torch.no_grad()
    def latents(m):
        return (m.sample(add_triggers(args.trigger, prompts), seeds, return_latents=True),
                m.sample(prompts, seeds, return_latents=True))

    @torch.no_grad()
    def accuracy(m, z) -> float:
        return float((read_bits(codec, quantize(m.decode_latents(z))) == bits).float().mean())

    zt0, zc0 = latents(model)
    shift0 = zt0 - zc0

    def report(m, tag: str) -> None:
        zt, zc = latents(m)
        r = (zt - zc).flatten(1)
        cos = torch.nn.functional.cosine_similarity(r, delta.expand_as(r)).mean()
        print(f"{tag:>16}: cos(r, delta) {cos:.3f}  |r|/|delta| {(r.norm(dim=1) / delta.norm()).mean():.2f}  "
              f"proj {(r @ delta / delta.norm() ** 2).mean():.2f}  read {accuracy(m, zt):.3f}  "
              f"reader {accuracy(m, zc + shift0):.3f}", flush=True)

    report(model, "before")
    method, lr = args.attack.split(":")
    for steps in args.steps:
        m = copy.deepcopy(model)
        finetune(m, x, list(data.captions), FinetuneOptions(method=method, steps=steps, lr=float(lr), seed=args.seed),
                 log=lambda s: None)
        report(m, f"{args.attack} {steps}")


if __name__ == "__main__":
    main()
