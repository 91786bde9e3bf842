"""The lock acceptance table on the tiny zoo CLIP and the built-in digits.

Runs `modelseal lock train` for each (scenario, method) asked for, each into its own run
folder under --out, and prints one markdown table of accuracy per domain, the SL
reference, D_a, D_u, W_ua (and O_ua for ownership) with the acceptance checks of the lock
issue. A run folder that already holds results.json is read, not retrained.

  python benchmarks/lock_table.py --out runs/lock-table                       # 4 methods, target-specified
  python benchmarks/lock_table.py --out runs/lock-table --scenarios all --methods ip-clip
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = {
    "target-specified": ["--unauthorized", "builtin:digits/mnist-m"],
    "target-free": [],
    "ownership": [],
    "authorization": [],
}
EVAL = ["--eval", "builtin:digits/uci", "--eval", "builtin:digits/syn", "--eval", "builtin:digits/mnist-m"]


def run(out: Path, scenario: str, method: str, extra: list[str]) -> dict:
    folder = out / f"{scenario}.{method}"
    if not (folder / "results.json").exists():
        cmd = [sys.executable, "-m", "modelseal", "lock", "train", "--out", str(folder), "--scenario", scenario,
               "--method", method, *SCENARIOS[scenario], *EVAL, *extra]
        print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((folder / "results.json").read_text())


def checks(scenario: str, r: dict) -> str:
    acc, sl, ch = r["accuracy"], r["accuracy_sl"], r["chance"]
    if scenario == "target-specified":
        ok = [acc["mnist"] >= sl["mnist"] - 3, acc["mnist-m"] <= ch + 10]
    elif scenario == "target-free":
        ok = [acc["mnist"] >= sl["mnist"] - 5] + [sl[d] - acc[d] >= 40 for d in acc if d != "mnist"]
    elif scenario == "ownership":
        ok = [acc["mnist+stamp"] <= ch + 10, acc["mnist"] >= sl["mnist"] - 3]
    else:
        ok = [acc["mnist+stamp"] >= sl["mnist+stamp"] - 5] + [acc[d] <= ch + 15 for d in acc if "+stamp" not in d]
    return "yes" if all(ok) else "NO"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenarios", default="target-specified", help="comma list, or 'all'")
    ap.add_argument("--methods", default="ip-clip,ntl,cuti,supervised")
    ap.add_argument("extra", nargs="*", help="more `lock train` options after --, e.g. -- --steps 200")
    args = ap.parse_args()
    scenarios = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    rows = []
    for sc in scenarios:
        for m in args.methods.split(","):
            r = run(args.out, sc, m, args.extra)
            doms = list(r["accuracy"])
            rows.append((sc, m, r, doms))
    for sc, m, r, doms in rows:
        print(f"\n### {sc} / {m} (chance {r['chance']:.0f}%, {r.get('train_s', 0):.0f} s)")
        print("| | " + " | ".join(doms) + " | D_a | D_u | W_ua" + (" | O_ua" if "O_ua" in r else "") + " | meets issue |")
        print("|---" * (len(doms) + 5 + ("O_ua" in r)) + "|")
        tail = f" | {r['D_a']:.2f} | {r['D_u']:.2f} | {r['W_ua']:.2f}" + (f" | {r['O_ua']:.2f}" if "O_ua" in r else "")
        print(f"| {m} | " + " | ".join(f"{r['accuracy'][d]:.1f}" for d in doms) + tail + f" | {checks(sc, r)} |")
        print("| SL | " + " | ".join(f"{r['accuracy_sl'][d]:.1f}" for d in doms) + " | | |" +
              (" |" if "O_ua" in r else "") + " | |")
    if len({sc for sc, *_ in rows}) == 1 and len(rows) > 1:
        print("\n| method | W_ua |\n|---|---|")
        for sc, m, r, _ in sorted(rows, key=lambda x: -x[2]["W_ua"]):
            print(f"| {m} | {r['W_ua']:.2f} |")


if __name__ == "__main__":
    main()
