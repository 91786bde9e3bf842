"""audit (CGI-DM): was an image used to fine-tune a suspect diffusion model?

1. a suspect: tiny:t2i fine-tuned (DreamBooth, 'a sks digit') on a few images of one built-in
   subject (mnist-m '3's); other images of the same subject are never shown to it;
2. evaluation mode: members against hold-out images, AUROC of each statistic (the decision
   score, CGI-DM's own, the loss baselines), with CGI-DM's evidence pictures;
3. audit mode, the real use: the owner's collection (the members) against calibration images
   known not to be used: the collection's verdict and per-image verdicts under BH control.

    python examples/audit.py runs/ex-audit               # the demo's size (a few minutes on a CPU)
    python examples/audit.py runs/ex-audit --size tiny   # about a minute (or MODELSEAL_EXAMPLE_SIZE=tiny)
"""
import argparse
import os
from pathlib import Path

import modelseal
from modelseal.data.subjects import builtin_subject, write_split

SIZES = {  # images per part, DreamBooth steps (with prior preservation: its class prompt), PGD steps
    "demo": dict(members=10, holdout=10, calibration=19, finetune_steps=200, class_prompt="a digit", pgd_steps=200),
    "tiny": dict(members=6, holdout=6, calibration=12, finetune_steps=150, class_prompt=None, pgd_steps=20),
}
SUBJECT, PROMPT = "mnist-m/3", "a sks digit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the data and the runs")
    ap.add_argument("--size", choices=SIZES, default=os.environ.get("MODELSEAL_EXAMPLE_SIZE", "demo"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    size, common = SIZES[args.size], dict(device=args.device, overwrite=True)

    # 1. the data (consecutive, disjoint runs of one subject's test images) and the suspect
    data = write_split(builtin_subject(SUBJECT, 32, seed=0), args.out / "data",
                       {k: size[k] for k in ("members", "holdout", "calibration")})
    sus = modelseal.finetune(out=args.out / "suspect", method="dreambooth", data=str(data["members"]),
                             prompt=PROMPT, class_prompt=size["class_prompt"], steps=size["finetune_steps"], **common)
    print(f"suspect: DreamBooth on {size['members']} images of {SUBJECT}, loss {sus['loss_start']:.3f} -> "
          f"{sus['loss_end']:.3f}")

    # 2. evaluation mode: members vs hold-out (the prompt is read from the suspect's record)
    ev = modelseal.run_audit(out=args.out / "evaluation", finetuned=str(sus.path / "model"), members=str(data["members"]),
                         holdout=str(data["holdout"]), steps=size["pgd_steps"], **common)
    lo, hi = ev["auroc_ci"]
    print(f"members vs hold-out: AUROC {ev['auroc']:.3f} [{lo:.2f}, {hi:.2f}] by the '{ev['score']}' score")
    for name, r in ev["decision_scores"].items():
        print(f"  {name:<11} AUROC {r['auroc']:.3f}")
    for name, auroc in ev["baselines"].items():
        if isinstance(auroc, (int, float)) and name not in ev["decision_scores"]:
            print(f"  {name:<11} AUROC {auroc:.3f} (baseline)")
    print(f"evidence pictures (original | partial | recovered): {ev.path / 'evidence'}")

    # 3. audit mode: was the collection used, and which images?
    case = modelseal.run_audit(out=args.out / "case", finetuned=str(sus.path / "model"), images=str(data["members"]),
                           calibration=str(data["calibration"]), steps=size["pgd_steps"], **common)
    print(f"collection of {case['n_images']} images: {case['set_verdict']} (rank-sum p = {case['set_p_value']:.2g}); "
          f"{case['members_found']} single images found under {case['control']} control")


if __name__ == "__main__":
    main()
