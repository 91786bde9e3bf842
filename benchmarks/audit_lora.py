"""Audit power against what the suspect learned (issue 28): LoRA and full fine-tunes of the
kinds users make, each with its learned fidelity beside every decision statistic and the
black-box audit.

    python benchmarks/audit_lora.py --out runs/audit-lora [--grid small|full] [--pgd-steps 100]

Subjects and split as benchmarks/audit_suspects.py (TUNE subjects are the only ones a choice
is made on; HELD subjects are reported beside them). Every suspect fine-tunes tiny:t2i on the
members of all nine subjects at once, each under its own prompt, batch 4:

  lora-r{4,16,64}-lr{1e-4,1e-3}-{250,1000,3000}[-te]  UNet LoRA (the diffusers LoRA and
                                                  DreamBooth-LoRA scripts' kind), total steps;
                                                  -te: the text encoder's LoRA too
  dreambooth-200 / dreambooth-50 / full-flip-crop #18's full fine-tunes (steps per member image)
  null                                            DreamBooth on other subjects' photos under the
                                                  same prompts (nothing audited is a member)

Per suspect and subject: K samples under the subject's prompt from the suspect and from
tiny:t2i (same seeds). The learned fidelity (audit/generated.py) is the mean nearest-member
similarity of the suspect's samples minus the pretrained model's: how far the suspect moved
toward the members, in each of the fixed spaces FIDELITY (none trained on these images), and
'<space>-specific': each sample's nearness to its own subject's members minus its mean
nearness to the other subjects' (added after a first look at the held gains, where samples
that only became photo-like gained). The YARDSTICK, a rule fixed before the three spaces were
measured: the measure that best separates
dreambooth-200 from the null suspect on the TUNE subjects (their mean gains' difference over
the pooled SD of the per-subject gains); HELD subjects take no part in the choice. LEARNED,
fixed before any suspect was measured: a suspect has learned its subjects when its gain in
the yardstick is at least half of dreambooth-200's on the TUNE subjects.

Beside it, pooled over the TUNE (HELD) subjects' members and hold-out images: AUROC / TPR at
1 % FPR of every gray-box statistic (`modelseal audit`: combined, cgi-dm, calibrated, pia,
pia-calibrated, loss, CLiD) and of the black-box audit (`--generated`: the same K samples,
nearest-image SSIM, minus the nearest pretrained sample's with the pretrained samples as
--neutral). Writes OUT/table.json, OUT/table.md and OUT/fidelity.png; every fine-tune,
sample set and audit is kept under OUT and skipped when rerun.

--cost-suspect NAME adds the cost table: that suspect audited at each of --cost-steps PGD steps
(one MC sample) and at a quarter of --pgd-steps with 4 MC samples (equal cost), AUROC and set
power at n = 10 of cgi-dm and combined against the UNet evaluations per image (OUT/cost.json,
OUT/cost.md); --cost-only skips the table (the suspect trained before).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from audit_suspects import (HELD, NULL_SUBJECTS, ROOT, TUNE, captioned_folder, detection, samples, subjects,
                            write_subject)
from modelseal import stats
from modelseal.runs import atomic_path, atomic_write_text, git_sha, write_json

BATCH = 4
FULL = {  # name: (method, steps per member image, lr, extra)
    "dreambooth-200": ("dreambooth", 200, None, {}),
    "dreambooth-50": ("dreambooth", 50, None, {}),
    "full-flip-crop": ("full", 100, 1e-4, {"flip": True, "crop": 0.8}),
    "null": ("dreambooth", 200, None, {}),
}
GRIDS = {  # (rank, lr, total steps, text-encoder LoRA)
    "small": [(16, 1e-4, 1000, False), (16, 1e-3, 250, False), (16, 1e-3, 1000, False), (16, 1e-3, 3000, False),
              (16, 1e-3, 1000, True)],
    "full": [(r, lr, n, te) for r in (4, 16, 64) for lr in (1e-4, 1e-3) for n in (250, 1000, 3000)
             for te in (False, True)],
}
FIDELITY = ["ssim", "colour", "pixels"]
SET_SIZES = [5, 10]  # collection sizes drawn from a part's members (held: 19, tune: 12; 'all' tests them all)
COMBINED = ["cgi-dm", "calibrated", "pia", "pia-calibrated", "loss", "clid"]  # what a fitted combination weighs
SHOWN = ["combined", "cgi-dm", "calibrated", "pia", "pia-calibrated", "loss", "clid"]


def lora_name(rank: int, lr: float, steps: int, te: bool = False) -> str:
    return f"lora-r{rank}-lr{lr:.0e}-{steps}".replace("e-0", "e-") + ("-te" if te else "")


def suspect_specs(grid: str) -> dict:
    specs = {lora_name(r, lr, n, te): {"method": "lora", "rank": r, "lr": lr, "steps": n, "train_text_encoder": te}
             for r, lr, n, te in GRIDS[grid]}
    for name, (method, per_image, lr, extra) in FULL.items():
        specs[name] = {"method": method, "per_image": per_image, "lr": lr, **extra}
    return specs


def train(spec: dict, data: Path, n_images: int, out: Path, seed: int, scale: float) -> str:
    from modelseal.attacks.run import finetune_command
    from modelseal.config import FinetuneConfig

    target = out / "model"
    if (target / "model_index.json").is_file() or (target / "pytorch_lora_weights.safetensors").is_file():
        return str(target)  # trained before (finetune_command writes the model last)
    spec = dict(spec)
    per_image = spec.pop("per_image", None)
    steps = spec.pop("steps", None) or round(n_images * per_image / BATCH)
    cfg = FinetuneConfig(data=str(data), steps=max(1, round(steps * scale)), batch_size=BATCH, seed=seed, **spec)
    t0 = time.time()
    finetune_command(cfg, out, "cpu", log=lambda m: None)
    print(f"[lora] {out.name}: {cfg.method} {cfg.steps} steps on {n_images} images ({time.time() - t0:.0f} s)",
          flush=True)
    return str(target)


def audit(model: str, folders: dict, prompt: str, out: Path, args) -> list[dict]:
    from modelseal.audit.run import audit_command
    from modelseal.config import AuditConfig

    f = out / "results.json"
    if not f.is_file():
        cfg = AuditConfig(finetuned=model, prompt=prompt, members=folders["members"], holdout=folders["holdout"],
                          steps=args.pgd_steps, seed=args.seed, evidence=False)
        res = audit_command(cfg, out, "cpu", log=lambda m: None)
        write_json(f, {"scores": res["scores"]})
    return json.loads(f.read_text())["scores"]


def measure(name: str, model: str, subj: dict, folders: dict, args) -> dict:
    from modelseal.audit.generated import Similarity, blackbox_scores, learned_fidelity
    from modelseal.audit.inputs import read_set

    sims = {k: Similarity(k) for k in FIDELITY}
    rows = {"tune": [], "held": []}
    gain = {}
    members = {s: read_set(folders[s]["members"], 32, "members")[0] for s in TUNE + HELD}
    for s in TUNE + HELD:
        prompt = subj[s][1]
        gen = samples(model, prompt, args.k, args.out / "samples" / name / s)
        pre = samples("tiny:t2i", prompt, args.k, args.out / "samples" / "pretrained" / s)
        mem = members[s]
        hold = read_set(folders[s]["holdout"], 32, "holdout")[0]
        others = [members[o] for o in TUNE + HELD if o != s]
        gain[s] = {k: learned_fidelity(mem, gen, pre, sim)["gain"] for k, sim in sims.items()}
        gain[s].update({f"{k}-specific": learned_fidelity(mem, gen, pre, sim, others)["gain"]
                        for k, sim in sims.items()})
        bb = blackbox_scores(torch.cat([mem, hold]), gen, pre, sims["ssim"])
        gray = audit(model, folders[s], prompt, args.out / "audits" / name / s, args)
        for i, r in enumerate(gray):
            r.update(subject=s, bb_near=float(bb["near"][i]), bb_calibrated=float(bb["calibrated"][i]))
        rows["tune" if s in TUNE else "held"] += gray
    out = {"fidelity": gain, "rows": rows}
    for part in ("tune", "held"):
        names = TUNE if part == "tune" else HELD
        d = detection(rows[part])
        labels = np.array([r["member"] for r in rows[part]], dtype=int)
        for k in ("bb_near", "bb_calibrated"):
            v = np.array([r[k] for r in rows[part]])
            d[k] = {"auroc": stats.auroc(v, labels), "tpr_1": stats.tpr_at_fpr(v, labels, 0.01),
                    "tpr_5": stats.tpr_at_fpr(v, labels, 0.05)}
        d["fidelity_gains"] = {k: float(np.mean([gain[s][k] for s in names])) for k in gain[names[0]]}
        d["set_power"] = set_power(rows[part], args.seed)
        out[part] = d
    return out


def combination_features(rows: list[dict]) -> np.ndarray:
    """(n, len(COMBINED)) robust z-scores of the statistics, over the images one audit scores
    together (no labels): what a fitted combination weighs."""
    from audit_suspects import statistics

    from modelseal.audit.decision import robust_z

    vals = statistics(rows)
    return np.stack([robust_z(vals[k]) for k in COMBINED], axis=1)


def fit_combination(table: dict, seed: int) -> dict:
    """Logistic-regression weights of COMBINED's robust z-scores, fitted on the TUNE subjects'
    images of every suspect but the null (members against hold-out images); HELD images take
    no part. Adds each suspect's `fitted` AUROC / TPR and set power per part to the table."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([combination_features(t["rows"]["tune"]) for n, t in table.items() if n != "null"])
    y = np.concatenate([[r["member"] for r in t["rows"]["tune"]] for n, t in table.items() if n != "null"])
    lr = LogisticRegression(C=1.0).fit(x, y.astype(int))
    w = lr.coef_[0] / np.abs(lr.coef_[0]).sum()
    for t in table.values():
        for part in ("tune", "held"):
            rows = t["rows"][part]
            v = combination_features(rows) @ w
            labels = np.array([r["member"] for r in rows], dtype=int)
            t[part]["fitted"] = {"auroc": stats.auroc(v, labels), "tpr_1": stats.tpr_at_fpr(v, labels, 0.01),
                                 "tpr_5": stats.tpr_at_fpr(v, labels, 0.05)}
            for r, s in zip(rows, v):
                r["fitted"] = float(s)
            t[part]["set_power"]["fitted"] = set_power(rows, seed, keys=["fitted"])["fitted"]
    return {k: float(c) for k, c in zip(COMBINED, w)}


def share_used(mem: np.ndarray, cal: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> float:
    """Share of `draws` random collections of n member scores that the collection test (rank-sum
    against the calibration scores `cal`) finds used at alpha 0.05."""
    return float(np.mean([stats.rank_set_test(rng.choice(mem, n, replace=False), cal, seed=d)[0] <= 0.05
                          for d in range(draws)]))


def set_power(rows: list[dict], seed: int, draws: int = 200, keys: list[str] | None = None,
              sizes: list[int] = SET_SIZES) -> dict:
    """The collection test (rank-sum of the collection's scores against every hold-out image of
    the part as calibration, alpha 0.05) on random collections of `sizes` members, share
    found used per statistic; 'all' tests every member at once (one test, 0 or 1). On the null
    suspect (nothing audited is a member) the share is a false-positive rate of this one split."""
    from audit_suspects import statistics

    vals = statistics(rows)
    vals.update({k: np.array([r[k] for r in rows]) for k in ("bb_near", "bb_calibrated", "fitted") if k in rows[0]})
    member = np.array([r["member"] for r in rows], dtype=bool)
    rng = np.random.default_rng(seed)
    out = {}
    for k in keys or SHOWN + ["bb_calibrated"]:
        mem, cal = vals[k][member], vals[k][~member]
        out[k] = {str(n): share_used(mem, cal, n, draws, rng) for n in sizes if n < len(mem)}
        out[k]["all"] = float(stats.rank_set_test(mem, cal)[0] <= 0.05)
    return out


def gain_over_null(table: dict, folders: dict, args) -> None:
    """Each suspect's fidelity gain over the null suspect (nearest-member SSIM of its samples
    minus the null's, same prompts and seeds) per subject and part, as `gain_over_null`: the
    reference is an innocent fine-tune on other photos, which became as photo-like as the
    suspect without its subjects (tiny:t2i itself draws digits)."""
    from modelseal.audit.generated import Similarity, learned_fidelity
    from modelseal.audit.inputs import read_set

    sim = Similarity("ssim")
    read = lambda f: read_set(f, 32, f.name)[0]  # noqa: E731
    for name, t in table.items():
        g = {s: learned_fidelity(read(folders[s]["members"]), read(args.out / "samples" / name / s),
                                 read(args.out / "samples" / "null" / s), sim)["gain"] for s in TUNE + HELD}
        t["fidelity_over_null"] = g
        for part, names in (("tune", TUNE), ("held", HELD)):
            t[part]["gain_over_null"] = float(np.mean([g[s] for s in names]))


def null_threshold(table: dict) -> float | None:
    """LEARNED over the null suspect: half of dreambooth-200's gain over it on the TUNE subjects
    (None before `gain_over_null` has run)."""
    t = table["dreambooth-200"]["tune"]
    return 0.5 * t["gain_over_null"] if "gain_over_null" in t else None


def fitted_col(table: dict) -> list[str]:
    return ["fitted"] if "fitted" in next(iter(table.values()))["tune"] else []


def without_rows(table: dict) -> dict:
    return {n: {k: v for k, v in t.items() if k != "rows"} for n, t in table.items()}


def yardstick(table: dict) -> tuple[str, dict]:
    """The fidelity space that best separates dreambooth-200 from the null suspect on the TUNE
    subjects, and each space's separation (difference of the mean per-subject gains over
    their pooled SD)."""
    sep = {}
    for k in table["dreambooth-200"]["fidelity"][TUNE[0]]:
        a = np.array([table["dreambooth-200"]["fidelity"][s][k] for s in TUNE])
        b = np.array([table["null"]["fidelity"][s][k] for s in TUNE])
        sep[k] = float((a.mean() - b.mean()) / max(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2), 1e-9))
    return max(sep, key=sep.get), sep


def with_gain(table: dict, kind: str) -> dict:
    """The table with each part's `fidelity_gain` read in the yardstick `kind`."""
    return {n: {**t, **{p: {**t[p], "fidelity_gain": t[p]["fidelity_gains"][kind]} for p in ("tune", "held")}}
            for n, t in table.items()}


def unet_evals(pgd_steps: int, mc: int = 1, loss_samples: int = 32) -> int:
    """UNet evaluations per audited image: PGD (forward + backward through both models per MC
    sample, counted as 2 x 2 passes), the paired losses (2 per draw) and PIA (2 per model)."""
    return 4 * pgd_steps * mc + 2 * loss_samples + 4


def cost(name: str, model: str, subj: dict, folders: dict, args) -> dict:
    """The same suspect audited at each PGD budget (one MC sample; and 4 MC samples at a quarter
    of the steps): AUROC / TPR of cgi-dm and combined, pooled per part, beside the UNet
    evaluations per image."""
    from modelseal.audit.run import audit_command
    from modelseal.config import AuditConfig

    out = {}
    budgets = [(n, 1) for n in args.cost_steps] + [(max(1, args.pgd_steps // 4), 4)]
    for steps, mc in budgets:
        key = f"{steps}x{mc}"
        rows = {"tune": [], "held": []}
        for s in TUNE + HELD:
            f = args.out / "cost" / name / key / s / "results.json"
            if not f.is_file():
                cfg = AuditConfig(finetuned=model, prompt=subj[s][1], members=folders[s]["members"],
                                  holdout=folders[s]["holdout"], steps=steps, mc_samples=mc, seed=args.seed,
                                  evidence=False)
                res = audit_command(cfg, f.parent, "cpu", log=lambda m: None)
                write_json(f, {"scores": res["scores"], "seconds_per_image": res["seconds_per_image"]})
            saved = json.loads(f.read_text())
            rows["tune" if s in TUNE else "held"] += saved["scores"]
        out[key] = {"pgd_steps": steps, "mc_samples": mc, "unet_evals": unet_evals(steps, mc),
                    **{part: {k: detection(r)[k] for k in ("cgi-dm", "combined")} for part, r in rows.items()}}
        for part, r in rows.items():
            for k, p in set_power(r, args.seed, keys=["cgi-dm", "combined"]).items():
                out[key][part][k]["set_power"] = p
        print(f"[lora] cost {name} {key}: held cgi-dm {out[key]['held']['cgi-dm']['auroc']:.3f}, combined "
              f"{out[key]['held']['combined']['auroc']:.3f}", flush=True)
    return out


def cost_markdown(c: dict) -> str:
    """AUROC / TPR at 1 % FPR per part and statistic, then the held subjects' set power at n = 10."""
    lines = ["| PGD steps x MC samples | UNet evaluations per image | tune: cgi-dm | tune: combined | held: cgi-dm "
             "| held: combined | held, n = 10: cgi-dm | combined |", "|---|---|---|---|---|---|---|---|"]
    for key, r in c.items():
        sets = [f"{r['held'][k]['set_power']['10']:.2f}" if "set_power" in r["held"][k] else "" for k in
                ("cgi-dm", "combined")]
        cells = [f"{r[p][k]['auroc']:.3f} / {r[p][k]['tpr_1']:.2f}" for p in ("tune", "held")
                 for k in ("cgi-dm", "combined")]
        lines.append(f"| {r['pgd_steps']} x {r['mc_samples']} | {r['unet_evals']} | " + " | ".join(cells + sets) + " |")
    return "\n".join(lines) + "\n"


def markdown(table: dict, learned: float) -> str:
    cols = SHOWN + fitted_col(table) + ["bb_near", "bb_calibrated"]
    learned_null = null_threshold(table)
    over = learned_null is not None
    head = ("| suspect | subjects | fidelity gain | learned | " + ("over the null | learned (over the null) | "
            if over else "") + " | ".join(cols) + " |\n|---|---|---|---|" + ("---|---|" if over else "")
            + "---|" * len(cols) + "\n")
    lines = []
    for name, t in table.items():
        for part in ("tune", "held"):
            d = t[part]
            lines.append(f"| {name} | {part} ({d['members']} / {d['images'] - d['members']}) | "
                         f"{d['fidelity_gain']:+.3f} | {'yes' if d['fidelity_gain'] >= learned else 'no'} | "
                         + (f"{d['gain_over_null']:+.3f} | {'yes' if d['gain_over_null'] >= learned_null else 'no'} | "
                            if over else "")
                         + " | ".join(f"{d[k]['auroc']:.3f} / {d[k]['tpr_1']:.2f}" for k in cols) + " |")
    return (head + "\n".join(lines) + f"\n\ncells: pooled AUROC / TPR at 1 % FPR; learned: fidelity gain >= "
            f"{learned:.3f} (half of dreambooth-200's on the tune subjects); bb_*: the black-box audit\n")


def power_markdown(table: dict) -> str:
    cols = SHOWN + fitted_col(table) + ["bb_calibrated"]
    lines = ["| suspect | subjects | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, t in table.items():
        for part in ("tune", "held"):
            p = t[part]["set_power"]
            lines.append(f"| {name} | {part} | " + " | ".join(
                " / ".join(f"{p[k][n]:.2f}" if n != "all" else f"{p[k][n]:.0f}" for n in p[k]) for k in cols) + " |")
    return "\n".join(lines) + ("\n\ncells: the collection test's share of random member collections found used at "
                               f"alpha 0.05, n = {' / '.join(map(str, SET_SIZES))} / all members (one test)\n")


def plot(table: dict, learned: float, kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    over = null_threshold(table) is not None
    key = "gain_over_null" if over else "fidelity_gain"
    learned = null_threshold(table) if over else learned
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, part in zip(axes, ("tune", "held")):
        for j, k in enumerate(["combined", "calibrated", "pia", "fitted", "bb_calibrated"]):
            xs = [t[part][key] for t in table.values()]
            ys = [t[part][k]["auroc"] for t in table.values()]
            ax.scatter(xs, ys, s=18, color=f"C{j}", label=k)
        ax.axvline(learned, color="0.5", ls=":", lw=1)
        ax.axhline(0.9, color="0.5", ls="--", lw=0.8)
        ax.set_title(f"{part} subjects")
        ax.set_xlabel("learned fidelity gain over the null suspect (nearest-member SSIM)" if over else
                      f"learned fidelity gain (nearest-member {kind}, suspect - pretrained)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUROC (members vs hold-out)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "dreambooth")
    ap.add_argument("--grid", choices=list(GRIDS), default="full")
    ap.add_argument("--suspects", nargs="+", help="only these (names as in the table)")
    ap.add_argument("--pgd-steps", type=int, default=1000)
    ap.add_argument("--k", type=int, default=16, help="samples per subject and model")
    ap.add_argument("--ft-scale", type=float, default=1.0, help="multiply every suspect's steps (smoke runs)")
    ap.add_argument("--cost-suspect", help="also audit this suspect at each of --cost-steps (the cost table)")
    ap.add_argument("--cost-steps", nargs="+", type=int, default=[25, 50, 100, 250, 1000])
    ap.add_argument("--cost-only", action="store_true", help="only the cost table (the suspect trained before)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subj = subjects(args.photos, 32, TUNE + HELD)
    folders = {n: write_subject(im, args.out / "data" / n) for n, (im, _, _) in subj.items()}
    names = TUNE + HELD
    n_mem = captioned_folder([(p, subj[n][1]) for n in names for p in sorted(folders[n]["members"].iterdir())],
                             args.out / "data" / "train") if not (args.out / "data" / "train").is_dir() else \
        len(list((args.out / "data" / "train").glob("*.png")))
    if args.cost_only:
        if not args.cost_suspect:
            raise SystemExit("--cost-only needs --cost-suspect")
        return cost_table(args, subj, folders, t0)
    if not (args.out / "data" / "null-train").is_dir():
        others = subjects(args.photos, 32, NULL_SUBJECTS)
        items = []
        for j, o in enumerate(NULL_SUBJECTS):
            f = write_subject(others[o][0], args.out / "data" / "null" / o)
            items += [(p, subj[names[j % len(names)]][1]) for p in sorted(f["members"].iterdir())]
        captioned_folder(items, args.out / "data" / "null-train")
    n_null = len(list((args.out / "data" / "null-train").glob("*.png")))
    specs = suspect_specs(args.grid)
    order = ["dreambooth-200"] + [n for n in specs if n != "dreambooth-200"]
    order = [n for n in order if not args.suspects or n in args.suspects or n == "dreambooth-200"]
    table = {}
    for name in order:
        null = name == "null"
        model = train(specs[name], args.out / "data" / ("null-train" if null else "train"), n_null if null else n_mem,
                      args.out / "suspects" / name, args.seed, args.ft_scale)
        table[name] = measure(name, model, subj, folders, args)
        t = table[name]
        gains = t["tune"]["fidelity_gains"]
        print(f"[lora] {name}: fidelity gain (tune / held) " + ", ".join(
              f"{k} {gains[k]:+.3f} / {t['held']['fidelity_gains'][k]:+.3f}" for k in gains)
              + "; held AUROC " + ", ".join(f"{k} {t['held'][k]['auroc']:.3f}" for k in SHOWN + ["bb_calibrated"]),
              flush=True)
        write_json(args.out / "table.json", {"commit": (git_sha() or "unknown")[:7], "table": without_rows(table)})
    weights = fit_combination(table, args.seed) if "null" in table and len(table) > 2 else {}
    if "null" in table:
        gain_over_null(table, folders, args)
    kind, separation = yardstick(table) if "null" in table else ("ssim", {})
    table = with_gain(table, kind)
    learned = 0.5 * table["dreambooth-200"]["tune"]["fidelity_gain"]
    write_json(args.out / "table.json", {"commit": (git_sha() or "unknown")[:7], "yardstick": kind,
                                         "separation": separation, "learned": learned, "fitted_weights": weights,
                                         "table": without_rows(table)})
    md = markdown(table, learned) + (f"fidelity gain in the yardstick '{kind}'; separation of dreambooth-200 from "
                                     "the null on the tune subjects: " + ", ".join(
                                         f"{k} {v:.2f}" for k, v in separation.items()) + "\n")
    md += "\n" + power_markdown(table)
    atomic_write_text(args.out / "table.md", md)
    plot(table, learned, kind, args.out / "fidelity.png")
    print(md)
    if args.cost_suspect:
        cost_table(args, subj, folders, t0)
    else:
        print(f"[lora] {time.time() - t0:.0f} s")


def cost_table(args, subj: dict, folders: dict, t0: float) -> None:
    c = cost(args.cost_suspect, str(args.out / "suspects" / args.cost_suspect / "model"), subj, folders, args)
    write_json(args.out / "cost.json", {"commit": (git_sha() or "unknown")[:7], "cost": c})
    atomic_write_text(args.out / "cost.md", cost_markdown(c))
    print(cost_markdown(c))
    print(f"[lora] {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
