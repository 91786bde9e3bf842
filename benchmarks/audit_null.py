"""False-positive rates of audit mode (`--images` + `--calibration`) on null suspects.

Each null suspect is tiny:t2i DreamBooth-fine-tuned (200 steps, prior preservation) on the
members of one built-in subject (test-split images). A pool of images which no suspect was
fine-tuned on (default: test-split images of another built-in subject; --pool-source: a
source's --pool-split, train by default, with --pool-class only one label, e.g. the 400
mnist-m train '3's, enough for 199 calibration images; the digits' train splits trained
tiny:t2i itself, which every suspect shares, so they are unseen by the fine-tuning that an
audit asks about) is scored once per suspect through `audit_command` (CGI-DM, --steps PGD
steps); then the pool is split many times at random into suspected + calibration images,
and every split gets audit mode's decisions (`audit.run.audit_decisions`):
  - set level: the collection's rank-sum p-value <= alpha ("used"): the false-positive rate;
  - per image: any image called "member" under BH, under Holm, and without control (each
    image at p <= alpha). Every image is innocent, so "any false member" is the family-wise
    error; BH bounds it by alpha under this global null, no control does not. One image is
    called on its own only when 1 / (calibration + 1) <= alpha / suspected (199 calibration
    images for 10 at 0.05); with fewer, BH's and Holm's zero is structural;
  - per image without control: the share of suspected images at p <= alpha.
Each rate has a 95% Clopper-Pearson interval (the upper end is printed); the per-image one
treats images as independent, which images scored against one calibration set are not.

Caveats. Without tied scores a split's decisions depend only on ranks, which a random split
makes uniform whatever the scores: the splits are independent draws from the tests' exact
null (Holm's any-false rate is then 10/209 at 10 + 199), and the suspects change nothing but
ties. With --score combined the robust scaler is refitted on each split's images, as one audit
call fits it on its images and calibration images together: the scores then change with the
split, but the scaler treats the images symmetrically, so they stay exchangeable and the
tests keep their level; this measures that. Random splits make suspected and calibration images exchangeable by construction, so
this checks the tests and the multiplicity control, not the assumption a user must meet
(calibration images of the same kind as the suspected ones). The tests' validity does not
depend on score quality, so fewer PGD steps than the 1,000 default are fine here; the power
part below shows the scores still separate members.

Power (unless --no-power): each suspect is also audited on its own 10 members against 20
never-seen images of its subject: the set p-value, the members found under BH and without
control, and the AUROC of those scores. It needs --holdout never-seen images of each
suspect's subject (a test split has about 100 per digit), so it is not run at 199
calibration images (--no-power).

Black-box (--generated K): no suspect weights are read by the audit. Each suspect returns K
samples under --prompt (its service's answers to the fine-tuning prompt) and K under
--class-prompt (the neutral prompt); the pool is audited by `modelseal audit --generated
--neutral` with --similarity, and split as above. Its score is fixed per image (no scaler), so
a split's decisions again depend only on ranks.

    python benchmarks/audit_null.py --out runs/audit-null --steps 100 [--score combined]
    python benchmarks/audit_null.py --out runs/audit-null-bb --generated 32 [--similarity colour]
    python benchmarks/audit_null.py --out runs/audit-null-199 --pool-source builtin:digits/mnist-m \
        --pool-class 3 --pool-size 220 --calibration 199 --no-power
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import get_args

import numpy as np
from audit_table import _finetune, add_suspect_options

from modelseal import stats
from modelseal.audit.decision import row_scores
from modelseal.audit.decision import audit_decisions
from modelseal.audit.run import audit_command
from modelseal.config import AuditConfig
from modelseal.data.sources import load_source
from modelseal.data.subjects import builtin_subject, write_split
from modelseal.runs import write_json
from modelseal.stats import format_p

SUSPECTS = ["mnist/5", "syn/7", "uci/2"]


def load_pool(args, ap: argparse.ArgumentParser) -> tuple[np.ndarray, str]:
    """The pool's images (seeded order) and their description; errors if a suspect saw them."""
    if args.pool_source is None:
        if args.pool in args.suspects:
            ap.error(f"--pool {args.pool} is a suspect's subject")
        return builtin_subject(args.pool, 32, args.seed), f"{args.pool} (test split)"
    ds = load_source(args.pool_source, args.pool_split, 32)
    idx = np.arange(len(ds))
    if args.pool_class is not None:
        if ds.labels is None:
            ap.error(f"{args.pool_source} has no labels for --pool-class")
        idx = np.flatnonzero(ds.labels == args.pool_class)
    what = f"{args.pool_source}" + ("" if args.pool_class is None else f" class {args.pool_class}")
    # the suspects' members are test-split images of <domain>/<digit>
    domain = args.pool_source.removeprefix("builtin:digits/")
    seen = [s for s in args.suspects if args.pool_split != "train" and s.split("/")[0] == domain
            and args.pool_class in (None, int(s.split("/")[1]))]
    if seen:
        ap.error(f"the pool ({what}, {args.pool_split} split) holds the members of {', '.join(seen)}")
    return ds.images[np.random.default_rng(args.seed).permutation(idx)], f"{what} ({args.pool_split} split)"


def service(ft: str, out: Path, args) -> tuple[Path, Path]:
    """The black-box suspect's answers: --generated samples under --prompt and under the neutral
    --class-prompt, written once as folders."""
    from modelseal.data.folders import write_image_folder
    from modelseal.models.diffusion import load_t2i

    folders = out / "generated", out / "neutral"
    if not all(f.is_dir() for f in folders):
        model = load_t2i(ft)
        for folder, prompt in zip(folders, (args.prompt, args.class_prompt or "a digit")):
            write_image_folder(folder, model.sample([prompt] * args.generated, seeds=range(args.generated)))
    return folders


def _audit(out: Path, ft: str, images: Path, calibration: Path, args) -> dict:
    if args.generated:
        gen, neutral = service(ft, out.parent / "service", args)
        cfg = AuditConfig(generated=gen, neutral=neutral, similarity=args.similarity, prompt=args.prompt,
                          images=images, calibration=calibration, alpha=args.alpha, evidence=False, seed=args.seed)
    else:
        cfg = AuditConfig(finetuned=ft, prompt=args.prompt, images=images, calibration=calibration, steps=args.steps,
                          alpha=args.alpha, evidence=False, seed=args.seed, score=args.score)
    res = audit_command(cfg, out, "cpu", log=print)
    write_json(out / "results.json", res)
    return res


def null_splits(rows: list[dict], args, seed: int, metric: str) -> dict:
    """Counts of false positives over args.splits random suspected / calibration splits."""
    rng = np.random.default_rng(seed)
    k = {"set": 0, "bh": 0, "holm": 0, "none": 0, "false_images": 0}
    for _ in range(args.splits):
        idx = rng.permutation(len(rows))[: args.suspected + args.calibration]
        # scored together as one audit call scores them: `combined`'s scaler sees exactly these images
        picked = [rows[i] for i in idx]
        scores = np.array([r["score"] for r in picked]) if args.generated else row_scores(picked, metric)[args.score]
        test, calib = scores[: args.suspected], scores[args.suspected:]
        d = audit_decisions(test, calib, args.alpha, "bh", seed)
        k["set"] += bool(d["set_used"])
        k["bh"] += bool(d["member"].any())
        k["holm"] += bool(stats.holm(d["p_values"], args.alpha).any())
        k["none"] += bool(d["uncontrolled"].any())
        k["false_images"] += int(d["uncontrolled"].sum())
    return k


def rates(k: dict, n: int, per_split: int) -> dict:
    def rate(count: int, total: int) -> dict:
        return {"rate": count / total, "ci95": list(stats.clopper_pearson(count, total)), "count": count}

    out = {"splits": n, **{name: rate(k[name], n) for name in ("set", "bh", "holm", "none")}}
    out["none_per_image"] = rate(k["false_images"], n * per_split)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--suspects", nargs="+", default=SUSPECTS, help="subjects the null suspects are fine-tuned on")
    ap.add_argument("--pool", default="mnist-m/3", help="subject of the scored pool (seen by no suspect)")
    ap.add_argument("--pool-source", help="a source spec (e.g. builtin:digits/mnist-m) to take the pool from in "
                    "place of --pool's test split")
    ap.add_argument("--pool-split", default="train", choices=["train", "test", "all"], help="of --pool-source")
    ap.add_argument("--pool-class", type=int, help="of --pool-source: only images of this label (default: all)")
    ap.add_argument("--pool-size", type=int, default=36)
    ap.add_argument("--members", type=int, default=10, help="each suspect's fine-tuning images")
    ap.add_argument("--holdout", type=int, default=20, help="power: never-seen images of the suspect's subject")
    ap.add_argument("--suspected", type=int, default=10, help="suspected images per split")
    ap.add_argument("--calibration", type=int, default=20, help="calibration images per split")
    ap.add_argument("--splits", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    add_suspect_options(ap)
    ap.add_argument("--steps", type=int, default=100, help="PGD steps")
    ap.add_argument("--score", default="cgi-dm", choices=get_args(AuditConfig.model_fields["score"].annotation),
                    help="the decision statistic (modelseal audit --score)")
    ap.add_argument("--generated", type=int, default=0, help="black-box: the service's samples per prompt (0: "
                    "the gray-box audit)")
    ap.add_argument("--similarity", default="ssim", choices=get_args(AuditConfig.model_fields["similarity"].annotation),
                    help="black-box (modelseal audit --similarity)")
    ap.add_argument("--no-power", dest="power", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.suspected + args.calibration > args.pool_size:
        ap.error("--suspected + --calibration must not exceed --pool-size")
    images, pool_name = load_pool(args, ap)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    half = args.pool_size // 2
    pool = write_split(images, args.out / "pool", {"a": half, "b": args.pool_size - half})
    per, power, totals = [], [], {"set": 0, "bh": 0, "holm": 0, "none": 0, "false_images": 0}
    for i, subject in enumerate(args.suspects):
        seed = args.seed + i
        base = args.out / subject.replace("/", "_")
        folders = write_split(builtin_subject(subject, 32, seed), base / "data",
                              {"members": args.members, "holdout": args.holdout})
        ft = _finetune(base / "suspect", folders["members"], args.prompt, args, seed)
        res = _audit(base / "pool-audit", ft, pool["a"], pool["b"], args)
        k = null_splits(res["scores"], args, seed, res.get("metric", ""))
        for name in totals:
            totals[name] += k[name]
        per.append({"suspect": subject, **rates(k, args.splits, args.suspected)})
        if args.power:
            r = _audit(base / "member-audit", ft, folders["members"], folders["holdout"], args)
            labels = np.array([row["role"] == "test" for row in r["scores"]])
            power.append({"suspect": subject, "set_p_value": r["set_p_value"], "set_verdict": r["set_verdict"],
                          "members_found_bh": r["members_found"], "members_uncontrolled": r["members_uncontrolled"],
                          "n_images": r["n_images"], "n_calibration": r["n_calibration"],
                          "auroc": stats.auroc([row["score"] for row in r["scores"]], labels)})
        print(f"[{time.time() - t0:.0f}s] {subject} done")
    summary = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "per_suspect": per, "pooled": rates(totals, args.splits * len(args.suspects), args.suspected),
               "power": power, "wall_s": round(time.time() - t0, 1)}
    write_json(args.out / "audit_null.json", summary)

    def cell(x: dict) -> str:
        return f"{x['rate']:.3f} (<= {x['ci95'][1]:.3f})"

    print(f"\nnull suspects: {len(args.suspects)}; pool {args.pool_size} images of {pool_name}; {args.splits} splits "
          f"per suspect of {args.suspected} suspected + {args.calibration} calibration; alpha {args.alpha}; "
          f"rate (95% Clopper-Pearson upper)")
    print(f"{'suspect':<14}{'set-level':>22}{'any false, BH':>22}{'any false, Holm':>22}"
          f"{'any false, none':>22}{'per image, none':>22}")
    for r in per + [{"suspect": "pooled", **summary["pooled"]}]:
        print(f"{r['suspect']:<14}{cell(r['set']):>22}{cell(r['bh']):>22}{cell(r['holm']):>22}{cell(r['none']):>22}"
              f"{cell(r['none_per_image']):>22}")
    for p in power:
        print(f"power, {p['suspect']}: {p['n_images']} members vs {p['n_calibration']} never seen: set p "
              f"{format_p(p['set_p_value'])} ({p['set_verdict']}), members found {p['members_found_bh']} (BH), "
              f"{p['members_uncontrolled']} (no control); AUROC {p['auroc']:.3f}")
    print(f"wall {summary['wall_s']:.0f}s; JSON: {args.out / 'audit_null.json'}")


if __name__ == "__main__":
    main()
