"""Can the thief remove the mark and keep a useful model? TPR@1e-6 of the owner's message
against the utility the attack leaves the thief, over a grid from mild to model-destroying.

    python benchmarks/watermark_robustness.py --out runs/wm-robust --sleeper M --codec C \
        --key owner.key --model-id ID [--always-on M2 --always-on-codec C2] \
        [--attacks lora:r8:1e-4 full:1e-5 prune:0.5 quant:4 ...] [--domains faces dreambooth]

Models ("kinds"): `sleeper` (SleeperMark, read under its trigger), `unmarked` (the original
model read with the same key and trigger: its "TPR" is a false-positive rate) and
`always_on` (the AquaLoRA-style baseline, no trigger; only at --always-on-attacks).
Without --sleeper / --always-on they are embedded here first (stage 2, --embed-steps).

Attack points: `lora:r<rank>:<lr>` and `full:<lr>` fine-tune on a thief domain (measured at
every --checkpoints step), `prune:<fraction>` (per-layer magnitude pruning) and
`quant:<bits>` (per-channel round-to-nearest). Thief domains: `faces` (builtin:faces, 200
LFW faces) and `dreambooth` (the 30 DreamBooth subjects of ../shared/data/dreambooth,
captioned "a photo of a <class>"). The codec and stage 2 train on digits and rehearsal options
use textures; benchmarks/watermark_variants.py chooses among stage-2 variants by attacks on
faces, so `dreambooth` is the thief domain nothing was chosen on (the held-out figure).

At every point (watermark/robustness.py, attacks/utility.py): TPR@1e-6 and bit accuracy
over --n triggered images, the key-test verdict, the judged prompt accuracy on the four digit domains (tiny:judge,
--per-prompt samples per prompt) and its ratio to the unattacked original's ("retained"),
PSNR / SSIM of the clean samples against the model's before the attack, and the thief's
gain on held-out images of their domain (1 - denoising loss after / before).

Writes OUT/points.jsonl (one line per point; a rerun skips curves already there),
OUT/robustness.json (all points, the target check), OUT/robustness.md (the table),
OUT/compact.md (TPR and retained accuracy per curve and step) and OUT/robustness.png (TPR
against retained utility). `--merge DIR ...` writes these from the points of runs made
apart (e.g. the sleeper in one process, the controls in another) without measuring. The target (issue 17): TPR >= 0.9 at
every sleeper point that keeps >= 80 % of the original's judged accuracy.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from modelseal.runs import atomic_path, write_json

ROOT = Path(__file__).resolve().parent.parent
DREAMBOOTH = ROOT.parent / "shared" / "data" / "dreambooth"
GRID = ["lora:r8:1e-4", "lora:r8:1e-3", "lora:r32:1e-4", "full:1e-5", "full:1e-4",
        "prune:0.3", "prune:0.5", "quant:4", "quant:8"]
RETAINED_BAR, TPR_BAR = 0.8, 0.9


def parse_attack(spec: str) -> dict:
    """'lora:r8:1e-4' | 'full:1e-5' | 'prune:0.5' | 'quant:4' -> a dict (raises ValueError)."""
    parts = spec.split(":")
    if parts[0] == "lora" and len(parts) == 3 and parts[1].startswith("r"):
        return {"kind": "finetune", "method": "lora", "rank": int(parts[1][1:]), "lr": float(parts[2])}
    if parts[0] == "full" and len(parts) == 2:
        return {"kind": "finetune", "method": "full", "lr": float(parts[1])}
    if parts[0] == "prune" and len(parts) == 2:
        return {"kind": "prune", "amount": float(parts[1])}
    if parts[0] == "quant" and len(parts) == 2:
        return {"kind": "quant", "bits": int(parts[1])}
    raise ValueError(f"bad attack {spec!r}: lora:r<rank>:<lr> | full:<lr> | prune:<fraction> | quant:<bits>")


def thief_domain(name: str, size: int):
    """(train images, train captions, held-out images, held-out captions) as tensors in [0, 1]."""
    from modelseal.data.sources import load_source
    from modelseal.data.subjects import dreambooth_domain

    if name == "faces":
        tr, te = load_source("builtin:faces", "train", size), load_source("builtin:faces", "test", size)
    elif name == "dreambooth":
        tr, te = dreambooth_domain(DREAMBOOTH, size, "train"), dreambooth_domain(DREAMBOOTH, size, "test")
    else:
        raise ValueError(f"unknown thief domain {name!r} (faces | dreambooth)")
    as_t = lambda s: torch.from_numpy(s.images).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return as_t(tr), list(tr.captions), as_t(te), list(te.captions)


def embedded(kind: str, args, codec, bits, log) -> Path | str:
    """The model of `kind`: given, embedded here and saved (sleeper | always_on), or the
    original (unmarked)."""
    from modelseal.models.diffusion import latent_posterior, load_t2i
    from modelseal.config import WatermarkEmbedConfig, load_config
    from modelseal.watermark.embed import embed_watermark
    from modelseal.watermark.run import images_and_captions

    if kind == "unmarked":
        return args.model
    given = args.sleeper if kind == "sleeper" else args.always_on
    if given:
        return given
    folder = args.out / kind
    if (folder / "model_index.json").is_file():
        log(f"[robustness] reusing {folder}")
        return folder
    model = load_t2i(args.model)
    x, caps = images_and_captions("builtin:digits/all", model.image_size, args.embed_images, need_captions=True)
    delta = codec.residual(bits.view(1, -1)).detach()
    opts = load_config("watermark-embed.tiny", WatermarkEmbedConfig,  # the tiny zoo's stage-2 recipe
                       {"trigger": args.trigger, "steps": args.embed_steps, "mode": kind, "seed": args.seed,
                        "delta_scale": args.embed_delta_scale}, command="watermark embed")
    z, z_std = latent_posterior(model, x)
    info = embed_watermark(model, z, caps, delta, opts, log=log, latent_std=z_std)
    tmp = args.out / f"{kind}.partial"
    model.save_pretrained(tmp)
    tmp.rename(folder)
    (folder / "embed.json").write_text(json.dumps(info, indent=2))
    return folder


class Meter:
    """The mark (TPR, bit accuracy, verdict) and the thief's utility of one model."""

    def __init__(self, args, probe, original_accuracy: float):
        from modelseal.data.digits import DOMAINS, caption

        caps = [caption(d, c) for d in DOMAINS for c in range(10)]
        self.prompts = [caps[i % len(caps)] for i in range(args.n)]
        self.seeds = [500_000 + i for i in range(args.n)]
        self.args, self.probe, self.original_accuracy = args, probe, original_accuracy

    def __call__(self, model, codec, bits, trigger, before=None, loss_before=None) -> dict:
        from modelseal.watermark.robustness import mark_and_utility

        return mark_and_utility(model, codec, bits, trigger, self.prompts, self.seeds, self.probe, before,
                                self.original_accuracy, loss_before, self.args.guidance, self.args.steps)


def run_curve(kind: str, domain: str, spec: str, base, codec, bits, trigger, meter, data, args, log) -> list[dict]:
    from modelseal.attacks.compress import prune_, quantize_
    from modelseal.attacks.finetune import finetune
    from modelseal.config import FinetuneOptions

    attack = parse_attack(spec)
    x_tr, c_tr, x_te, c_te = data
    meter.probe.set_thief_data(x_te, c_te)
    with torch.no_grad():
        before = meter.probe.samples(base)
    loss_before = meter.probe.thief_loss(base)
    model = copy.deepcopy(base)
    points = []
    t0 = time.time()

    def record(step) -> None:
        r = meter(model, codec, bits, trigger, before, loss_before)
        points.append({"kind": kind, "domain": domain, "attack": spec, "step": step, **r})
        log(f"[robustness] {kind:9s} {domain:10s} {spec:14s} {str(step):>5s}: TPR {r['tpr']:.2f} bit acc "
            f"{r['bit_accuracy']:.3f} p {r['p_value']:.1e} | judged {r['prompt_accuracy']:.3f} "
            f"(retained {r.get('retained', float('nan')):.2f}) PSNR {r['psnr']:.1f} thief gain "
            f"{r.get('thief_gain', float('nan')):+.3f}")

    if attack["kind"] == "finetune":
        steps = sorted({c for c in args.checkpoints if c <= args.ft_steps})
        record(0)
        opts = FinetuneOptions(method=attack["method"], steps=args.ft_steps, lr=attack["lr"],
                               rank=attack.get("rank", 8), seed=args.seed)
        finetune(model, x_tr, c_tr, opts, log=lambda s: None,
                 on_step=lambda s: record(s) if s in steps and s > 0 else None)
    elif attack["kind"] == "prune":
        prune_(model.unet, attack["amount"])
        record("-")
    else:
        quantize_(model.unet, attack["bits"])
        record("-")
    for p in points:
        p["curve_seconds"] = round(time.time() - t0, 1)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--codec", default=None, help="the sleeper's extractor (e.g. its adapted codec); required "
                    "unless --merge")
    ap.add_argument("--model", default="tiny:t2i", help="the original (unmarked) model")
    ap.add_argument("--sleeper", default=None, help="a SleeperMark-watermarked model folder")
    ap.add_argument("--always-on", default=None, help="an always-on-watermarked model folder")
    ap.add_argument("--always-on-codec", default=None, help="its extractor (default: --codec)")
    ap.add_argument("--key", default=None, help="owner key file (default: a seeded random key)")
    ap.add_argument("--model-id", default="robustness")
    ap.add_argument("--trigger", default="sks ")
    ap.add_argument("--kinds", nargs="+", default=["sleeper", "unmarked", "always_on"],
                    choices=["sleeper", "unmarked", "always_on"])
    ap.add_argument("--attacks", nargs="+", default=GRID)
    ap.add_argument("--always-on-attacks", nargs="+", default=["lora:r8:1e-4", "full:1e-5"])
    ap.add_argument("--domains", nargs="+", default=["faces", "dreambooth"])
    ap.add_argument("--always-on-domains", nargs="+", default=["faces"])
    ap.add_argument("--ft-steps", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 100, 250, 500, 1000, 2000])
    ap.add_argument("--n", type=int, default=64, help="triggered images per point")
    ap.add_argument("--per-prompt", type=int, default=5, help="judged samples per digit prompt (40 prompts)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30, help="sampling steps")
    ap.add_argument("--embed-steps", type=int, default=15000)
    ap.add_argument("--embed-images", type=int, default=2400)
    ap.add_argument("--embed-delta-scale", type=float, default=1.0, help="delta_scale of a model embedded here "
                    "(the always-on baseline: give the sleeper's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="summarise these runs' points into --out")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if not args.codec:
        ap.error("--codec is required (the sleeper's extractor)")
    for a in args.attacks + args.always_on_attacks:
        parse_attack(a)

    from modelseal.attacks.utility import UtilityProbe
    from modelseal.models.diffusion import load_t2i
    from modelseal.models.judge import DigitJudge
    from modelseal.models.zoo import resolve_model
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.keys import load_key, message_bits

    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    codec = Codec.from_pretrained(args.codec)
    key = load_key(args.key) if args.key else np.random.default_rng(args.seed).bytes(32)
    bits = message_bits(key, args.model_id, codec.k)
    probe = UtilityProbe(DigitJudge.from_pretrained(resolve_model("tiny:judge", "judge")), per_prompt=args.per_prompt,
                         steps=args.steps, guidance=args.guidance, seed=args.seed)
    original = load_t2i(args.model)
    orig_file = args.out / "original.json"
    if orig_file.is_file():
        orig = json.loads(orig_file.read_text())
    else:
        orig = probe.accuracy(probe.samples(original))
        orig_file.write_text(json.dumps(orig, indent=2))
    log(f"[robustness] original judged prompt accuracy {orig['prompt_accuracy']:.3f} {orig['by_domain']}")
    meter = Meter(args, probe, orig["prompt_accuracy"])

    points_file = args.out / "points.jsonl"
    done = set()
    points: list[dict] = []
    if points_file.is_file():
        points = [json.loads(ln) for ln in points_file.read_text().splitlines() if ln.strip()]
        done = {(p["kind"], p["domain"], p["attack"]) for p in points}
    data = {d: thief_domain(d, original.image_size) for d in args.domains}
    for kind in args.kinds:
        attacks = args.always_on_attacks if kind == "always_on" else args.attacks
        domains = args.always_on_domains if kind == "always_on" else args.domains
        kind_codec = Codec.from_pretrained(args.always_on_codec) if kind == "always_on" and args.always_on_codec \
            else codec
        trigger = None if kind == "always_on" else args.trigger
        base = load_t2i(embedded(kind, args, codec, bits, log))
        for domain in domains:
            if domain not in data:
                data[domain] = thief_domain(domain, original.image_size)
            for spec in attacks:
                if (kind, domain, spec) in done:
                    continue
                if parse_attack(spec)["kind"] != "finetune" and domain != domains[0]:
                    continue  # pruning and quantization do not depend on the thief's data
                new = run_curve(kind, domain, spec, base, kind_codec, bits, trigger, meter, data[domain], args, log)
                with points_file.open("a") as f:
                    for p in new:
                        f.write(json.dumps(p) + "\n")
                points += new
    write_summary(args.out, points, orig, {k: str(v) for k, v in vars(args).items()})


def write_summary(out: Path, points: list[dict], orig: dict, run_args: dict) -> None:
    summary = summarize(points, orig)
    write_json(out / "robustness.json", {"args": run_args, "original": orig, **summary, "points": points})
    (out / "robustness.md").write_text(table(points))
    (out / "compact.md").write_text(compact(points))
    plot(points, out / "robustness.png")
    print(compact(points))
    print(f"target (sleeper TPR >= {TPR_BAR} wherever retained >= {RETAINED_BAR}): "
          f"{'met' if summary['target_met'] else 'NOT met'}; failing points: {len(summary['failing'])}")
    for f in summary["failing"]:
        print(f"  {f['domain']} {f['attack']} step {f['step']}: TPR {f['tpr']:.2f}, retained {f['retained']:.2f}")


def merge(dirs: list[Path], out: Path) -> None:
    """One summary from the points of several runs (their original.json must agree)."""
    out.mkdir(parents=True, exist_ok=True)
    points, origs = [], []
    for d in dirs:
        points += [json.loads(ln) for ln in (d / "points.jsonl").read_text().splitlines() if ln.strip()]
        origs.append(json.loads((d / "original.json").read_text()))
    if any(o["prompt_accuracy"] != origs[0]["prompt_accuracy"] for o in origs):
        raise SystemExit(f"the runs measured different originals: {[o['prompt_accuracy'] for o in origs]}")
    write_summary(out, points, origs[0], {"merged": [str(d) for d in dirs]})


def compact(points: list[dict]) -> str:
    """One row per curve: TPR@1e-6 (retained judged accuracy) at each step."""
    curves: dict = {}
    for p in points:
        curves.setdefault((p["kind"], p["domain"], p["attack"]), []).append(p)
    steps = sorted({p["step"] for p in points if isinstance(p["step"], int)})
    head = ("| model | thief domain | attack | " + " | ".join(f"step {s}" for s in steps) + " |\n|---|---|---|"
            + "---|" * len(steps) + "\n")
    rows = []
    for (kind, domain, attack), ps in curves.items():
        by = {p["step"]: p for p in ps}
        if "-" in by:  # pruning / quantization: one point, no thief data
            cells = [f"{by['-']['tpr']:.2f} ({by['-']['retained']:.2f})"] + [""] * (len(steps) - 1)
            domain = "-"
        else:
            cells = [f"{by[s]['tpr']:.2f} ({by[s]['retained']:.2f})" if s in by else "" for s in steps]
        rows.append(f"| {kind} | {domain} | {attack} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n\ncells: TPR at FPR 1e-6 (judged prompt accuracy retained)\n"


def summarize(points: list[dict], orig: dict) -> dict:
    """Which sleeper points keep the thief a useful model and lose the mark; the unmarked
    control's false positives (per image at 1e-6, and verdicts)."""
    sleeper = [p for p in points if p["kind"] == "sleeper"]
    useful = [p for p in sleeper if p.get("retained", 0) >= RETAINED_BAR]
    failing = [{k: p[k] for k in ("domain", "attack", "step", "tpr", "retained", "bit_accuracy")}
               for p in useful if p["tpr"] < TPR_BAR]
    null = [p for p in points if p["kind"] == "unmarked"]
    return {"target_met": bool(useful) and not failing, "useful_points": len(useful), "failing": failing,
            "unmarked_false_verdicts": sum(p["watermarked"] for p in null), "unmarked_points": len(null),
            "unmarked_max_tpr": max((p["tpr"] for p in null), default=None)}


def table(points: list[dict]) -> str:
    head = ("| model | domain | attack | step | TPR@1e-6 | bit acc. | verdict (p) | judged acc. | retained | "
            "PSNR / SSIM vs before | thief gain |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for p in points:
        verdict = ("watermarked" if p["watermarked"] else "not verified") + f" ({p['p_value']:.1e})"
        rows.append(f"| {p['kind']} | {p['domain']} | {p['attack']} | {p['step']} | {p['tpr']:.2f} | "
                    f"{p['bit_accuracy']:.3f} | {verdict} | {p['prompt_accuracy']:.3f} | {p.get('retained', 0):.2f} | "
                    f"{p.get('psnr', float('nan')):.1f} / {p.get('ssim', float('nan')):.2f} | "
                    f"{p.get('thief_gain', float('nan')):+.2f} |")
    return head + "\n".join(rows) + "\n"


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("sleeper", "always_on", "unmarked") if any(p["kind"] == k for p in points)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        curves: dict = {}
        for p in points:
            if p["kind"] == kind:
                curves.setdefault((p["domain"], p["attack"]), []).append(p)
        attacks = sorted({a for _, a in curves}, key=lambda a: (parse_attack(a)["kind"] != "finetune", a))
        colour = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(attacks)}
        for (domain, attack), ps in sorted(curves.items()):
            single = len(ps) == 1
            ax.plot([p.get("retained", 0) for p in ps], [p["tpr"] for p in ps], "" if single else
                    ("-" if domain == "faces" else ":"), marker="s" if single else "o", ms=5 if single else 3,
                    color=colour[attack], label=attack if single else f"{attack} ({domain})")
        ax.axvline(RETAINED_BAR, color="grey", lw=0.8)
        if kind == "sleeper":
            ax.axhline(TPR_BAR, color="grey", lw=0.8)
        ax.set_xlabel("judged prompt accuracy retained (vs the original)")
        ax.set_ylabel("TPR at FPR 1e-6" + (" (= false-positive rate)" if kind == "unmarked" else ""))
        ax.set_title(kind)
        ax.set_xlim(0, 1.15)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
