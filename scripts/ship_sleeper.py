"""Ship a trained sleeper as the tiny zoo's `tiny:sleeper` entry (zoo_weights/sleeper/).

    python scripts/ship_sleeper.py --run runs/wmv/rehearsal --key runs/wmv/owner.key --model-id variants

--run is a folder with embed/ (`watermark embed`'s run: model/, results.json, config.yaml)
and adapt/ (`watermark adapt`'s run: codec/); robust/robustness.json, when there, is kept in
the record as what was measured. Only the UNet weights stage 2 changed travel
(models/sleeper_entry.py); the key is published in the record: ship only a key made for this.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from modelseal.models.sleeper_entry import ENTRY, package_sleeper
from modelseal.watermark.keys import load_key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", type=Path, default=ENTRY)
    ap.add_argument("--note", default=None, help="a line kept in the record (why this sleeper)")
    args = ap.parse_args()
    embed = json.loads((args.run / "embed" / "results.json").read_text())
    cfg = yaml.safe_load((args.run / "embed" / "config.yaml").read_text())
    info = {"note": args.note, "bits": embed["bits"],
            "stage2": {"steps": embed["steps"], "train_s": embed["train_s"], "final": embed["final"],
                       **{k: v for k, v in cfg.items() if k not in ("key", "out", "codec")}},
            "adapted_codec": json.loads((args.run / "adapt" / "codec" / "config.json").read_text())["meta"]}
    robust = args.run / "robust" / "robustness.json"
    if robust.is_file():
        r = json.loads(robust.read_text())
        info["measured"] = {"original": r["original"], "points": [
            {k: p.get(k) for k in ("domain", "attack", "step", "tpr", "bit_accuracy", "retained", "psnr")}
            for p in r["points"]]}
    rec = package_sleeper(args.run / "embed" / "model", args.run / "adapt" / "codec", load_key(args.key),
                          args.model_id, embed["trigger"], args.out, info=info)
    print(f"shipped {rec['trained_parameters']:,} trained weights ({rec['trained_tensors']} tensors) to {args.out}")


if __name__ == "__main__":
    main()
