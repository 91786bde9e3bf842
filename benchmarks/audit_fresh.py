"""The audit on subjects no session had looked at (issue 28): the check of the `--score` default
chosen on benchmarks/audit_lora.py's held subjects, and collections of 20 real-photo members.

    python benchmarks/audit_fresh.py --out runs/audit-fresh [--pgd-steps 100]

FRESH: the 14 DreamBooth subjects that neither audit_suspects.py nor audit_lora.py uses
(each split into its first half, members, and the rest, hold-out), each under its own
identifier prompt ('a sks dog', 'a zwx dog', ...: five dogs must not share one). Each SUSPECT
fine-tunes tiny:t2i on the members of all of them at once (batch 4), with the recipes of
audit_lora.py's suspects that learned their held subjects, and a null suspect (DreamBooth,
200 steps per image, on the photos of audit_suspects.py's NULL_SUBJECTS under the fresh
prompts: nothing audited is a member). Per suspect:

  - the learned fidelity: nearest-member SSIM of 16 samples per subject minus the null
    suspect's (audit_lora.py's measure and its threshold, fixed there before this run);
  - AUROC / TPR at 1 % FPR of every decision statistic, pooled over the fresh subjects;
  - the collection test: share of 500 random collections of 10 and 20 members found used at
    alpha 0.05 against every hold-out image as calibration; on the null suspect a
    false-positive rate of this one split.

Writes OUT/fresh.json and OUT/fresh.md; every fine-tune, sample set and audit is kept under
OUT and skipped when rerun.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from audit_lora import BATCH, audit, lora_name, set_power, train
from audit_suspects import HELD, NULL_SUBJECTS, ROOT, TUNE, captioned_folder, samples, statistics, write_subject
from modelseal import stats
from modelseal.runs import atomic_write_text, git_sha, write_json

FRESH = ["backpack_dog", "berry_bowl", "cat2", "colorful_sneaker", "dog3", "dog5", "dog6", "dog7", "dog8",
         "pink_sunglasses", "poop_emoji", "rc_car", "robot_toy", "shiny_sneaker"]
IDENTIFIERS = ["sks", "zwx", "qjv", "vrm", "pqt"]  # one per subject of a class
SUSPECTS = {lora_name(16, 1e-3, 1000): {"method": "lora", "rank": 16, "lr": 1e-3, "steps": 1000},
            lora_name(16, 1e-3, 1000, True): {"method": "lora", "rank": 16, "lr": 1e-3, "steps": 1000,
                                              "train_text_encoder": True},
            lora_name(64, 1e-3, 1000): {"method": "lora", "rank": 64, "lr": 1e-3, "steps": 1000},
            lora_name(16, 1e-3, 3000): {"method": "lora", "rank": 16, "lr": 1e-3, "steps": 3000},
            "full-flip-crop": {"method": "full", "per_image": 100, "lr": 1e-4, "flip": True, "crop": 0.8},
            "dreambooth-50": {"method": "dreambooth", "per_image": 50, "lr": None},
            "null": {"method": "dreambooth", "per_image": 200, "lr": None}}
SHOWN = ["combined", "cgi-dm", "calibrated", "pia", "pia-calibrated", "loss", "clid"]
SIZES = [10, 20]


def prompts(photos: Path) -> dict[str, str]:
    from modelseal.data.subjects import dreambooth_classes

    classes = dreambooth_classes(photos)
    seen: dict[str, int] = {}
    out = {}
    for s in FRESH:
        c = classes[s]
        out[s] = f"a {IDENTIFIERS[seen.get(c, 0)]} {c}"
        seen[c] = seen.get(c, 0) + 1
    return out


def measure(name: str, model: str, folders: dict, prompt: dict, args) -> dict:
    from modelseal.audit.generated import Similarity, learned_fidelity
    from modelseal.audit.inputs import read_set

    sim = Similarity("ssim")
    rows, gain = [], {}
    for s in FRESH:
        gen = samples(model, prompt[s], args.k, args.out / "samples" / name / s)
        null = samples(str(args.out / "suspects" / "null" / "model"), prompt[s], args.k,
                       args.out / "samples" / "null" / s)
        gain[s] = learned_fidelity(read_set(folders[s]["members"], 32, "members")[0], gen, null, sim)["gain"]
        rows += [{**r, "subject": s} for r in audit(model, folders[s], prompt[s], args.out / "audits" / name / s,
                                                     args)]
    labels = np.array([r["member"] for r in rows], dtype=int)
    vals = statistics(rows)
    return {"gain_over_null": float(np.mean(list(gain.values()))), "gain_per_subject": gain,
            "images": len(rows), "members": int(labels.sum()),
            **{k: {"auroc": stats.auroc(vals[k], labels), "tpr_1": stats.tpr_at_fpr(vals[k], labels, 0.01)}
               for k in SHOWN},
            "set_power": set_power(rows, args.seed, draws=500, keys=SHOWN, sizes=SIZES)}


def markdown(table: dict, learned: float) -> str:
    head = ("| suspect | gain over the null | learned | " + " | ".join(SHOWN) + " | "
            + " | ".join(f"n = {n}: {k}" for n in SIZES for k in ("combined", "calibrated", "cgi-dm")) + " |")
    lines = [head, "|---|---|---|" + "---|" * (len(SHOWN) + 3 * len(SIZES))]
    for name, t in table.items():
        lines.append(f"| {name} | {t['gain_over_null']:+.3f} | {'yes' if t['gain_over_null'] >= learned else 'no'} | "
                     + " | ".join(f"{t[k]['auroc']:.3f} / {t[k]['tpr_1']:.2f}" for k in SHOWN) + " | "
                     + " | ".join(f"{t['set_power'][k][str(n)]:.2f}" for n in SIZES
                                  for k in ("combined", "calibrated", "cgi-dm")) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from modelseal.data.subjects import photo_subject

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "dreambooth")
    ap.add_argument("--suspects", nargs="+", choices=list(SUSPECTS), help="only these (the null always)")
    ap.add_argument("--pgd-steps", type=int, default=100)
    ap.add_argument("--k", type=int, default=16, help="samples per subject and model")
    ap.add_argument("--learned", type=float, default=0.090,
                    help="the learned threshold (audit_lora.py: half of dreambooth-200's gain over the null on its "
                    "tune subjects)")
    ap.add_argument("--ft-scale", type=float, default=1.0, help="multiply every suspect's steps (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    assert not set(FRESH) & set(TUNE + HELD + NULL_SUBJECTS)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prompt = prompts(args.photos)
    folders = {s: write_subject(photo_subject(args.photos / s, 32), args.out / "data" / s) for s in FRESH}
    train_dir, null_dir = args.out / "data" / "train", args.out / "data" / "null-train"
    n_mem = captioned_folder([(p, prompt[s]) for s in FRESH for p in sorted(folders[s]["members"].iterdir())],
                             train_dir) if not train_dir.is_dir() else len(list(train_dir.glob("*.png")))
    if not null_dir.is_dir():
        items = []
        for j, o in enumerate(NULL_SUBJECTS):
            f = write_subject(photo_subject(args.photos / o, 32), args.out / "data" / "null" / o)
            mine = sorted(f["members"].iterdir())
            items += [(p, prompt[FRESH[(2 * j + i) % len(FRESH)]]) for i, p in enumerate(mine)]
        captioned_folder(items, null_dir)
    n_null = len(list(null_dir.glob("*.png")))
    names = ["null"] + [n for n in SUSPECTS if n != "null" and (not args.suspects or n in args.suspects)]
    table = {}
    for name in names:
        null = name == "null"
        model = train(SUSPECTS[name], null_dir if null else train_dir, n_null if null else n_mem,
                      args.out / "suspects" / name, args.seed, args.ft_scale)
        table[name] = measure(name, model, folders, prompt, args)
        t = table[name]
        print(f"[fresh] {name}: gain over the null {t['gain_over_null']:+.3f}; AUROC " + ", ".join(
            f"{k} {t[k]['auroc']:.3f}" for k in SHOWN) + "; n = 20: " + ", ".join(
            f"{k} {t['set_power'][k]['20']:.2f}" for k in ("combined", "calibrated")), flush=True)
        write_json(args.out / "fresh.json", {"commit": (git_sha() or "unknown")[:7], "batch": BATCH,
                                             "learned": args.learned, "prompts": prompt, "table": table,
                                             "seconds": round(time.time() - t0)})
    md = markdown({n: table[n] for n in names[1:] + ["null"]}, args.learned)
    atomic_write_text(args.out / "fresh.md", md)
    print(md)
    print(f"[fresh] {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
