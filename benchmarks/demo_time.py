"""How long `modelseal demo` takes here, against its bound (6 minutes; 2 with --quick).

    python benchmarks/demo_time.py [--quick] [--processes 0 1] [--out runs/demo-time]

Runs the demo command in a fresh process once per --processes value (0: the default, two
single-threaded workers on a CPU of two cores or more; 1: every section in one process) and
prints the wall time of the whole command (start-up included), each section's time and the
ratio to the bound. Nothing else should run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--processes", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("runs/demo-time"))
    args = ap.parse_args()
    bound = 120.0 if args.quick else 360.0
    rows = []
    for p in args.processes:
        out = args.out / f"processes-{p}"
        cmd = [sys.executable, "-m", "modelseal", "demo", "--out", str(out), "--overwrite", "--processes", str(p),
               *(["--quick"] if args.quick else [])]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            raise SystemExit(f"demo failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        rows.append((p, summary["processes"], wall, summary["section_seconds"]))
    print(f"demo{' --quick' if args.quick else ''}: bound {bound:.0f} s")
    for p, used, wall, sections in rows:
        per = ", ".join(f"{k} {v:.0f}" for k, v in sections.items())
        print(f"--processes {p} ({used} used): {wall:.0f} s, {wall / bound:.2f} of the bound (sections: {per})")


if __name__ == "__main__":
    main()
