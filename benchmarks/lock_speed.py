"""IP-CLIP training-step speed: ours against the reference code's structure.

ours       frozen vision statistics cached once; every (image, class) prompt of the
           authorized + unauthorized batch in ONE text-encoder pass, truncated after the
           last end token (exact under the causal mask)
reference  vision tower re-run every step; one text-encoder pass per image and class,
           each padded to the encoder's full length (2 * B * C passes per step)

Each variant runs in its own process so its peak memory (max RSS on CPU, max allocated
on CUDA) is its own. Prints steps/s, peak memory and the ratios.

  python benchmarks/lock_speed.py                       # tiny:clip, 10 classes, batch 8 + 8
  python benchmarks/lock_speed.py --model vitb16-random --classes 65 --device cuda
"""
from __future__ import annotations

import argparse
import json

from measure import peak_memory, run_variant, seconds_per_step


def build_clip(name: str, device: str):
    import torch
    from transformers import CLIPConfig, CLIPModel

    from modelseal.models.clip import CLIPBundle, load_clip
    from modelseal.models.tokenizer import build_tokenizer

    if name != "vitb16-random":
        return load_clip(name, device=device)
    tok = build_tokenizer(max_length=77)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id),
        vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512)
    torch.manual_seed(0)
    model = CLIPModel(cfg).to(device).eval().requires_grad_(False)
    return CLIPBundle(model, tok, 224)


def worker(args) -> dict:
    import torch

    from modelseal.lock.ipclip import IPCLIP, frozen_features

    torch.manual_seed(0)
    dev = args.device
    clip = build_clip(args.model, dev)
    classes = [f"class {i}" for i in range(args.classes)] if args.classes != 10 else \
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    model = IPCLIP(clip, classes)
    opt = torch.optim.Adam(model.projector.parameters(), lr=1e-3)
    b = args.batch
    images = torch.rand(2 * b, 3, clip.image_size, clip.image_size, device=dev)
    labels = torch.randint(0, args.classes, (2 * b,), device=dev)
    cached = frozen_features(clip, images) if args.variant == "ours" else None

    def step():
        frozen = cached if cached is not None else frozen_features(clip, images)
        if args.variant == "ours":
            text, _ = model.text_features(frozen["mu"], frozen["sigma"])
        else:
            text = model.reference_text_features(frozen["mu"], frozen["sigma"])
        logits = model.logits(frozen["feat"], text)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = seconds_per_step(step, args.steps, dev, warmup=1)
    return {"variant": args.variant, "steps_per_s": 1 / sec, "s_per_step": sec, **peak_memory(dev)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:clip", help="tiny:clip, a CLIP folder/hub id, or vitb16-random")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8, help="per domain (authorized + unauthorized)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    rows = {}
    for variant in ("ours", "reference"):
        rows[variant] = run_variant(__file__, variant, ["--model", args.model, "--classes", str(args.classes),
                                                        "--batch", str(args.batch), "--steps", str(args.steps),
                                                        "--device", args.device])
        r = rows[variant]
        print(f"{variant:10s} {r['steps_per_s']:8.3f} steps/s  {r['s_per_step'] * 1000:9.1f} ms/step  "
              f"peak {r['peak_mb']:8.1f} MB ({r['memory']})")
    o, r = rows["ours"], rows["reference"]
    print(f"speed-up {o['steps_per_s'] / r['steps_per_s']:.1f}x   memory ratio (reference / ours) "
          f"{r['peak_mb'] / o['peak_mb']:.2f}x   [{args.model}, {args.classes} classes, batch {args.batch}+{args.batch}, "
          f"{args.device}]")


if __name__ == "__main__":
    main()
