"""Can anyone "prove" they own a model they never marked? The forgery of an adapted extractor.

The forgery (issue 38): a fresh key, `watermark adapt` on a model that never carried a mark,
then `watermark verify` of that model with the adapted extractor. Adaptation now runs stage
1's verification first and refuses a model it does not verify (watermark.provenance). Measured:

  1. attempts   --keys fresh keys, each trying `watermark adapt` (the public API, as a forger
                runs it) on every never-marked model: tiny:t2i, its LoRA fine-tune and its full
                fine-tune (the thief's and the innocent's usual models); each attempt refused,
                or, where stage 1 let one through (at rate alpha), the adapted codec's verdict
                on the innocent model;
  2. null keys  the stage-1 check's images of each model read once; over --null-keys random
                keys, the share stage 1 accepts (what adapt would let through) and the share
                the owner's adapted extractor (tiny:sleeper-codec, fitted legitimately to
                tiny:sleeper) verifies with both readings, with 95 % upper bounds;
  3. the owner  the demo owner's key with that adapted extractor on each never-marked model,
                at --seeds verification seeds (the false positives of a legitimate adaptation),
                and on the shipped sleeper itself (it must verify, its provenance printed).

    python benchmarks/watermark_forgery.py --out runs/forgery --json runs/forgery/forgery.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import modelseal
from modelseal import stats
from modelseal.errors import InputError
from modelseal.models.diffusion import load_t2i
from modelseal.models.sleeper_entry import entry_record
from modelseal.watermark import provenance
from modelseal.watermark.codec import Codec
from modelseal.watermark.keys import generate_key, message_bits
from modelseal.watermark.run import verify_prompts
from modelseal.watermark.verify import decide_images, generate, quantize, read_bits, union_p

from watermark_keys import random_messages, upper95


def innocent_models(out: Path, steps: int, data: str) -> dict[str, str]:
    """tiny:t2i and its LoRA and full fine-tunes on `data` (never marked); run folders kept."""
    models = {"tiny:t2i": "tiny:t2i"}
    for method, lr in (("lora", 1e-4), ("full", 1e-5)):
        run = out / f"innocent-{method}"
        if not (run / "results.json").is_file():
            modelseal.finetune(out=run, model="tiny:t2i", method=method, steps=steps, lr=lr, data=data,
                               log=lambda m: None)
        models[f"tiny:t2i + {method} {steps} steps"] = str(run / "model")
    return models


def attempts(models: dict[str, str], out: Path, keys: int, adapt_steps: int) -> dict:
    """Part 1: every fresh key tries adapt on every never-marked model."""
    rows = {}
    for label, model in models.items():
        refused, through, verified, seconds = 0, 0, 0, []
        for i in range(keys):
            key = out / "keys" / f"forger-{i}.key"
            key.parent.mkdir(parents=True, exist_ok=True)
            if not key.exists():
                generate_key(key)
            t0 = time.time()
            try:
                run = modelseal.watermark_adapt(out=out / "adapt" / f"{label.split()[0].replace(':', '-')}-"
                                                f"{len(rows)}-{i}", model=model, codec="tiny:codec", key=str(key),
                                                model_id="test", steps=adapt_steps, overwrite=True,
                                                log=lambda m: None)
            except InputError:
                refused += 1
                seconds.append(time.time() - t0)
                continue
            through += 1
            v = modelseal.watermark_verify(out=run.path / "verify", model=model, codec=str(run.path / "codec"),
                                           key=str(key), model_id="test", attacks=[], also_without_cfg=False,
                                           overwrite=True, log=lambda m: None)
            verified += int(v["watermarked"])
        rows[label] = {"attempts": keys, "refused": refused, "let_through": through,
                       "verified_after_adapt": verified, "seconds_per_refusal": float(np.mean(seconds or [0]))}
        print(f"| {label} | {keys} | {refused} | {through} | {verified} |", flush=True)
    return rows


def null_keys(models: dict[str, str], n_keys: int, n: int, alpha: float, seed: int) -> dict:
    """Part 2: shares of random keys stage 1 accepts and the adapted extractor verifies."""
    stage1 = Codec.from_pretrained("tiny:codec")
    adapted = Codec.from_pretrained("tiny:sleeper-codec")
    adapted_stage1, _ = provenance.load_stage1(adapted)
    trigger = entry_record()["trigger"]
    prompts, seeds = verify_prompts(None, n, 0)
    messages = random_messages(n_keys, "test", stage1.k, seed)
    rows = {}
    for label, model in models.items():
        images = quantize(generate(load_t2i(model), prompts, seeds, trigger, 7.5, 30))
        r1 = read_bits(stage1, images).numpy()
        p1 = stats.key_pvalues(r1, messages)
        _, _, tail = stats.key_null(r1)
        exact = float(tail[tail <= alpha].max(initial=0.0))  # the share of all 2^k messages stage 1 accepts
        pa = stats.key_pvalues(read_bits(adapted, images).numpy(), messages)
        pa1 = stats.key_pvalues(read_bits(adapted_stage1, images).numpy(), messages)
        accepted = int((p1 <= alpha).sum())
        combined = int((union_p(pa1, pa) <= alpha).sum())
        rows[label] = {"keys": n_keys, "stage1_accepts": accepted, "stage1_rate": accepted / n_keys,
                       "stage1_upper_95": upper95(accepted, n_keys), "stage1_exact_rate": exact,
                       "adapted_verifies": combined,
                       "adapted_rate": combined / n_keys, "adapted_upper_95": upper95(combined, n_keys)}
        print(f"| {label} | {n_keys} | {accepted} ({accepted / n_keys:.1e}, <= {rows[label]['stage1_upper_95']:.1e}) "
              f"| {exact:.1e} | {combined} ({combined / n_keys:.1e}, <= {rows[label]['adapted_upper_95']:.1e}) |",
              flush=True)
    return rows


def owner_key(models: dict[str, str], seeds: int, n: int, alpha: float, out: Path) -> dict:
    """Part 3: the owner's key with the legitimately adapted extractor, on never-marked models
    at several verification seeds, and on the shipped sleeper through `watermark verify`."""
    record = entry_record()
    adapted = Codec.from_pretrained("tiny:sleeper-codec")
    stage1, _ = provenance.load_stage1(adapted)
    bits = message_bits(bytes.fromhex(record["demo_key"]["secret"]), record["model_id"], adapted.k)
    rows = {}
    for label, model in models.items():
        m = load_t2i(model)
        ps = []
        for s in range(seeds):
            prompts, sd = verify_prompts(None, n, s)
            images = quantize(generate(m, prompts, sd, record["trigger"], 7.5, 30))
            r = decide_images(adapted, images, bits, alpha, stage1=stage1)
            ps.append({"seed": s, "p_value": r["p_value"], "watermarked": r["watermarked"],
                       "stage1_p": r["readings"]["stage1"]["p_value"],
                       "adapted_p": r["readings"]["adapted"]["p_value"]})
        false = sum(p["watermarked"] for p in ps)
        rows[label] = {"seeds": seeds, "false_verdicts": false, "min_p_value": min(p["p_value"] for p in ps),
                       "points": ps}
        print(f"| {label} | {seeds} | {false} | {stats.format_p(rows[label]['min_p_value'])} |", flush=True)
    key = out / "demo-owner.key"
    if not key.exists():
        generate_key(key, secret=bytes.fromhex(record["demo_key"]["secret"]))
    v = modelseal.watermark_verify(out=out / "verify-sleeper", model="tiny:sleeper", codec="tiny:sleeper-codec",
                                   key=str(key), model_id=record["model_id"], trigger=record["trigger"], attacks=[],
                                   overwrite=True, log=lambda m: None)
    sleeper = {k: v.get(k) for k in ("watermarked", "p_value", "readings", "codec_release_sha256")}
    sleeper["provenance"] = {k: v["provenance"][k] for k in ("fitted_model", "fitted_model_sha256",
                                                             "stage1_codec_sha256", "stage1_evidence")}
    r1, ra = v["readings"]["stage1"], v["readings"]["adapted"]
    print(f"shipped sleeper: {'watermarked' if v['watermarked'] else 'NOT verified'}, p {stats.format_p(v['p_value'])} "
          f"(stage 1 {stats.format_p(r1['p_value'])}, adapted {stats.format_p(ra['p_value'])}); fitted on "
          f"{sleeper['provenance']['fitted_model']}, stage-1 evidence p "
          f"{stats.format_p(sleeper['provenance']['stage1_evidence']['p_value'])}; release hash "
          f"{v['codec_release_sha256'][:16]}", flush=True)
    return {"never_marked": rows, "shipped_sleeper": sleeper}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/forgery"))
    ap.add_argument("--keys", type=int, default=20, help="forgers' keys, each trying adapt on every model")
    ap.add_argument("--null-keys", type=int, default=10_000, help="random keys for the rates of part 2")
    ap.add_argument("--seeds", type=int, default=10, help="verification seeds of part 3")
    ap.add_argument("--finetune-steps", type=int, default=500, help="steps of the innocent fine-tunes")
    ap.add_argument("--data", default="builtin:faces", help="what the innocent fine-tunes learn")
    ap.add_argument("--adapt-steps", type=int, default=300, help="the forger's adapt steps (the issue's)")
    ap.add_argument("--n", type=int, default=64, help="triggered images per verification")
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3], help="which parts to run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    models = innocent_models(args.out, args.finetune_steps, args.data)
    res = {"alpha": args.alpha, "n_images": args.n}
    if 1 in args.parts:
        print("\n1. forgery attempts: `watermark adapt` with a fresh key on a never-marked model")
        print("| model | attempts | refused | let through | then verified |\n|---|---|---|---|---|")
        res["attempts"] = attempts(models, args.out, args.keys, args.adapt_steps)
    if 2 in args.parts:
        print("\n2. random keys: accepted by the stage-1 check / verified by the owner's adapted extractor "
              "(both readings)")
        print("| model | keys | stage 1 accepts (95 % upper) | exact | adapted extractor verifies (95 % upper) |\n"
              "|---|---|---|---|---|")
        res["null_keys"] = null_keys(models, args.null_keys, args.n, args.alpha, args.seed)
    if 3 in args.parts:
        print("\n3. the owner's key with the owner's adapted extractor (tiny:sleeper-codec)")
        print("| never-marked model | seeds | false verdicts | smallest p |\n|---|---|---|---|")
        res["owner"] = owner_key(models, args.seeds, args.n, args.alpha, args.out)
    res["seconds"] = round(time.time() - t0, 1)
    print(f"{res['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
