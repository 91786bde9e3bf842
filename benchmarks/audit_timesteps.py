"""Which timesteps carry the calibrated loss's evidence? (issue 28: several time steps and noise
draws per image.)

    python benchmarks/audit_timesteps.py --runs runs/audit-lora --out runs/audit-timesteps \\
        [--faces runs/audit-suspects]

Reads the suspects, subjects and audits that benchmarks/audit_lora.py left in RUNS (and, with
--faces, the 60-face LoRA suspects of benchmarks/audit_suspects.py --collection-suspect). For
every suspect it computes both models' denoising losses of every member and hold-out image on
a grid of timesteps (TIMESTEPS, --draws noises each, shared by the two models:
audit.baselines.loss_grid), then scores each VARIANT of the calibrated loss from that grid:

  uniform        mean over the grid of L_pre - L_ft (today's `calibrated` with more, stratified draws)
  t<=W           the same over the timesteps up to W only
  ratio[ t<=W]   mean over the timesteps of log(L_pre / L_ft) (each timestep's draws averaged
                 first): scale-free, so the noisy high timesteps weigh no more than the low ones

beside the audits' own `calibrated` (32 random draws) and `combined`, and `combined` rebuilt
with each variant in place of the calibrated loss. The RULE, fixed before any variant was
scored: the variant with the highest mean AUROC over the non-null suspects on the TUNE
subjects (ties: mean set power at n = 10 there); HELD subjects and the faces are reported
beside it and take no part in the choice. Writes OUT/timesteps.json and OUT/timesteps.md;
each suspect's loss grid is kept under OUT/grids and skipped when rerun.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from audit_lora import share_used
from audit_suspects import FACE_PROMPT, HELD, N_CALIBRATION, ROOT, TUNE, split_draws, subjects
from modelseal import stats
from modelseal.audit.decision import robust_z
from modelseal.runs import atomic_write_text, git_sha, write_json

TIMESTEPS = list(range(10, 1000, 20))  # 50 timesteps of T = 1000
WINDOWS = [100, 200, 300, 500]
SET_N = 10


def variants(l_pre: np.ndarray, l_ft: np.ndarray) -> dict[str, np.ndarray]:
    """Every VARIANT per image from (n, timesteps, draws) loss grids."""
    t = np.array(TIMESTEPS)
    diff = (l_pre - l_ft).mean(2)
    ratio = np.log(l_pre.mean(2)) - np.log(l_ft.mean(2))
    out = {"uniform": diff.mean(1), "ratio": ratio.mean(1)}
    for w in WINDOWS:
        out[f"t<={w}"] = diff[:, t <= w].mean(1)
        out[f"ratio t<={w}"] = ratio[:, t <= w].mean(1)
    return out


def grid(model: str, images: torch.Tensor, prompts: list[str], cache: Path, draws: int, seed: int):
    from modelseal.audit.baselines import loss_grid
    from modelseal.audit.run import load_pair

    if not cache.is_file():
        t0 = time.time()
        pre, ft = load_pair("tiny:t2i", model, "cpu")
        l_pre, l_ft = loss_grid(pre, ft, images, prompts, TIMESTEPS, draws, seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, l_pre=l_pre.numpy(), l_ft=l_ft.numpy())
        print(f"[timesteps] {cache.stem}: {len(images)} images x {len(TIMESTEPS)} timesteps x {draws} draws "
              f"({time.time() - t0:.0f} s)", flush=True)
    z = np.load(cache)
    return z["l_pre"].astype(np.float64), z["l_ft"].astype(np.float64)


def scored(rows: list[dict], v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The audits' own statistics for the rows, each variant, and combined with each variant."""
    cgi = np.array([r["ssim_removed"] for r in rows])
    cal = np.array([r["L_pre"] - r["L_ft"] for r in rows])
    out = {"calibrated (audit)": cal, "combined (audit)": robust_z(cgi) + robust_z(cal)}
    for k, x in v.items():
        out[k] = x
        out[f"combined: {k}"] = robust_z(cgi) + robust_z(x)
    return out


def evaluate(vals: dict[str, np.ndarray], member: np.ndarray, seed: int) -> dict:
    """AUROC, TPR at 1 % FPR and the set power at n = SET_N (200 collections against every
    non-member as calibration; nan when there are too few members) of each statistic."""
    labels = member.astype(int)
    out = {}
    for k, x in vals.items():
        mem, cal = x[member], x[~member]
        out[k] = {"auroc": stats.auroc(x, labels), "tpr_1": stats.tpr_at_fpr(x, labels, 0.01),
                  "set": share_used(mem, cal, SET_N, 200, np.random.default_rng(seed)) if len(mem) > SET_N
                  else float("nan")}
    return out


def subject_suspects(args) -> dict:
    from modelseal.audit.inputs import read_set

    subj = subjects(args.photos, 32, TUNE + HELD)
    table = {}
    for folder in sorted((args.runs / "suspects").iterdir()):
        name = folder.name
        model = str(folder / "model")
        if not (args.runs / "audits" / name).is_dir():
            continue
        rows, images, prompts = [], [], []
        for s in TUNE + HELD:
            res = json.loads((args.runs / "audits" / name / s / "results.json").read_text())["scores"]
            x = torch.cat([read_set(args.runs / "data" / s / part, 32, part)[0] for part in ("members", "holdout")])
            assert len(x) == len(res), (name, s)
            rows += [{**r, "subject": s} for r in res]
            images.append(x)
            prompts += [subj[s][1]] * len(x)
        l_pre, l_ft = grid(model, torch.cat(images), prompts, args.out / "grids" / f"{name}.npz", args.draws, args.seed)
        v = variants(l_pre, l_ft)
        table[name] = {}
        for part, names in (("tune", TUNE), ("held", HELD)):
            idx = np.array([r["subject"] in names for r in rows])
            part_rows = [r for r, i in zip(rows, idx) if i]
            vals = scored(part_rows, {k: x[idx] for k, x in v.items()})
            table[name][part] = evaluate(vals, np.array([r["member"] for r in part_rows]), args.seed)
        print(f"[timesteps] {name}: held AUROC " + ", ".join(
            f"{k} {table[name]['held'][k]['auroc']:.3f}" for k in ("calibrated (audit)", "uniform", "t<=300",
                                                                    "ratio")), flush=True)
    return table


def faces(args) -> dict:
    """The 60-face LoRA suspects: image AUROC and the collection test at n = 20 against 70 of the
    140 non-member faces (a fresh split per draw), its false-positive rate on the other 70."""
    from modelseal.audit.inputs import read_set

    out = {}
    for where in sorted(args.faces.glob("collection-lora-*")):
        res = json.loads((where / "audit" / "results.json").read_text())["scores"]
        data = args.faces / "collection" / "data"
        x = torch.cat([read_set(data / "members", 32, "members")[0], read_set(data / "rest", 32, "rest")[0]])
        assert len(x) == len(res)
        l_pre, l_ft = grid(str(where / "suspect" / "model"), x, [FACE_PROMPT] * len(x),
                           args.out / "grids" / f"faces-{where.name}.npz", args.draws, args.seed)
        vals = scored(res, variants(l_pre, l_ft))
        member = np.array([r["member"] for r in res])
        rng = np.random.default_rng(args.seed)
        out[where.name] = {}
        for k, v in vals.items():
            pm, pn = split_draws(v[member], v[~member], 20, N_CALIBRATION, 500, rng)
            out[where.name][k] = {"auroc": stats.auroc(v, member.astype(int)), "power_20": float(np.mean(pm <= 0.05)),
                                  "fpr_20": float(np.mean(pn <= 0.05))}
        print(f"[timesteps] faces {where.name}: n = 20 power " + ", ".join(
            f"{k} {out[where.name][k]['power_20']:.2f}" for k in ("calibrated (audit)", "uniform", "t<=300")),
            flush=True)
    return out


def choose(table: dict) -> dict:
    real = [n for n in table if n != "null"]
    keys = [k for k in table[real[0]]["tune"] if not k.startswith("combined") and k != "calibrated (audit)"]
    mean = {part: {k: {m: float(np.nanmean([table[n][part][k][m] for n in real])) for m in ("auroc", "set")}
                   for k in table[real[0]][part]} for part in ("tune", "held")}
    best = max(keys, key=lambda k: (mean["tune"][k]["auroc"], mean["tune"][k]["set"]))
    return {"suspects": real, "mean": mean, "chosen": best}


def markdown(table: dict, choice: dict, face: dict) -> str:
    keys = list(choice["mean"]["tune"])
    lines = [f"Chosen on the TUNE subjects: **{choice['chosen']}**.", "",
             "Mean over the non-null suspects (AUROC / set power at n = 10):", "",
             "| variant | tune | held | null: tune | null: held |", "|---|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(
            f"{choice['mean'][p][k]['auroc']:.3f} / {choice['mean'][p][k]['set']:.2f}" for p in ("tune", "held"))
            + " | " + " | ".join(f"{table['null'][p][k]['auroc']:.3f} / {table['null'][p][k]['set']:.2f}"
                                 for p in ("tune", "held")) + " |")
    show = ["combined (audit)", "calibrated (audit)", "uniform", choice["chosen"], f"combined: {choice['chosen']}"]
    show = list(dict.fromkeys(show))
    lines += ["", "Per suspect, held subjects (AUROC / set power at n = 10):", "",
              "| suspect | " + " | ".join(show) + " |", "|---|" + "---|" * len(show)]
    for n, t in table.items():
        lines.append(f"| {n} | " + " | ".join(f"{t['held'][k]['auroc']:.3f} / {t['held'][k]['set']:.2f}"
                                              for k in show) + " |")
    if face:
        lines += ["", "Faces, 60 members (AUROC / power at n = 20 / false positives at n = 20):", "",
                  "| suspect | " + " | ".join(show) + " |", "|---|" + "---|" * len(show)]
        for n, t in face.items():
            lines.append(f"| {n} | " + " | ".join(
                f"{t[k]['auroc']:.3f} / {t[k]['power_20']:.2f} / {t[k]['fpr_20']:.3f}" for k in show) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="benchmarks/audit_lora.py's output folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--faces", type=Path, help="benchmarks/audit_suspects.py's output folder (LoRA face suspects)")
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "dreambooth")
    ap.add_argument("--draws", type=int, default=4, help="noises per timestep")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.time()
    table = subject_suspects(args)
    choice = choose(table)
    face = faces(args) if args.faces else {}
    write_json(args.out / "timesteps.json", {"commit": git_sha(), "timesteps": TIMESTEPS, "draws": args.draws,
                                             "table": table, "choice": choice, "faces": face,
                                             "seconds": round(time.time() - t0)})
    atomic_write_text(args.out / "timesteps.md", markdown(table, choice, face))
    print(markdown(table, choice, face))


if __name__ == "__main__":
    main()
