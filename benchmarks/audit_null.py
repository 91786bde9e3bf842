"""False-positive rates of audit mode (`--images` + `--calibration`) on null suspects.

Each null suspect is tiny:t2i DreamBooth-fine-tuned (200 steps, prior preservation) on the
members of one built-in subject. A pool of images of another subject, which no suspect saw,
is scored once per suspect through `audit_command` (CGI-DM, --steps PGD steps); then the
pool is split many times at random into suspected + calibration images, and every split
gets audit mode's decisions (`audit.run.audit_decisions`):
  - set level: the collection's rank-sum p-value <= alpha ("used"): the false-positive rate;
  - per image: any image called "member" under BH, under Holm, and without control (each
    image at p <= alpha). Every image is innocent, so "any false member" is the family-wise
    error; BH bounds it by alpha under this global null, no control does not.
Each rate has a 95% Clopper-Pearson interval (the upper end is printed).

Caveats. Splits of one scored pool are dependent: the bound is for the average over splits
of that pool, not for independent audits; the suspects (and their pools' scores) are the
independent part. Random splits make suspected and calibration images exchangeable by
construction, so this checks the tests and the multiplicity control, not the assumption a
user must meet (calibration images of the same kind as the suspected ones). The tests'
validity does not depend on score quality, so fewer PGD steps than the 1,000 default are
fine here; the power part below shows the scores still separate members.

Power (unless --no-power): each suspect is also audited on its own 10 members against 20
never-seen images of its subject: the set p-value, the members found under BH and without
control, and the AUROC of those scores.

    python benchmarks/audit_null.py --out runs/audit-null
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from audit_table import _finetune, add_suspect_options

from modelseal import stats
from modelseal.stats import format_p
from modelseal.audit.run import audit_command, audit_decisions
from modelseal.config import AuditConfig
from modelseal.data.subjects import builtin_subject, write_split

SUSPECTS = ["mnist/5", "syn/7", "uci/2"]


def _audit(out: Path, ft: str, images: Path, calibration: Path, args) -> dict:
    cfg = AuditConfig(finetuned=ft, prompt=args.prompt, images=images, calibration=calibration, steps=args.steps,
                      alpha=args.alpha, evidence=False, seed=args.seed)
    res = audit_command(cfg, out, "cpu", log=print)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def null_splits(scores: np.ndarray, args, seed: int) -> dict:
    """Counts of false positives over args.splits random suspected / calibration splits."""
    rng = np.random.default_rng(seed)
    k = {"set": 0, "bh": 0, "holm": 0, "none": 0, "false_images": 0}
    for _ in range(args.splits):
        idx = rng.permutation(len(scores))[: args.suspected + args.calibration]
        test, calib = scores[idx[: args.suspected]], scores[idx[args.suspected:]]
        d = audit_decisions(test, calib, args.alpha, "bh", seed)
        k["set"] += bool(d["set_used"])
        k["bh"] += bool(d["member"].any())
        k["holm"] += bool(stats.holm(d["p_values"], args.alpha).any())
        k["none"] += bool(d["uncontrolled"].any())
        k["false_images"] += int(d["uncontrolled"].sum())
    return k


def rates(k: dict, n: int, per_split: int) -> dict:
    out = {"splits": n}
    for name in ("set", "bh", "holm", "none"):
        out[name] = {"rate": k[name] / n, "ci95": list(stats.clopper_pearson(k[name], n)), "count": k[name]}
    out["none_per_image"] = k["false_images"] / (n * per_split)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--suspects", nargs="+", default=SUSPECTS, help="subjects the null suspects are fine-tuned on")
    ap.add_argument("--pool", default="mnist-m/3", help="subject of the scored pool (seen by no suspect)")
    ap.add_argument("--pool-size", type=int, default=36)
    ap.add_argument("--members", type=int, default=10, help="each suspect's fine-tuning images")
    ap.add_argument("--holdout", type=int, default=20, help="power: never-seen images of the suspect's subject")
    ap.add_argument("--suspected", type=int, default=10, help="suspected images per split")
    ap.add_argument("--calibration", type=int, default=20, help="calibration images per split")
    ap.add_argument("--splits", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    add_suspect_options(ap)
    ap.add_argument("--steps", type=int, default=100, help="PGD steps")
    ap.add_argument("--no-power", dest="power", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.suspected + args.calibration > args.pool_size:
        ap.error("--suspected + --calibration must not exceed --pool-size")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    half = args.pool_size // 2
    pool = write_split(builtin_subject(args.pool, 32, args.seed), args.out / "pool",
                       {"a": half, "b": args.pool_size - half})
    per, power, totals = [], [], {"set": 0, "bh": 0, "holm": 0, "none": 0, "false_images": 0}
    for i, subject in enumerate(args.suspects):
        seed = args.seed + i
        base = args.out / subject.replace("/", "_")
        folders = write_split(builtin_subject(subject, 32, seed), base / "data",
                              {"members": args.members, "holdout": args.holdout})
        ft = _finetune(base / "suspect", folders["members"], args.prompt, args, seed)
        res = _audit(base / "pool-audit", ft, pool["a"], pool["b"], args)
        scores = np.array([r["score"] for r in res["scores"]])
        k = null_splits(scores, args, seed)
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
    (args.out / "audit_null.json").write_text(json.dumps(summary, indent=2))

    def cell(x: dict) -> str:
        return f"{x['rate']:.3f} (<= {x['ci95'][1]:.3f})"

    print(f"\nnull suspects: {len(args.suspects)}; pool {args.pool_size} images of {args.pool}; {args.splits} splits "
          f"per suspect of {args.suspected} suspected + {args.calibration} calibration; alpha {args.alpha}; "
          f"rate (95% Clopper-Pearson upper)")
    print(f"{'suspect':<14}{'set-level':>22}{'any false, BH':>22}{'any false, Holm':>22}"
          f"{'any false, none':>22}{'per image, none':>17}")
    for r in per + [{"suspect": "pooled", **summary["pooled"]}]:
        print(f"{r['suspect']:<14}{cell(r['set']):>22}{cell(r['bh']):>22}{cell(r['holm']):>22}{cell(r['none']):>22}"
              f"{r['none_per_image']:>17.3f}")
    for p in power:
        print(f"power, {p['suspect']}: {p['n_images']} members vs {p['n_calibration']} never seen: set p "
              f"{format_p(p['set_p_value'])} ({p['set_verdict']}), members found {p['members_found_bh']} (BH), "
              f"{p['members_uncontrolled']} (no control); AUROC {p['auroc']:.3f}")
    print(f"wall {summary['wall_s']:.0f}s; JSON: {args.out / 'audit_null.json'}")


if __name__ == "__main__":
    main()
