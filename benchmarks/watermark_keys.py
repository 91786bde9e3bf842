"""False-verdict rate of `watermark verify` over many random keys, and the owner's verdicts.

A verdict is evidence in a dispute, so a stranger's key must verify a model at most alpha
of the time, however alike that model's images read. The bits of N triggered images are
read once per model (with the owner's reader: 8-bit images, the codec's VAE); keys are the
random part, so thousands cost one convolution (stats.key_pvalues). Models:

  (a) the watermarked model (random keys against a model that does carry a mark)
  (b) the unwatermarked original (tiny:t2i)
  (c) the original fine-tuned by LoRA on a thief's domain (never carried the mark)

and the owner's key on the watermarked model before and after each --attack (fine-tuning
on --data). Besides the count over random keys it gives the exact rate: over all 2^k
messages, the share the test verifies on these images (the largest null tail <= alpha),
which is <= alpha by construction; the count checks the implementation against it. Beside the verdict's key test it counts the old verdict (pooled binomial and
controlled test both <= alpha), to show why it was replaced.

    python benchmarks/watermark_keys.py --watermarked runs/wm/model --key owner.key \
        --model-id my-model --trigger "sks " --codec tiny:codec --codec runs/adapt/codec \
        --keys 100000 --json runs/keys.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def upper95(x: int, n: int) -> float:
    """Clopper-Pearson upper limit (two-sided 95%) of a rate seen x times in n."""
    from modelseal.stats import clopper_pearson

    return clopper_pearson(x, n)[1]


def random_messages(n: int, model_id: str, k: int, seed: int) -> np.ndarray:
    """Messages of n random 32-byte keys, derived as the owner's is (HMAC of key and id)."""
    from modelseal.watermark.keys import message_bits

    rng = np.random.default_rng(seed)
    return np.stack([message_bits(rng.bytes(32), model_id, k).numpy() for _ in range(n)]).astype(np.int64)


def old_verdicts(read: np.ndarray, read_clean: np.ndarray, messages: np.ndarray, alpha: float) -> int:
    """How many messages the replaced verdict accepted: pooled binomial and controlled test."""
    from modelseal import stats

    n = 0
    for m in messages:
        h, hc = read == m[None], read_clean == m[None]
        n += int(stats.pooled_pvalue(h.sum(1), len(m)) <= alpha and stats.controlled_pvalue(h, hc) <= alpha)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watermarked", required=True, help="the watermarked model folder (watermark embed OUT/model)")
    ap.add_argument("--original", default="tiny:t2i")
    ap.add_argument("--codec", action="append", required=True, help="codec folder(s): stage 1, adapted (repeatable)")
    ap.add_argument("--key", required=True, help="the owner key the model was watermarked with")
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--trigger", default="sks ")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--old-keys", type=int, default=2_000, help="keys for the replaced verdict (slower)")
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=64, help="triggered (and clean) images per model")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", default="builtin:faces", help="the thief's captioned domain")
    ap.add_argument("--null-ft", default="lora:2000:1e-4", help="(c): method:steps:lr on the original")
    ap.add_argument("--attack", action="append", default=None,
                    help="owner's key after method:steps:lr on the watermarked model (repeatable; default "
                    "lora:2000:1e-4 and full:2000:1e-5)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    attacks = args.attack or ["lora:2000:1e-4", "full:2000:1e-5"]

    from modelseal import stats
    from modelseal.attacks.finetune import finetune
    from modelseal.config import FinetuneOptions
    from modelseal.data.sources import load_source
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.keys import load_key, message_bits
    from modelseal.watermark.run import verify_prompts
    from modelseal.watermark.verify import decide, generate, quantize, read_bits

    codecs = {c: Codec.from_pretrained(c) for c in args.codec}
    k = next(iter(codecs.values())).k
    owner = message_bits(load_key(args.key), args.model_id, k).numpy().astype(np.int64)
    prompts, seeds = verify_prompts(None, args.n, args.seed)
    data = load_source(args.data, "train", 32)
    x_thief = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255

    def fine_tuned(source: str, spec: str):
        method, steps, lr = spec.split(":")
        model = load_t2i(source)
        finetune(model, x_thief, list(data.captions), FinetuneOptions(method=method, steps=int(steps), lr=float(lr),
                                                                       seed=args.seed), log=lambda m: None)
        return model

    def reads(model):
        t = quantize(generate(model, prompts, seeds, args.trigger, args.guidance, args.steps))
        c = quantize(generate(model, prompts, seeds, None, args.guidance, args.steps))
        return {name: (read_bits(cd, t).numpy(), read_bits(cd, c).numpy()) for name, cd in codecs.items()}

    messages = random_messages(args.keys, args.model_id, k, args.seed)
    out = {"keys": args.keys, "alpha": args.alpha, "n_images": args.n, "bits": k, "min_p_value": 2.0 ** -k,
           "models": {}, "owner": {}}
    t0 = time.time()
    models = {"(a) watermarked": lambda: load_t2i(args.watermarked), "(b) unwatermarked": lambda: load_t2i(args.original),
              f"(c) unwatermarked + {args.null_ft} on {args.data}": lambda: fine_tuned(args.original, args.null_ft)}
    print(f"random keys: {args.keys}, alpha {args.alpha:g}, {args.n} triggered images per model, {k} bits "
          f"(smallest possible p {2.0 ** -k:.1e})")
    print("| model | codec | false verdicts (key test) | rate | 95% upper | exact rate | replaced verdict "
          "(pooled + controlled) |")
    print("|---|---|---|---|---|---|---|")
    for label, make in models.items():
        r = reads(make())
        out["models"][label] = {}
        for name, (rt, rc) in r.items():
            p = stats.key_pvalues(rt, messages)
            fp = int((p <= args.alpha).sum())
            old = old_verdicts(rt, rc, messages[:args.old_keys], args.alpha)
            _, _, tail = stats.key_null(rt)
            size = float(tail[tail <= args.alpha].max(initial=0.0))   # exact P(a random key is verified)
            row = {"false_verdicts": fp, "rate": fp / args.keys, "upper_95": upper95(fp, args.keys), "exact_size": size,
                   "old_false_verdicts": old, "old_keys": args.old_keys, "old_rate": old / args.old_keys,
                   "old_upper_95": upper95(old, args.old_keys),
                   "rate_at_0.05": float((p <= 0.05).mean()), "bit_balance": float(rt.mean())}
            if label.startswith("(a)"):
                row["owner"] = decide(rt, owner, args.alpha, read_clean=rc)
                row["owner"].pop("diagnostics", None)
            out["models"][label][name] = row
            print(f"| {label} | {name} | {fp} / {args.keys} | {fp / args.keys:.1e} | {row['upper_95']:.1e} | {size:.1e} | "
                  f"{old} / {args.old_keys} ({old / args.old_keys:.1%}) |", flush=True)
    print("\nowner's key (key test p; bit accuracy; TPR@1e-6; majority agreement)")
    for spec in ["none"] + attacks:
        model = load_t2i(args.watermarked) if spec == "none" else fine_tuned(args.watermarked, spec)
        r = reads(model)
        out["owner"][spec] = {}
        for name, (rt, rc) in r.items():
            d = decide(rt, owner, args.alpha, read_clean=rc)
            d.pop("diagnostics", None)
            out["owner"][spec][name] = d
            print(f"  {spec:16s} {name}: {'watermarked' if d['watermarked'] else 'NOT verified'}, p "
                  f"{stats.format_p(d['p_value'])}, bit acc {d['bit_accuracy']:.3f} (clean "
                  f"{d['clean_bit_accuracy']:.3f}), TPR {d['tpr_at_fpr']['1e-6']:.3f}, majority "
                  f"{d['majority_agreement']:.3f}", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(f"{out['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
