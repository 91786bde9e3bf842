"""The lock under attack: NTLBench's table for the lock methods (IP-CLIP, NTL, CUTI, SL, and our
IP-CLIP hardened against the disguise) and the attack families of `modelseal lock attack`, each
beside the from-backbone attacker (the same data and steps spent on the public CLIP), on domain
pairs:

  digits     mnist licensed, mnist-m refused (built-in; the pair the lock's settings were chosen on)
  folders    syn licensed, uci refused, both written as root/<class>/<image> folders (held out:
             no lock or attack setting was chosen on them; the hardening was developed on it)
  mnist-syn  mnist licensed, syn refused (built-in; no hardening setting was chosen on it)

Per pair: `lock train` for ip-clip (its SL reference is the supervised checkpoint), ntl,
cuti and ip-clip --harden disguise; then `lock attack` for every (method, attack); then the stamp: an IP-CLIP ownership lock
under stamp-removal (its SL reference beside it) and an authorization lock under
stamp-forgery. The from-backbone attacker does not
depend on the lock, so it runs once per attack (with the SL checkpoint's run) and is shared.
Every run is a run folder under --out: a second call resumes (finished points are kept).
Prints a markdown table per pair (cells: the unauthorized accuracy the attacker reaches from
the checkpoint at the largest share, and the lock's worth, backbone best minus it) and writes
lock_attacks.json and lock_attacks.png (unauthorized accuracy against the attacker's share).

    python benchmarks/lock_attacks.py --out runs/bench-lock-attacks
    python benchmarks/lock_attacks.py --out runs/b --pairs digits --steps 100 --fractions 0.1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from modelseal.runs import git_sha

METHODS = ["ip-clip", "ntl", "cuti", "ip-clip-hardened", "supervised"]
# lock train options per method (the hardened lock: ours, `--harden disguise`)
TRAIN_ARGS = {"ip-clip": ["--method", "ip-clip"], "ntl": ["--method", "ntl"], "cuti": ["--method", "cuti"],
              "ip-clip-hardened": ["--method", "ip-clip", "--harden", "disguise"]}
# the pairs: (licensed, refused); folders are written from the built-in digits
PAIRS = {"digits": ("builtin:digits/mnist", "builtin:digits/mnist-m"), "folders": None,
         "mnist-syn": ("builtin:digits/mnist", "builtin:digits/syn")}
ATTACKS = ["target-finetune", "source-finetune", "transntl", "shot", "disguise"]
# unlabeled images are cheap: the budget of the attacks that need no labels is larger
UNLABELED_FRACTIONS = [0.1, 0.25, 1.0]
FORGERY_FRACTIONS = [0.0025, 0.01, 0.05]  # stamped images an unlicensed user collects: 10, 40, 200


def commit() -> str:
    return (git_sha() or "unknown")[:7]


def modelseal(*args: str) -> dict:
    out = Path(args[args.index("--out") + 1])
    cmd = [sys.executable, "-m", "modelseal", *args]
    print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def folder_pair(root: Path) -> tuple[str, str]:
    """syn and uci (all their images) as root/<class>/<image> folders, written once."""
    from modelseal.data.folders import write_image_folder
    from modelseal.data.sources import load_source

    specs = []
    for domain in ("syn", "uci"):
        d = root / domain
        if not d.is_dir():
            s = load_source(f"builtin:digits/{domain}", "all", 32)
            x = s.tensor()
            tmp = root / f".{domain}"
            for k, name in enumerate(s.class_names):
                write_image_folder(tmp / name, x[s.labels == k])
            tmp.rename(d)
        specs.append(str(d))
    return specs[0], specs[1]


def pair_runs(out: Path, authorized: str, unauthorized: str, args) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    lock = {}
    for method in dict.fromkeys(["ip-clip"] + [m for m in args.methods if m != "supervised"]):
        folder = out / f"lock-{method}"
        if not (folder / "results.json").is_file():
            modelseal("lock", "train", "--out", str(folder), *TRAIN_ARGS[method], "--authorized", authorized,
                      "--unauthorized", unauthorized, "--eval-limit", str(args.eval_limit))
        lock[method] = folder / "checkpoint"
    lock["supervised"] = out / "lock-ip-clip" / "checkpoint-sl"
    runs: dict[str, dict[str, dict]] = {}
    for attack in args.attacks:
        fractions = args.fractions or (UNLABELED_FRACTIONS if attack in ("shot", "disguise") else [0.01, 0.05, 0.1])
        for method in args.methods:
            backbone = method == args.methods[-1]  # once per attack
            runs.setdefault(attack, {})[method] = modelseal(
                "lock", "attack", "--out", str(out / f"{attack}.{method}"), "--checkpoint", str(lock[method]),
                "--attack", attack, "--authorized", authorized, "--unauthorized", unauthorized,
                "--steps", str(args.steps), "--eval-limit", str(args.eval_limit),
                *[a for f in fractions for a in ("--fractions", str(f))],
                "--backbone" if backbone else "--no-backbone")
    return runs


def stamp_runs(out: Path, authorized: str, args) -> dict:
    """IP-CLIP ownership and authorization locks of `authorized`: stamp-removal on the first
    (its SL reference beside it), stamp-forgery on the second."""
    res = {}
    for scenario in ("ownership", "authorization"):
        folder = out / f"lock-{scenario}"
        if not (folder / "results.json").is_file():
            modelseal("lock", "train", "--out", str(folder), "--scenario", scenario, "--authorized", authorized,
                      "--eval-limit", str(args.eval_limit))
    for name, ck in (("ip-clip", "checkpoint"), ("supervised", "checkpoint-sl")):
        res[f"removal.{name}"] = modelseal("lock", "attack", "--out", str(out / f"stamp-removal.{name}"),
                                           "--checkpoint", str(out / "lock-ownership" / ck), "--attack",
                                           "stamp-removal", "--authorized", authorized, "--eval-limit",
                                           str(args.eval_limit))
    res["forgery"] = modelseal("lock", "attack", "--out", str(out / "stamp-forgery"), "--checkpoint",
                               str(out / "lock-authorization" / "checkpoint"), "--attack", "stamp-forgery",
                               "--authorized", authorized, "--steps", str(args.steps), "--eval-limit",
                               str(args.eval_limit), *[a for f in FORGERY_FRACTIONS for a in ("--fractions", str(f))])
    return res


def stamp_table(res: dict) -> list[str]:
    own, sl = res["removal.ip-clip"], res["removal.supervised"]
    sl_rows = {r["transform"]: r for r in sl["transforms"]}
    lines = ["| transform in front of the model | IP-CLIP clean / stamped (%) | verdict (p) | SL clean / stamped "
             "| SL verdict |",
             "|---|---|---|---|---|"]
    for r in own["transforms"]:
        s = sl_rows[r["transform"]]
        lines.append(f"| {r['transform']} | {r['clean_accuracy']:.1f} / {r['stamped_accuracy']:.1f} | {r['verdict']} "
                     f"({r['p_value']:.1e}) | {s['clean_accuracy']:.1f} / {s['stamped_accuracy']:.1f} "
                     f"| {s['verdict']} |")
    f = res["forgery"]
    lines += ["", "| stamped images the unlicensed user has | clean + forged pattern (%) | licensed (stamped) | "
              "from the backbone (best of) | the lock's worth |", "|---|---|---|---|---|",
              f"| none (clean inputs) | {f['before']['checkpoint']['unauthorized']:.1f} | "
              f"{f['before']['checkpoint']['authorized']:.1f} | {f['before']['zero_shot']['unauthorized']:.1f} "
              "(zero-shot) | |"]
    for p in f["points"]:
        lines.append(f"| {p['images']} | {p['checkpoint']['unauthorized']:.1f} | {p['checkpoint']['authorized']:.1f} | "
                     f"{p['backbone_best']['unauthorized']:.1f} ({p['backbone_best']['attacker']}) "
                     f"| {p['worth']:+.1f} |")
    return lines


def table(runs: dict) -> list[str]:
    methods = list(next(iter(runs.values())))
    lines = ["| attack (largest share) | " + " | ".join(methods) + " | from the backbone (best of) |",
             "|---|" + "---|" * (len(methods) + 1)]
    for attack, per in runs.items():
        bb_run = next(r for r in per.values() if "backbone_best" in r["points"][-1])
        last = bb_run["points"][-1]
        bb = last["backbone_best"]
        before = " | ".join(f"{per[m]['before']['checkpoint']['unauthorized']:.1f}" for m in methods)
        if attack == list(runs)[0]:
            zs = bb_run["before"]["zero_shot"]["unauthorized"]
            lines.append(f"| none (the lock as released) | {before} | {zs:.1f}"
                         " (zero-shot) |")
        cells = []
        for m in methods:
            p = per[m]["points"][-1]
            got = p["checkpoint"]["unauthorized"]
            cells.append(f"{got:.1f} ({bb['unauthorized'] - got:+.1f})")
        share = f"{last['fraction']:g}" + (" unlabeled" if last["labelled"] == 0 else "")
        lines.append(f"| {attack} ({share}) | " + " | ".join(cells)
                     + f" | {bb['unauthorized']:.1f} ({bb['attacker']}) |")
    return lines


NAMES = {"ip-clip": "IP-CLIP", "ntl": "NTL", "cuti": "CUTI", "ip-clip-hardened": "IP-CLIP hardened (ours)",
         "supervised": "SL"}


def method_rows(results: dict) -> list[str]:
    """NTLBench's layout: a row per method and one for the from-backbone attacker, a column per
    attack; a cell gives the unauthorized accuracy at the largest share on each pair (pairs
    joined by ' / '), the lock's worth beside the method's."""
    pairs = list(results)
    attacks = list(results[pairs[0]])
    methods = list(results[pairs[0]][attacks[0]])

    def backbone(pair: str, attack: str) -> dict:
        per = results[pair][attack]
        return next(r for r in per.values() if "backbone_best" in r["points"][-1])["points"][-1]["backbone_best"]

    head = "| method (" + " / ".join(pairs) + ") | none | " + " | ".join(attacks) + " |"
    lines = [head, "|---|---|" + "---|" * len(attacks)]
    for m in methods:
        cells = [" / ".join(f"{results[p][attacks[0]][m]['before']['checkpoint']['unauthorized']:.1f}" for p in pairs)]
        for a in attacks:
            vals = []
            for p in pairs:
                got = results[p][a][m]["points"][-1]["checkpoint"]["unauthorized"]
                vals.append(f"{got:.1f} ({backbone(p, a)['unauthorized'] - got:+.1f})")
            cells.append(" / ".join(vals))
        lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(cells) + " |")
    zs = []
    for p in pairs:
        per = results[p][attacks[0]]
        zs.append(f"{next(r for r in per.values() if 'zero_shot' in r['before'])['before']['zero_shot']['unauthorized']:.1f}")
    lines.append("| from the backbone (best of) | " + " / ".join(zs) + " | "
                 + " | ".join(" / ".join(f"{backbone(p, a)['unauthorized']:.1f}" for p in pairs) for a in attacks) + " |")
    return lines


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(results)
    attacks = list(next(iter(results.values())))
    fig, axes = plt.subplots(len(pairs), len(attacks), figsize=(3.2 * len(attacks), 2.8 * len(pairs)), squeeze=False)
    for i, pair in enumerate(pairs):
        for j, attack in enumerate(attacks):
            ax = axes[i, j]
            per = results[pair][attack]
            for k, (m, r) in enumerate(per.items()):
                xs = [p["fraction"] for p in r["points"]]
                ax.plot(xs, [p["checkpoint"]["unauthorized"] for p in r["points"]], marker="o", lw=1.4, label=m,
                        color=f"C{k}")
                if "backbone_best" in r["points"][0]:
                    ax.plot(xs, [p["backbone_best"]["unauthorized"] for p in r["points"]], "k--", marker="s",
                            lw=1.4, label="from the backbone")
                    ax.axhline(r["chance"], color="0.6", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{pair}: {attack}", fontsize=9)
            ax.set_xlabel("attacker's share", fontsize=8)
            if j == 0:
                ax.set_ylabel("unauthorized accuracy (%)", fontsize=8)
            ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", nargs="+", default=["digits", "folders"], choices=list(PAIRS),
                    help="mnist-syn: the pair no hardening setting was chosen on")
    ap.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                    help="the last one also runs the from-backbone attacker")
    ap.add_argument("--fractions", nargs="+", type=float, help="shares (default 0.01 0.05 0.1; shot 0.1 0.25 1)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--no-stamps", action="store_true", help="skip the stamp attacks (ownership, authorization)")
    ap.add_argument("--figure", type=Path, help="also write the figure here (e.g. docs/figures/lock_attacks.png)")
    args = ap.parse_args()
    t0 = time.time()
    results, stamps = {}, {}
    for pair in args.pairs:
        a, u = PAIRS[pair] or folder_pair(args.out / "folders-data")
        results[pair] = pair_runs(args.out / pair, a, u, args)
        if not args.no_stamps:
            stamps[pair] = stamp_runs(args.out / pair, a, args)
    out = {"commit": commit(), "steps": args.steps, "seconds": round(time.time() - t0, 1), "results": results,
           "stamps": stamps}
    (args.out / "lock_attacks.json").write_text(json.dumps(out, indent=2))
    figure(results, args.out / "lock_attacks.png")
    if args.figure:
        figure(results, args.figure)
    for pair, runs in results.items():
        print(f"\n{pair}: unauthorized accuracy (%) the attacker reaches from each checkpoint, (the lock's worth)")
        print("\n".join(table(runs)))
        if pair in stamps:
            print(f"\n{pair}: the stamp (IP-CLIP ownership lock: removal; authorization lock: forgery)")
            print("\n".join(stamp_table(stamps[pair])))
    print("\nmethods x attacks (NTLBench's layout): unauthorized accuracy (%), the lock's worth in brackets")
    print("\n".join(method_rows(results)))
    print(f"\ncommit {out['commit']}, {out['seconds']:.0f} s; {args.out / 'lock_attacks.json'}")


if __name__ == "__main__":
    main()
