"""Audit evidence on subjects and suspects like users' (issue 18): every decision statistic
and published baseline, as the suspect gets lighter, and the set-level test's power against
the collection's size.

    python benchmarks/audit_suspects.py --out runs/audit-suspects [--photos ../shared/data/dreambooth]
                                        [--suspects dreambooth-200 ...] [--pgd-steps 1000] [--quick]

Subjects (real photos): DreamBooth subjects (objects, animals, toys, a cartoon figure) from
--photos, each split into its first half (members) and the rest (hold-out), and people: the
LFW faces that ship with scikit-image (8 members, 8 hold-out). TUNE subjects are the only
ones any choice (the default --score) is made on; HELD subjects are reported beside them
and never looked at while choosing.

Suspects (tiny:t2i fine-tuned on the members of every subject at once, each subject under
its own identifier prompt 'a sks <class>', faces under 'a photo of a sks face'), from heavy
to light: DreamBooth (full UNet on the instance prompts, no prior preservation: one class
prompt cannot serve nine subjects) at 200 / 100 / 50 steps per member image, LoRA r8 at lr
1e-3 and 1e-4 (100 steps per image), full fine-tuning at lr 1e-4 with random flips and
random resized crops (side 0.8-1; 100 steps per image), and a null suspect: DreamBooth at
200 steps per image on other subjects' photos under the same prompts (nothing audited is a
member: every score should read AUROC ~0.5). Steps are counted at batch 4.

Per suspect, pooled over the images of the TUNE (or HELD) subjects (one model, one
threshold): AUROC and TPR at 1 % FPR of cgi-dm, calibrated, combined (audit/decision.py,
the robust scaler fitted on the pooled images without labels), the loss, PIA and CLiD_th
(its scaler likewise pooled).

The collection (set-level) test: tiny:t2i fully fine-tuned with flips and crops on 60 LFW
faces ("a photo of a face", 50 steps per image); per statistic, the share of 500 random
member sets of size 5 / 10 / 20 / 40 that the one-sided rank-sum test (stats.rank_set_test)
finds used at alpha 0.05 and 0.01 against 70 calibration faces (power), and the share of
sets of non-members it finds used (false-positive rate). Each draw splits the 140
non-member faces afresh into 70 calibration images and 70 innocent ones, so the false-positive
rate is over splits, not the luck of one split.

CGI-DM's own settings (VARIANTS: similarity metric, radius, mask, Monte Carlo samples) against
the reference's, on the DreamBooth-50 suspect: each on the TUNE subjects, the best there (and
the metrics, free) also on the HELD ones (OUT/variants.json, OUT/variants.md).

Writes OUT/table.json, OUT/table.md, OUT/power.json, OUT/power.md, OUT/power.png; each
fine-tune and audit is saved under OUT and skipped when rerun.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

import numpy as np

from modelseal.config import AuditConfig
from modelseal.runs import atomic_path, atomic_write_text, write_json

ROOT = Path(__file__).resolve().parent.parent
TUNE = ["backpack", "dog", "teapot", "bear_plushie"]
HELD = ["cat", "clock", "red_cartoon", "wolf_plushie", "faces"]
NULL_SUBJECTS = ["can", "candle", "dog2", "duck_toy", "fancy_boot", "grey_sloth_plushie", "monster_toy", "vase"]
SUSPECTS = {  # name: (method, steps per member image, lr, extra options)
    "dreambooth-200": ("dreambooth", 200, None, {}),
    "dreambooth-100": ("dreambooth", 100, None, {}),
    "dreambooth-50": ("dreambooth", 50, None, {}),
    "lora-1e-3": ("lora", 100, 1e-3, {}),
    "lora-1e-4": ("lora", 100, 1e-4, {}),
    "full-flip-crop": ("full", 100, 1e-4, {"flip": True, "crop": 0.8}),
    "null": ("dreambooth", 200, None, {}),
    # the collection test's LoRA suspects (not in the image-level table): rank 16 at lr 1e-3, 1,000 and
    # 3,000 steps on its 60 faces (steps per image x 60 x 0.5 / batch 4)
    "lora-r16-1000": ("lora", 400 / 3, 1e-3, {"rank": 16}),
    "lora-r16-3000": ("lora", 400, 1e-3, {"rank": 16}),
}
REALISTIC = [n for n in SUSPECTS if not n.startswith("lora-r16")]
# CGI-DM's own settings against the reference's (eps 8.75 = 70 rescaled to tiny:t2i's 4x8x8 latent, 2x2 checker,
# 1,000 steps, one MC sample, SSIM of the removed region), on the lightest DreamBooth suspect
VARIANT_SUSPECT = "dreambooth-50"
VARIANTS = {  # name: (audit options, similarity metric)
    "reference": ({}, "ssim_removed"),
    "metric: ssim (whole image)": ({}, "ssim"),
    "metric: psnr of the removed region": ({}, "psnr_removed"),
    "metric: image features (tiny:clip)": ({}, "features"),
    "radius x0.5 (eps 4.4)": ({"eps": 4.375}, "ssim_removed"),
    "radius x2 (eps 17.5)": ({"eps": 17.5}, "ssim_removed"),
    "random mask (half the cells)": ({"mask": "random"}, "ssim_removed"),
    "1x1-latent checker": ({"block": 1}, "ssim_removed"),
    "4 MC samples x 250 steps": ({"mc_samples": 4, "steps": 250}, "ssim_removed"),
}
DECIDERS = list(get_args(AuditConfig.model_fields["score"].annotation))  # what `modelseal audit --score` takes
SCORES = ["cgi-dm", "calibrated", "combined", "loss", "pia", "pia-calibrated", "clid"]
SET_SIZES = [5, 10, 20, 40]
FACE_PROMPT = "a photo of a face"  # the collection test's fine-tuning prompt
N_MEMBERS, N_CALIBRATION = 60, 70  # the collection test's faces: members, calibration (the rest: innocent)
BATCH = 4


def subjects(photos: Path, size: int, names: list[str]) -> dict:
    """name -> (images uint8 (N, H, W, 3), prompt, class noun)."""
    from modelseal.data.faces import load_faces
    from modelseal.data.subjects import dreambooth_classes, photo_subject

    classes = dreambooth_classes(photos)
    out = {}
    for name in names:
        if name == "faces":
            out[name] = (load_faces(size).images[:16], "a photo of a sks face", "face")
        else:
            out[name] = (photo_subject(photos / name, size), f"a sks {classes[name]}", classes[name])
    return out


def write_subject(images: np.ndarray, folder: Path) -> dict:
    from modelseal.data.subjects import write_split

    n_mem = (len(images) + 1) // 2
    return write_split(images, folder, {"members": n_mem, "holdout": len(images) - n_mem})


def captioned_folder(items: list[tuple[Path, str]], folder: Path) -> int:
    """One folder of images with metadata.jsonl (file_name, text); returns the image count."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for src, prompt in items:
        name = f"{src.parent.parent.name}_{src.parent.name}_{src.name}"
        (folder / name).write_bytes(src.read_bytes())
        lines.append(json.dumps({"file_name": name, "text": prompt}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def train_suspect(name: str, data: Path, n_images: int, out: Path, seed: int, scale: float = 1.0,
                  prompt: str | None = None) -> str:
    from modelseal.attacks.run import finetune_command
    from modelseal.config import FinetuneConfig

    target = out / "model"
    if (target / "model_index.json").is_file() or (target / "adapter_config.json").is_file() \
            or any(target.glob("*.safetensors")):
        return str(target)
    method, per_image, lr, extra = SUSPECTS[name]
    steps = max(1, round(n_images * per_image * scale / BATCH))
    cfg = FinetuneConfig(method=method, data=str(data), prompt=prompt, steps=steps, batch_size=BATCH, lr=lr, seed=seed,
                         **extra)
    t0 = time.time()
    finetune_command(cfg, out, "cpu", log=lambda m: None)
    print(f"[suspects] {name}: {method} {steps} steps on {n_images} images ({time.time() - t0:.0f} s)", flush=True)
    return str(target)


def audit_subject(suspect: str, folders: dict, prompt: str, out: Path, args, **options) -> dict:
    from modelseal.audit.run import audit_command
    from modelseal.config import AuditConfig

    f = out / "results.json"
    if f.is_file():
        return json.loads(f.read_text())
    cfg = AuditConfig(finetuned=suspect, prompt=prompt, members=folders["members"], holdout=folders["holdout"],
                      **{"steps": args.pgd_steps, "seed": args.seed, "evidence": False, **options})
    res = audit_command(cfg, out, "cpu", log=lambda m: None)
    keep = {k: res[k] for k in ("auroc", "decision_scores", "baselines", "scores", "seconds_per_image")}
    write_json(f, keep)
    return keep


def statistics(rows: list[dict], metric: str = "ssim_removed") -> dict[str, np.ndarray]:
    """Every statistic for images scored together (scalers fitted on all of them, no labels)."""
    from modelseal.audit.decision import robust_z, row_scores

    col = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
    out = row_scores(rows, metric)
    out["loss"] = -col("L_ft")
    if "pia" not in out:  # audits before PIA became a decision statistic recorded it as a baseline
        out["pia"] = col("pia")
    out["clid"] = 0.5 * robust_z(col("clid_d")) + 0.5 * robust_z(col("clid_l"))  # CLiD_th, alpha 0.5
    return out


def detection(rows: list[dict], metric: str = "ssim_removed") -> dict:
    from modelseal import stats

    labels = np.array([r["member"] for r in rows], dtype=int)
    vals = statistics(rows, metric)
    return {"images": len(rows), "members": int(labels.sum()),
            **{k: {"auroc": stats.auroc(v, labels), "tpr_1": stats.tpr_at_fpr(v, labels, 0.01),
                   "tpr_5": stats.tpr_at_fpr(v, labels, 0.05)} for k, v in vals.items()}}


def realistic(args, subj: dict, folders: dict) -> dict:
    names = TUNE + HELD
    members = [(p, subj[n][1]) for n in names for p in sorted(folders[n]["members"].iterdir())]
    n_mem = captioned_folder(members, args.out / "data" / "train")
    # the null suspect: other subjects' photos under the audited subjects' prompts
    others = subjects(args.photos, args.size, NULL_SUBJECTS)
    null_items = []
    for j, o in enumerate(NULL_SUBJECTS):
        f = write_subject(others[o][0], args.out / "data" / "null" / o)
        null_items += [(p, subj[names[j % len(names)]][1]) for p in sorted(f["members"].iterdir())]
    n_null = captioned_folder(null_items, args.out / "data" / "null-train")
    table = {}
    for name in args.suspects:
        data, n = (args.out / "data" / "null-train", n_null) if name == "null" else (args.out / "data" / "train", n_mem)
        model = train_suspect(name, data, n, args.out / "suspects" / name, args.seed, args.ft_scale)
        rows, per_subject = {"tune": [], "held": []}, {}
        t0 = time.time()
        for s in names:
            res = audit_subject(model, folders[s], subj[s][1], args.out / "audits" / name / s, args)
            rows["tune" if s in TUNE else "held"] += [{**r, "subject": s} for r in res["scores"]]
            per_subject[s] = res["auroc"]
        rows["all"] = rows["tune"] + rows["held"]
        table[name] = {part: detection(r) for part, r in rows.items()}
        table[name]["per_subject"] = per_subject
        table[name]["audit_s"] = round(time.time() - t0, 1)
        line = "  ".join(f"{k} {table[name]['held'][k]['auroc']:.3f}/{table[name]['held'][k]['tpr_1']:.2f}" for k in SCORES)
        print(f"[suspects] {name} held-out subjects (AUROC/TPR@1%): {line}", flush=True)
    return table


def variants(args, subj: dict, folders: dict) -> dict:
    """CGI-DM's settings on VARIANT_SUSPECT: every variant on the TUNE subjects; the one with the best
    TPR at 1 % FPR there (then AUROC) is run on the HELD subjects beside the reference (and the
    metric-only variants, which need no new inversion)."""
    model = str(args.out / "suspects" / VARIANT_SUSPECT / "model")
    res = {}

    def rows_for(name: str, part: list[str]) -> list[dict]:
        options, _ = VARIANTS[name]
        base = args.out / "audits" / VARIANT_SUSPECT if not options else args.out / "variants" / name.split(" (")[0]
        return [{**r, "subject": s} for s in part
                for r in audit_subject(model, folders[s], subj[s][1], base / s, args, **options)["scores"]]

    for name, (options, metric) in VARIANTS.items():
        d = detection(rows_for(name, TUNE), metric)
        res[name] = {"options": options, "metric": metric, "tune": {k: d[k] for k in ("cgi-dm", "combined")}}
        print(f"[variants] {name}: tune cgi-dm {d['cgi-dm']['auroc']:.3f} / {d['cgi-dm']['tpr_1']:.2f}, "
              f"combined {d['combined']['auroc']:.3f} / {d['combined']['tpr_1']:.2f}", flush=True)
    best = max(res, key=lambda n: (res[n]["tune"]["cgi-dm"]["tpr_1"], res[n]["tune"]["cgi-dm"]["auroc"]))
    # the metric-only variants re-score the reference's inversions: held figures cost nothing
    for name in dict.fromkeys(["reference", best] + [n for n in VARIANTS if not VARIANTS[n][0]]):
        d = detection(rows_for(name, HELD), res[name]["metric"])
        res[name]["held"] = {k: d[k] for k in ("cgi-dm", "combined")}
        print(f"[variants] {name}: held cgi-dm {d['cgi-dm']['auroc']:.3f} / {d['cgi-dm']['tpr_1']:.2f}", flush=True)
    return {"suspect": VARIANT_SUSPECT, "chosen_on_tune": best, "variants": res}


def variants_markdown(v: dict) -> str:
    cell = lambda d: f"{d['auroc']:.3f} / {d['tpr_1']:.2f}"  # noqa: E731
    lines = [f"| {n} | {cell(r['tune']['cgi-dm'])} | {cell(r['tune']['combined'])} | "
             + (f"{cell(r['held']['cgi-dm'])} | {cell(r['held']['combined'])} |" if "held" in r else " | |")
             for n, r in v["variants"].items()]
    return ("| CGI-DM setting | tune: cgi-dm | tune: combined | held: cgi-dm | held: combined |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + f"\n\nsuspect {v['suspect']}; cells: pooled AUROC / TPR at 1 % FPR; chosen on the tune "
            f"subjects: {v['chosen_on_tune']}\n")


def collection(args) -> dict:
    """The set-level test's power and false-positive rate against the collection's size."""
    from modelseal import stats
    from modelseal.data.faces import load_faces
    from modelseal.data.subjects import write_split

    faces = load_faces(args.size).images
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(faces))
    n_mem, n_cal = N_MEMBERS, N_CALIBRATION
    f = write_split(faces[order], args.out / "collection" / "data",
                    {"members": n_mem, "calibration": n_cal, "null": len(faces) - n_mem - n_cal})
    prompt = FACE_PROMPT
    where = args.out / ("collection" if args.collection_suspect == "full-flip-crop" else
                        f"collection-{args.collection_suspect}")
    model = train_suspect(args.collection_suspect, f["members"], n_mem, where / "suspect", args.seed,
                          0.5 * args.ft_scale, prompt)
    # one evaluation-mode audit scores every face: members vs the rest (calibration + null)
    rest = args.out / "collection" / "data" / "rest"
    if not rest.is_dir():
        rest.mkdir()
        for part in ("calibration", "null"):
            for p in sorted(f[part].iterdir()):
                (rest / f"{part}_{p.name}").write_bytes(p.read_bytes())
    res = audit_subject(model, {"members": f["members"], "holdout": rest}, prompt, where / "audit", args)
    rows = res["scores"]
    vals = statistics(rows)
    role = np.array(["members" if r["member"] else ("calibration" if "/calibration_" in r["image"] else "null")
                     for r in rows])
    labels = (role == "members").astype(int)
    out = {"images": {k: int((role == k).sum()) for k in ("members", "calibration", "null")},
           "image_level": {k: {"auroc": stats.auroc(v, labels), "tpr_1": stats.tpr_at_fpr(v, labels, 0.01)}
                           for k, v in vals.items()},
           "draws": args.draws, "power": {}, "fpr": {}}
    for k, v in vals.items():
        mem, non = v[role == "members"], v[role != "members"]
        out["power"][k], out["fpr"][k] = {}, {}
        for size in SET_SIZES:
            pm, pn = split_draws(mem, non, size, n_cal, args.draws, rng)
            out["power"][k][str(size)] = {a: float(np.mean(np.array(pm) <= float(a))) for a in ("0.05", "0.01")}
            out["fpr"][k][str(size)] = {a: float(np.mean(np.array(pn) <= float(a))) for a in ("0.05", "0.01")}
        print(f"[suspects] collection {k}: power at 0.05 " + " ".join(
            f"{s}:{out['power'][k][str(s)]['0.05']:.2f}" for s in SET_SIZES) + "; false positives " + " ".join(
            f"{s}:{out['fpr'][k][str(s)]['0.05']:.2f}" for s in SET_SIZES), flush=True)
    return out


def split_draws(mem: np.ndarray, non: np.ndarray, size: int, n_cal: int, draws: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The collection test's p-values over `draws` draws, each a fresh split of the non-members'
    scores into n_cal calibration and the rest innocent: a random set of `size` members (power)
    and one of `size` innocent images (false positives), each tested against that calibration."""
    from modelseal import stats

    pm, pn = [], []
    for d in range(draws):
        split = rng.permutation(len(non))
        cal, null = non[split[:n_cal]], non[split[n_cal:]]
        pm.append(stats.rank_set_test(rng.choice(mem, size, replace=False), cal, seed=d)[0])
        pn.append(stats.rank_set_test(rng.choice(null, size, replace=False), cal, seed=d)[0])
    return np.array(pm), np.array(pn)


def samples(model_path: str, prompt: str, k: int, folder: Path):
    """K samples of the prompt (seeds 0..K-1), written once as a folder and read back."""
    from modelseal.audit.inputs import read_set
    from modelseal.data.folders import write_image_folder
    from modelseal.models.diffusion import is_lora_folder, load_t2i

    if not folder.is_dir():
        m = load_t2i(model_path, base="tiny:t2i") if is_lora_folder(model_path) else load_t2i(model_path)
        write_image_folder(folder, m.sample([prompt] * k, seeds=list(range(k)), steps=30))
    return read_set(folder, 32, folder.name)[0]


def collection_fidelity(args, k: int = 16) -> dict:
    """What the collection test's suspects learned of the 60 member faces: the nearest-member SSIM
    of K samples of 'a photo of a face' (seeds 0..K-1) minus a null suspect's (DreamBooth, 200
    steps per image at the collection's scale, on 60 faces of the 'null' part, which no suspect
    saw), as benchmarks/audit_lora.py measures its subjects; beside it, a DreamBooth-200 suspect
    on the members as the reference for "learned" (audit_lora.py's threshold is half of it)."""
    from modelseal.audit.generated import Similarity, learned_fidelity
    from modelseal.audit.inputs import read_set

    data = args.out / "collection" / "data"
    if not (data / "members").is_dir():
        raise SystemExit("--collection-fidelity needs the collection test's data: run the collection test first")
    null_train = data / "null-train"
    if not null_train.is_dir():
        null_train.mkdir()
        for p in sorted((data / "null").iterdir())[:N_MEMBERS]:
            (null_train / p.name).write_bytes(p.read_bytes())
    prompt = FACE_PROMPT
    scale = 0.5 * args.ft_scale
    models = {"null": train_suspect("dreambooth-200", null_train, N_MEMBERS, args.out / "collection-null" / "suspect",
                                    args.seed, scale, prompt),
              "dreambooth-200": train_suspect("dreambooth-200", data / "members", N_MEMBERS,
                                              args.out / "collection-dreambooth-200" / "suspect", args.seed, scale,
                                              prompt)}
    for where in sorted(args.out.glob("collection-lora-*")):
        models[where.name.removeprefix("collection-")] = str(where / "suspect" / "model")
    members = read_set(data / "members", args.size, "members")[0]
    gen = {n: samples(m, prompt, k, args.out / "collection-samples" / n) for n, m in models.items()}
    sim = Similarity("ssim")
    out = {n: learned_fidelity(members, g, gen["null"], sim)["gain"] for n, g in gen.items()}
    print("[suspects] collection fidelity, gain over the null: " + ", ".join(f"{n} {v:+.3f}" for n, v in out.items()),
          flush=True)
    return {"gain_over_null": out, "learned": 0.5 * out["dreambooth-200"], "k": k}


def choose_score(table: dict) -> dict:
    """The `--score` default by measured power: mean TPR at 1 % FPR over the non-null suspects on the
    TUNE subjects (ties: mean AUROC); the HELD subjects' means are reported, never used."""
    real = [n for n in table if n != "null"]
    mean = {part: {k: {m: float(np.mean([table[n][part][k][m] for n in real])) for m in ("auroc", "tpr_1")}
                   for k in DECIDERS} for part in ("tune", "held")}
    best = max(DECIDERS, key=lambda k: (mean["tune"][k]["tpr_1"], mean["tune"][k]["auroc"]))
    return {"suspects": real, "mean": mean, "chosen": best}


def markdown(table: dict, power: dict | None) -> tuple[str, str]:
    head = "| suspect | subjects | " + " | ".join(SCORES) + " |\n|---|---|" + "---|" * len(SCORES) + "\n"
    lines = []
    for name, t in table.items():
        if name == "choice":
            continue
        for part in ("tune", "held"):
            d = t[part]
            lines.append(f"| {name} | {part} ({d['members']} / {d['images'] - d['members']}) | " + " | ".join(
                f"{d[k]['auroc']:.3f} / {d[k]['tpr_1']:.2f}" for k in SCORES) + " |")
    md = head + "\n".join(lines) + "\n\ncells: pooled AUROC / TPR at 1 % FPR (members / hold-out images)\n"
    if "choice" in table:
        c = table["choice"]
        md += "\nmean over the non-null suspects, tune / held: " + "; ".join(
            f"{k} {c['mean']['tune'][k]['auroc']:.3f} / {c['mean']['tune'][k]['tpr_1']:.2f}, "
            f"{c['mean']['held'][k]['auroc']:.3f} / {c['mean']['held'][k]['tpr_1']:.2f}" for k in DECIDERS) \
            + f"; chosen on tune: {c['chosen']}\n"
    if not power:
        return md, ""
    ph = "| statistic | " + " | ".join(f"power n={s}" for s in SET_SIZES) + " | false positives n=5 / 40 |\n|---|" \
        + "---|" * (len(SET_SIZES) + 1) + "\n"
    pl = [f"| {k} | " + " | ".join(f"{power['power'][k][str(s)]['0.05']:.2f} ({power['power'][k][str(s)]['0.01']:.2f})"
                                   for s in SET_SIZES)
          + f" | {power['fpr'][k]['5']['0.05']:.3f} / {power['fpr'][k]['40']['0.05']:.3f} |" for k in power["power"]]
    return md, ph + "\n".join(pl) + "\n\ncells: share of sets found used at alpha 0.05 (0.01)\n"


def plot(power: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in power["power"]:
        ax.plot(SET_SIZES, [power["power"][k][str(s)]["0.05"] for s in SET_SIZES], marker="o", label=k)
    ax.plot(SET_SIZES, [max(power["fpr"][k][str(s)]["0.05"] for k in power["fpr"]) for s in SET_SIZES], "k:",
            label="largest false-positive rate")
    ax.axhline(0.05, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(SET_SIZES, [str(s) for s in SET_SIZES])
    ax.set_xlabel("images in the collection")
    ax.set_ylabel("share found used (rank-sum, alpha 0.05)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "dreambooth")
    ap.add_argument("--suspects", nargs="*", default=REALISTIC, choices=REALISTIC,
                    help="the image-level table's suspects (none: only the collection test)")
    ap.add_argument("--collection-suspect", default="full-flip-crop", choices=list(SUSPECTS),
                    help="the suspect fine-tuned on the 60 faces of the collection test")
    ap.add_argument("--pgd-steps", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--draws", type=int, default=500, help="random sets per size in the collection test")
    ap.add_argument("--ft-scale", type=float, default=1.0, help="multiply every suspect's steps (smoke runs)")
    ap.add_argument("--no-collection", dest="collection", action="store_false")
    ap.add_argument("--collection-fidelity", action="store_true",
                    help="what the collection suspects learned of the faces (a null and a DreamBooth-200 suspect "
                    "trained for it; OUT/collection-fidelity.json)")
    ap.add_argument("--no-variants", dest="variants", action="store_false", help="skip CGI-DM's settings study")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 PGD steps, 2 suspects, 1/20 of the steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.pgd_steps, args.ft_scale, args.draws = 20, 0.05, 20
        args.suspects = args.suspects[:1] + ["null"]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subj = subjects(args.photos, args.size, TUNE + HELD)
    folders = {n: write_subject(im, args.out / "data" / n) for n, (im, _, _) in subj.items()}
    table = realistic(args, subj, folders) if args.suspects else {}
    if any(n != "null" for n in table):
        table["choice"] = choose_score(table)
    if args.variants and VARIANT_SUSPECT in args.suspects:
        v = variants(args, subj, folders)
        write_json(args.out / "variants.json", v)
        atomic_write_text(args.out / "variants.md", variants_markdown(v))
        print(variants_markdown(v))
    power = collection(args) if args.collection else None
    if args.collection_fidelity:
        write_json(args.out / "collection-fidelity.json", collection_fidelity(args))
    md, pmd = markdown(table, power)
    write_json(args.out / "table.json", table)
    atomic_write_text(args.out / "table.md", md)
    if power:
        write_json(args.out / "power.json", power)
        atomic_write_text(args.out / "power.md", pmd)
        plot(power, args.out / "power.png")
    print(md)
    print(pmd)
    print(f"[suspects] {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
