"""The driver of benchmarks/gpu.sh: runs the three speed benchmarks and merges their figures.

  stage 2   watermark_speed.py: SD-1.5-sized stage-2 step (512 px, batch 4): the reference's
            structure (full teacher copy, four fp32 passes, per-step VAE and text encoding)
            against ours (shared teacher, two passes with the shared trunk), fp32, bf16, bf16 +
            gradient checkpointing; ms per step and CUDA max allocated
  audit     audit_speed.py: CGI-DM seconds per image, SD 1.5 at 512 px, fp16 weights, full and
            LoRA suspects: the reference's loop (one image at a time, retained graphs, two
            copies) against ours (batched, frozen, one base model for a LoRA)
  ip-clip   lock_speed.py: one IP-CLIP step, ViT-B/16, 65 classes, batch 32 + 32: the
            reference's loop against ours

--mode cpu runs the same on the tiny zoo at toy size (a dry run that checks the script).
Each benchmark prints JSON lines; the last line of each variant is kept. A benchmark that
fails is recorded with its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

PLANS = {
    "gpu": [
        ("stage2", ["watermark_speed.py", "--device", "cuda", "--model", "sd15-random", "--batch", "4", "--steps", "5",
                    "--warmup", "2", "--variants", "reference,ours,ours-bf16,ours-bf16-ckpt"]),
        ("audit-full", ["audit_speed.py", "--device", "cuda", "--model", "sd15-random", "--size", "512", "--images", "4",
                        "--steps", "20", "--dtype", "fp16", "--suspect-kind", "full"]),
        ("audit-lora", ["audit_speed.py", "--device", "cuda", "--model", "sd15-random", "--size", "512", "--images", "4",
                        "--steps", "20", "--dtype", "fp16", "--suspect-kind", "lora"]),
        ("ip-clip", ["lock_speed.py", "--device", "cuda", "--model", "vitb16-random", "--classes", "65", "--batch", "32",
                     "--steps", "5"]),
    ],
    "cpu": [
        ("stage2", ["watermark_speed.py", "--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
                    "--variants", "reference,ours,ours-bf16,ours-bf16-ckpt"]),
        ("audit-full", ["audit_speed.py", "--device", "cpu", "--images", "2", "--steps", "3", "--batch", "4"]),
        ("ip-clip", ["lock_speed.py", "--device", "cpu", "--classes", "10", "--batch", "4", "--steps", "2"]),
    ],
}


def run(name: str, argv: list[str]) -> dict:
    t0 = time.time()
    p = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=HERE)
    rows = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    summary = [ln for ln in p.stdout.splitlines() if not ln.strip().startswith("{")]
    res = {"command": " ".join(argv), "seconds": round(time.time() - t0, 1), "variants": rows, "summary": summary}
    if p.returncode != 0:
        res["error"] = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
    print(f"[gpu] {name}: {res['seconds']} s" + (f", FAILED: {res['error']}" if "error" in res else ""), flush=True)
    for ln in summary:
        print("      " + ln, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=list(PLANS), default="gpu")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu.json"))
    a = ap.parse_args()
    import torch

    info = {"mode": a.mode, "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"}
    if a.mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("gpu.sh: no CUDA device; use --dry-run for the CPU check")
    t0 = time.time()
    results = {name: run(name, argv) for name, argv in PLANS[a.mode]}
    out = {**info, "total_s": round(time.time() - t0, 1), "benchmarks": results}
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(a.out)
    print(f"[gpu] {out['total_s']} s in all; figures: {a.out}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
