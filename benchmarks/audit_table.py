"""The audit acceptance protocol: DreamBooth suspects of several subjects, CGI-DM against
the loss baselines and a null suspect, AUROC pooled over subjects.

Built-in subjects (default): one digit of one domain from the digits test splits (never
seen by the tiny T2I model), 10 members / 10 hold-out / 10 others (the null suspect's
fine-tuning set). DreamBooth photo subjects (--photos): the photos of ../shared/data/
dreambooth/<subject> downscaled to the model's size; members are the first photos of each
subject, hold-out the rest, and all subjects of one run share one suspect model (the
members of every subject are its fine-tuning set, each with its own identifier prompt).

    python benchmarks/audit_table.py --out runs/audit-table
    python benchmarks/audit_table.py --out runs/audit-photos --photos ../shared/data/dreambooth
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from modelseal import stats
from modelseal.attacks.run import finetune_command
from modelseal.audit.run import audit_command
from modelseal.config import AuditConfig, FinetuneConfig
from modelseal.data.subjects import builtin_subject, photo_subject, write_split

SUBJECTS = ["mnist/5", "mnist-m/3", "syn/7"]


def _finetune(out: Path, data: Path, prompt: str, args, seed: int) -> str:
    cfg = FinetuneConfig(method=args.method, data=str(data), prompt=prompt, steps=args.ft_steps,
                         batch_size=args.ft_batch, class_prompt=args.class_prompt or None, seed=seed)
    finetune_command(cfg, out, "cpu", log=lambda m: None)
    return str(out / "model")


def add_suspect_options(ap: argparse.ArgumentParser) -> None:
    """The options _finetune reads (shared with audit_null.py)."""
    ap.add_argument("--prompt", default="a sks digit")
    ap.add_argument("--class-prompt", default="a digit", help="prior preservation ('' to disable)")
    ap.add_argument("--method", default="dreambooth")
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--ft-batch", type=int, default=4)


def _audit(out: Path, ft: str, null: str | None, folders: dict, prompt: str, args, seed: int) -> dict:
    cfg = AuditConfig(finetuned=ft, null_finetuned=null, prompt=prompt, members=folders["members"],
                      holdout=folders["holdout"], steps=args.steps, mc_samples=args.mc, ablations=args.ablations,
                      seed=seed, evidence=True)
    res = audit_command(cfg, out, "cpu", log=print)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def run_builtin(args) -> list[dict]:
    rows = []
    for k, subject in enumerate(args.subjects):
        seed = args.seed + k
        base = args.out / subject.replace("/", "_")
        folders = write_split(builtin_subject(subject, 32, seed), base / "data",
                              {"members": args.members, "holdout": args.holdout, "others": args.members})
        prompt = args.prompt
        t0 = time.time()
        ft = _finetune(base / "suspect", folders["members"], prompt, args, seed)
        null = _finetune(base / "null", folders["others"], prompt, args, seed) if args.null else None
        res = _audit(base / "audit", ft, null, folders, prompt, args, seed)
        res["subject"] = subject
        res["wall_s"] = round(time.time() - t0, 1)
        rows.append(res)
        print(f"{subject}: CGI-DM {res['auroc']:.3f}  " + "  ".join(f"{b} {v:.3f}" for b, v in res["baselines"].items()))
    return rows


def run_photos(args) -> list[dict]:
    subjects = sorted(p for p in Path(args.photos).iterdir() if p.is_dir())[: args.max_subjects]
    data = args.out / "data"
    meta = []
    members_all = []
    for k, folder in enumerate(subjects):
        imgs = photo_subject(folder, args.size)
        n_mem = min(args.members, len(imgs) - 2)
        f = write_split(imgs, data / folder.name, {"members": n_mem, "holdout": len(imgs) - n_mem})
        prompt = f"a sks {folder.name.replace('_', ' ')}"
        meta.append((folder.name, f, prompt))
        members_all.append((f["members"], prompt))
    # One captioned folder with every subject's members under its own prompt.
    cap = data / "train"
    cap.mkdir(parents=True, exist_ok=True)
    lines = []
    for (fm, prompt) in members_all:
        for p in sorted(fm.iterdir()):
            name = f"{fm.parent.name}_{p.name}"
            (cap / name).write_bytes(p.read_bytes())
            lines.append(json.dumps({"file_name": name, "text": prompt}))
    (cap / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    cfg = FinetuneConfig(method=args.method, data=str(cap), steps=args.ft_steps, batch_size=args.ft_batch,
                         seed=args.seed)
    finetune_command(cfg, args.out / "suspect", "cpu", log=print)
    rows = []
    for name, f, prompt in meta:
        res = _audit(args.out / "audit" / name, str(args.out / "suspect" / "model"), None, f, prompt, args, args.seed)
        res["subject"] = name
        rows.append(res)
        print(f"{name}: CGI-DM {res['auroc']:.3f} calibrated {res['baselines']['calibrated']:.3f}")
    return rows


def pooled(rows: list[dict], metric_names: list[str]) -> dict:
    """AUROC over all images of all subjects (one threshold for every suspect)."""
    labels = np.array([s["member"] for r in rows for s in r["scores"]])
    out = {"images": int(len(labels)), "members": int(labels.sum())}
    for m in metric_names:
        vals = np.array([s[m] for r in rows for s in r["scores"]])
        out[m] = stats.auroc(vals, labels)
        out[m + "_ci"] = list(stats.auroc_ci(vals, labels))
    cal = np.array([s["L_pre"] - s["L_ft"] for r in rows for s in r["scores"]])
    loss = np.array([-s["L_ft"] for r in rows for s in r["scores"]])
    out["calibrated"] = stats.auroc(cal, labels)
    out["loss"] = stats.auroc(loss, labels)
    out["mean_per_subject"] = {k: float(np.mean([r["baselines"].get(k, np.nan) if k != "cgi-dm" else r["auroc"]
                                                 for r in rows]))
                               for k in ["cgi-dm", *rows[0]["baselines"]]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", nargs="+", default=SUBJECTS)
    ap.add_argument("--photos", type=Path, default=None, help="DreamBooth photo subjects folder")
    ap.add_argument("--max-subjects", type=int, default=30)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--holdout", type=int, default=10)
    add_suspect_options(ap)
    ap.add_argument("--steps", type=int, default=1000, help="PGD steps")
    ap.add_argument("--mc", type=int, default=1)
    ap.add_argument("--no-null", dest="null", action="store_false")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = run_photos(args) if args.photos else run_builtin(args)
    summary = pooled(rows, list(rows[0]["metrics"]))
    summary["wall_s"] = round(time.time() - t0, 1)
    summary["per_subject"] = [{"subject": r["subject"], "cgi-dm": r["auroc"], **r["metrics"], **r["baselines"]}
                              for r in rows]
    (args.out / "table.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_subject"}, indent=2))
    for r in summary["per_subject"]:
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
