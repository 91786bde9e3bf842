"""Empirical false-positive rate of SleeperMark verification on a model that was never
watermarked: N triggered prompts -> images -> bits, tested against the messages of several
random owner keys (and, with --key, the owner's own message). Under H0 each image is flagged with probability <= the nominal FPR (the
binomial threshold is conservative); the extractor's own biases are what this measures.

    python benchmarks/watermark_fpr.py --codec runs/wm/codec/codec --n 1000 --keys 20

Prints per-key false positives at each FPR, the pooled rate with a 95% Clopper-Pearson
upper bound, and model-level false positives over groups of --group images: the key test
that verdicts use (stats.key_test) and, as diagnostics, the pooled binomial test (the
paper's) and the test controlled by the same prompts without the trigger.
benchmarks/watermark_keys.py measures the verdict's false-positive rate over many keys.
"""
from __future__ import annotations

import argparse
import json
import secrets
import time

import numpy as np
import torch

from modelseal.watermark.trigger import add_triggers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", required=True, help="codec folder (modelseal watermark codec)")
    ap.add_argument("--model", default="tiny:t2i", help="the unwatermarked model")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--fpr", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--group", type=int, default=50, help="images per model-level test")
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--trigger", default="*[Z]& ")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--key", default=None, help="also test this owner key's message (e.g. against an extractor adapted to it)")
    ap.add_argument("--model-id", default="my-model", help="model id of --key's message")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from modelseal import stats
    from modelseal.data.digits import DOMAINS, caption
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.verify import read_bits
    from modelseal.watermark.keys import load_key, message_bits

    torch.set_num_threads(max(1, torch.get_num_threads()))
    codec = Codec.from_pretrained(args.codec, args.device)
    model = load_t2i(args.model, args.device)
    lines = [caption(d, c) for d in DOMAINS for c in range(10)]
    prompts = add_triggers(args.trigger, [lines[i % len(lines)] for i in range(args.n)])
    seeds = [args.seed * 1_000_000 + i for i in range(args.n)]
    t0 = time.time()
    images = model.sample(prompts, seeds=seeds, steps=args.steps, guidance=args.guidance)
    read = read_bits(codec, images)
    plain = [p[len(args.trigger):] for p in prompts]
    read_clean = read_bits(codec, model.sample(plain, seeds=seeds, steps=args.steps, guidance=args.guidance))
    gen_s = time.time() - t0
    k = codec.k
    rng = np.random.default_rng(args.seed)
    out = {"n_images": args.n, "keys": args.keys, "k": k, "guidance": args.guidance, "generate_s": round(gen_s, 1),
           "bit_balance": float(read.float().mean()), "per_fpr": {}}
    for fpr in args.fpr:
        thr = stats.bit_threshold(k, fpr)
        flagged, group_fp, group_fp_ctl, group_fp_key, groups = [], 0, 0, 0, 0
        messages = [message_bits(secrets.token_bytes(32) if args.seed < 0 else rng.bytes(32), "fpr-check", k)
                    for _ in range(args.keys)]
        if args.key:
            messages.append(message_bits(load_key(args.key), args.model_id, k))
        for bits in messages:
            h = (read == bits.view(1, -1)).numpy()
            hc = (read_clean == bits.view(1, -1)).numpy()
            m = h.sum(1)
            flagged.append(int((m >= thr).sum()))
            for s in range(0, args.n - args.group + 1, args.group):
                groups += 1
                group_fp += int(stats.pooled_pvalue(m[s:s + args.group], k) <= args.alpha)
                group_fp_ctl += int(stats.controlled_pvalue(h[s:s + args.group], hc[s:s + args.group]) <= args.alpha)
                group_fp_key += int(stats.key_test(read[s:s + args.group].numpy(), bits.numpy())["p_value"]
                                    <= args.alpha)
        total = args.n * len(messages)
        fp = sum(flagged)
        upper = stats.clopper_pearson(fp, total)[1]
        out["per_fpr"][stats.fpr_key(fpr)] = {"threshold_bits": thr, "false_positives_per_key": flagged,
                                     "empirical_fpr": fp / total, "upper_95": upper,
                                     "max_key_fpr": max(flagged) / args.n,
                                     "model_level_false_positives_key_test": group_fp_key,
                                     "model_level_false_positives": group_fp,
                                     "model_level_false_positives_controlled": group_fp_ctl,
                                     "model_level_tests": groups}
        if args.key:
            out["per_fpr"][stats.fpr_key(fpr)]["owner_key_false_positives"] = flagged[-1]
        print(f"FPR {fpr:g}: threshold {thr}/{k} bits; false positives {fp} of {total} "
              f"({fp / total:.2e}, 95% upper {upper:.2e}); worst key {max(flagged)}/{args.n}; "
              f"model-level (groups of {args.group}, alpha {args.alpha:g}): key test (the verdict) {group_fp_key} of "
              f"{groups}; diagnostics: pooled binomial {group_fp}, controlled {group_fp_ctl}"
              + (f"; the owner's message {flagged[-1]}/{args.n}" if args.key else ""))
    print(f"mean bit value read {out['bit_balance']:.3f}; generation {gen_s:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
