"""Every command end to end on real-layout checkpoints (random weights, published configs):
the README's "model x command" table.

    python benchmarks/real_checkpoints.py --out runs/real [--models sd15,sd21,sdxl,clip-b16]
                                          [--root DIR] [--size 64] [--only finetune-lora,...]

Builds the folders first (`modelseal zoo real-layout`, cached in $MODELSEAL_HOME/real-layout or
--root), then runs each cell as a user would, through the CLI in a fresh process, at reduced
size (--size px images, 2 steps, 2-8 images): SD 1.5 / 2.1 in float32, SDXL in bfloat16 (its
fp32 UNet alone is 10 GB; a teacher or optimiser state on top does not fit 24 GB), full
fine-tuning of SDXL with Adafactor. Records per cell: exit code, the error line if any, wall
seconds and peak resident memory (GNU time), into OUT/table.json and OUT/table.md. Cells run
in order and later cells use earlier outputs (the fine-tuned model is the audit's suspect;
the codec and the watermarked model feed adapt and verify). Slow on 2 CPU cores (about an
hour for all four models): CI does not run it; the table in the README comes from it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DREAMBOOTH = ROOT.parent / "shared" / "data" / "dreambooth"
T2I = ("sd15", "sd21", "sdxl")


def _exe() -> list[str]:
    return [sys.executable, "-m", "modelseal"]


def run_cell(name: str, args: list[str], log_dir: Path, timeout: int = 3600) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    tfile = log_dir / f"{name}.time"
    cmd = ["/usr/bin/time", "-f", "%M %e", "-o", str(tfile)] + _exe() + args
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = 124, "", f"timed out after {timeout} s"
    wall = time.time() - t0
    (log_dir / f"{name}.log").write_text(" ".join(args) + "\n\n" + out + "\n" + err)
    peak = None
    if tfile.is_file():
        try:
            peak = int(tfile.read_text().split()[-2]) / 1024 / 1024  # KiB -> GiB
        except (ValueError, IndexError):
            pass
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if (rc and lines) else "")
    status = "ok" if rc == 0 else ("refused" if rc == 2 else "failed")
    print(f"[{status:7s}] {name:28s} {wall:7.1f} s  peak {peak or 0:5.1f} GiB  {error}", flush=True)
    return {"cell": name, "status": status, "rc": rc, "wall_s": round(wall, 1),
            "peak_rss_gib": None if peak is None else round(peak, 2), "error": error}


def _images(src: Path, dst: Path, pick: slice) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[pick]
    for f in files:
        shutil.copy(f, dst / f.name)
    return dst


def _yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def t2i_cells(name: str, folder: Path, out: Path, size: int, only: set[str] | None) -> list[dict]:
    o = out / name
    o.mkdir(parents=True, exist_ok=True)
    logs = out / "logs" / name
    xl = name == "sdxl"
    common = ["--device", "cpu", "--size", str(size), "--dtype", "bfloat16" if xl else "float32"]
    subject = DREAMBOOTH / "dog"
    train = _images(subject, o / "data" / "train", slice(0, 2))
    members = train
    holdout = _images(subject, o / "data" / "holdout", slice(2, 4))
    key = o / "owner.key"
    rows = []

    def cell(cname: str, args: list[str], keep: bool = False):
        if only and cname not in only:
            return
        shutil.rmtree(o / cname, ignore_errors=True)
        r = run_cell(cname, args + ["--out", str(o / cname)], logs)
        r["model"] = name
        rows.append(r)
        if not keep:  # a saved SD-sized model is 2-10 GB: keep only what later cells read
            _drop_weights(o / cname)

    ft = ["--model", str(folder), "--data", str(train), "--prompt", "a sks dog", "--steps", "2", "--batch-size", "1"]
    cell("finetune-full", ["finetune", "--method", "full", *ft, *common] + (["--optimizer", "adafactor"] if xl else []),
         keep=True)
    cell("finetune-lora", ["finetune", "--method", "lora", *ft, *common], keep=True)
    cell("finetune-dreambooth", ["finetune", "--method", "dreambooth", *ft, "--class-prompt", "a dog",
                                 "--class-images", "2", *common] + (["--optimizer", "adafactor"] if xl else []))
    cell("finetune-prune", ["finetune", "--method", "prune", "--model", str(folder), *common])
    cell("finetune-quantize", ["finetune", "--method", "quantize", "--bits", "8", "--model", str(folder), *common])
    if not key.exists():
        subprocess.run(_exe() + ["watermark", "keygen", "--key", str(key)], check=True, capture_output=True)
    wm = ["--codec", str(o / "watermark-codec" / "codec"), "--key", str(key), "--model-id", f"{name}-fixture"]
    cell("watermark-codec", ["watermark", "codec", "--model", str(folder), "--data", "builtin:digits/all",
                             "--limit", "32", "--steps", "2", "--bits", "48", *common,
                             "--config", str(_yaml(o / "codec.yaml", {"batch_size": 2}))], keep=True)
    cell("watermark-embed", ["watermark", "embed", "--model", str(folder), *wm, "--steps", "2", *common,
                             "--config", str(_yaml(o / "embed.yaml", {"batch_size": 1, "limit": 8}))], keep=True)
    marked = str(o / "watermark-embed" / "model")
    cell("watermark-adapt", ["watermark", "adapt", "--model", marked, "--original", str(folder), *wm, "--steps", "2",
                             *common, "--config", str(_yaml(o / "adapt.yaml", {
                                 "guidance": [7.5], "images": [2], "sample_steps": 2, "batch_size": 2, "limit": 8}))])
    cell("watermark-verify", ["watermark", "verify", "--model", marked, *wm, "--n", "2", *common,
                              "--config", str(_yaml(o / "verify.yaml", {"steps": 2, "also_without_cfg": False,
                                                                        "attacks": ["jpeg"]}))])
    au = ["--pretrained", str(folder), "--members", str(members), "--holdout", str(holdout), "--prompt", "a sks dog",
          "--steps", "2", "--batch-size", "2", *common]
    audit_cfg = str(_yaml(o / "audit.yaml", {"loss_samples": 2, "evidence": True}))
    cell("audit-lora", ["audit", "--finetuned", str(o / "finetune-lora" / "model"), *au, "--config", audit_cfg])
    cell("audit-full", ["audit", "--finetuned", str(o / "finetune-full" / "model"), *au, "--config", audit_cfg])
    for kept in ("finetune-full", "finetune-lora", "watermark-codec", "watermark-embed"):
        _drop_weights(o / kept)
    return rows


def _drop_weights(folder: Path) -> None:
    """Delete the large weight files a cell wrote (its logs and results.json stay)."""
    for f in folder.rglob("*.safetensors"):
        if f.stat().st_size > 2 ** 20:
            f.unlink()


def clip_cells(folder: Path, out: Path, only: set[str] | None) -> list[dict]:
    o = out / "clip-b16"
    logs = out / "logs" / "clip-b16"
    rows = []

    def cell(cname: str, args: list[str]):
        if only and cname not in only:
            return
        shutil.rmtree(o / cname, ignore_errors=True)
        r = run_cell(cname, args + ["--out", str(o / cname)], logs)
        r["model"] = "clip-b16"
        rows.append(r)

    cell("lock-train", ["lock", "train", "--model", str(folder), "--authorized", "builtin:digits/mnist",
                        "--unauthorized", "builtin:digits/mnist-m", "--steps", "2", "--batch-size", "2",
                        "--train-limit", "16", "--device", "cpu",
                        "--config", str(_yaml(o.parent / "clip-lock.yaml", {"sl_steps": 2, "feature_batch_size": 16}))])
    ck = str(o / "lock-train" / "checkpoint")
    cell("lock-eval", ["lock", "eval", "--checkpoint", ck, "--model", str(folder), "--eval", "builtin:digits/mnist",
                       "--eval", "builtin:digits/mnist-m", "--device", "cpu"])
    cell("lock-verify", ["lock", "verify", "--checkpoint", ck, "--model", str(folder), "--eval",
                         "builtin:digits/mnist", "--device", "cpu"])
    return rows


def markdown(rows: list[dict], size: int) -> str:
    models = [m for m in ("sd15", "sd21", "sdxl", "clip-b16") if any(r["model"] == m for r in rows)]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    by = {(r["model"], r["cell"]): r for r in rows}
    head = "| command | " + " | ".join(models) + " |\n|---|" + "---|" * len(models) + "\n"
    body = ""
    for c in cells:
        vals = []
        for m in models:
            r = by.get((m, c))
            if r is None:
                vals.append("")
                continue
            mem = f", {r['peak_rss_gib']:.1f} GiB" if r["peak_rss_gib"] else ""
            vals.append(f"{r['status']} ({r['wall_s']:.0f} s{mem})" + (f": {r['error']}" if r["status"] != "ok" else ""))
        body += f"| {c} | " + " | ".join(vals) + " |\n"
    return head + body + f"\nT2I cells at {size} px, 2 steps; SDXL in bfloat16; CLIP ViT-B/16 at 224 px.\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/real"))
    ap.add_argument("--models", default="sd15,sd21,sdxl,clip-b16")
    ap.add_argument("--root", type=Path, default=None, help="real-layout folders (default $MODELSEAL_HOME/real-layout)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", default=None, help="comma-separated cell names")
    a = ap.parse_args(argv)
    from modelseal.models.real_layout import build

    only = set(a.only.split(",")) if a.only else None
    a.out.mkdir(parents=True, exist_ok=True)
    table = a.out / "table.json"
    rows = json.loads(table.read_text()) if table.is_file() else []
    for name in a.models.split(","):
        folder = build(name, a.root)
        new = clip_cells(folder, a.out, only) if name == "clip-b16" else t2i_cells(name, folder, a.out, a.size, only)
        keys = {(r["model"], r["cell"]) for r in new}
        rows = [r for r in rows if (r["model"], r["cell"]) not in keys] + new
        table.write_text(json.dumps(rows, indent=2))
        (a.out / "table.md").write_text(markdown(rows, a.size))
    print(markdown(rows, a.size))


if __name__ == "__main__":
    main()
