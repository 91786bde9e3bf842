"""Record the stage-1 provenance of the shipped sleeper's adapted extractor (maintenance).

The shipped tiny:sleeper-codec was adapted before `watermark adapt` recorded provenance
(watermark.provenance). This runs the same stage-1 check adapt now runs first (the stage-1
codec tiny:codec, whose encoder the adapted codec shares, on tiny:sleeper with the published
demo key, verification's prompts and seeds) and, when stage 1 verifies the model, writes the
stage-1 extractor and the record into the shipped codec folder. The check reads only the
stage-1 extractor, so running it after the adaptation gives the same evidence as before it.

    .venv/bin/python scripts/sleeper_provenance.py            # writes src/modelseal/zoo_weights/sleeper/codec
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from modelseal.models.diffusion import load_t2i
from modelseal.models.sleeper_entry import ENTRY, entry_record
from modelseal.watermark import provenance
from modelseal.watermark.codec import Codec
from modelseal.watermark.keys import message_bits
from modelseal.watermark.run import verify_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entry", type=Path, default=ENTRY, help="the sleeper zoo entry (its codec/ is updated)")
    ap.add_argument("--stage1", default="tiny:codec", help="the stage-1 codec the extractor was adapted from")
    args = ap.parse_args()
    record = entry_record(args.entry)
    folder = args.entry / "codec"
    adapted, stage1 = Codec.from_pretrained(folder), Codec.from_pretrained(args.stage1)
    same = all(torch.equal(a, b) for a, b in zip(adapted.encoder.state_dict().values(),
                                                  stage1.encoder.state_dict().values()))
    if not same:
        raise SystemExit(f"{args.stage1} is not the stage-1 codec of {folder}: their secret encoders differ")
    model = load_t2i("tiny:sleeper")
    bits = message_bits(bytes.fromhex(record["demo_key"]["secret"]), record["model_id"], stage1.k)
    prompts, seeds = verify_prompts(None, 64, 0)
    evidence = provenance.stage1_evidence(model, stage1, bits, prompts, seeds, record["trigger"], 7.5, 30, 1e-3)
    print(f"stage 1 on tiny:sleeper: p {evidence['p_value']:.3g}, bit accuracy {evidence['bit_accuracy']:.3f}")
    provenance.refuse_unverified(evidence, "tiny:sleeper")
    prov = provenance.record(stage1, model, "tiny:sleeper", evidence, record["model_id"], record["trigger"])
    prov["stage1_codec"] = args.stage1
    prov["stage1_extractor_sha256"] = provenance.save_stage1(stage1, folder)
    prov["recorded_after_adaptation"] = True
    cfg = json.loads((folder / "config.json").read_text())
    cfg.setdefault("meta", {})["provenance"] = prov
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"recorded; codec release hash {provenance.release_sha256(folder)}")


if __name__ == "__main__":
    main()
