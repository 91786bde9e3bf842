"""watermark (SleeperMark): plant an owner's mark in a text-to-image model, and verify one.

1. an owner key, and stage 2 run briefly from tiny:t2i with the shipped stage-1 codec (how a
   mark is planted; the shipped sleeper trained for 6,000 steps);
2. the shipped watermarked model `tiny:sleeper` verified with its adapted extractor and the
   demo owner's key, which is published with the package (it shows how verification works and
   proves nothing): the key-randomization test's verdict, p-value, bit accuracy, image attacks;
3. the same model with someone else's key, and the never-watermarked tiny:t2i: not verified;
4. black-box verification, step 1: the prompt lists to send to a suspect's service.

    python examples/watermark.py runs/ex-wm               # the demo's size (a few minutes on a CPU)
    python examples/watermark.py runs/ex-wm --size tiny   # about a minute (or MODELSEAL_EXAMPLE_SIZE=tiny)
"""
import argparse
import os
from pathlib import Path

import modelseal
from modelseal.models.sleeper_entry import entry_record
from modelseal.watermark.keys import generate_key

SIZES = {  # stage-2 steps and training images; images per verification, their DDIM steps, image attacks
    "demo": dict(embed_steps=150, embed_images=2400, n=32, sample_steps=30, attacks=["jpeg", "gaussian_blur", "resize", "crop"]),
    "tiny": dict(embed_steps=20, embed_images=400, n=8, sample_steps=20, attacks=["jpeg"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the runs and keys")
    ap.add_argument("--size", choices=SIZES, default=os.environ.get("MODELSEAL_EXAMPLE_SIZE", "demo"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    size, common = SIZES[args.size], dict(device=args.device, overwrite=True)
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. a key of our own, and a brief stage 2 (the tiny zoo's recipe, the preset "tiny", for a short run)
    own_key = modelseal.watermark_keygen(args.out / "owner.key", overwrite=True)
    emb = modelseal.watermark_embed("tiny", out=args.out / "embed", key=str(own_key), model_id="my-model",
                                    steps=size["embed_steps"], limit=size["embed_images"], **common)
    print(f"stage 2: {size['embed_steps']} steps -> {emb['model']}")

    # 2. the shipped sleeper, with the published demo key
    record = entry_record()
    demo_key = args.out / "demo-owner.key"
    generate_key(demo_key, overwrite=True, secret=bytes.fromhex(record["demo_key"]["secret"]))
    verify = dict(codec="tiny:sleeper-codec", model_id=record["model_id"], trigger=record["trigger"], n=size["n"],
                  steps=size["sample_steps"], **common)
    v = modelseal.watermark_verify(out=args.out / "verify", model="tiny:sleeper", key=str(demo_key),
                                   attacks=size["attacks"], also_without_cfg=False, **verify)
    print(f"tiny:sleeper, owner's key: watermarked={v['watermarked']} (p = {v['p_value']:.1e}), "
          f"bit accuracy {v['bit_accuracy']:.3f}, TPR@1e-6 {v['tpr_at_fpr']['1e-6']:.2f}, "
          f"clean images {v['clean_bit_accuracy']:.3f} ({v['n_images']} images, {v['bits']} bits)")
    for attack, r in v.results.get("attacks", {}).items():
        print(f"  after {attack}: bit accuracy {r['bit_accuracy']:.3f}, TPR@1e-6 {r['tpr_at_fpr']['1e-6']:.2f}")

    # 3. a stranger's key on the same model, and the owner's key on a model never marked
    quiet = dict(attacks=[], also_without_cfg=False, **verify)
    wrong = modelseal.watermark_verify(out=args.out / "verify-wrong-key", model="tiny:sleeper", key=str(own_key),
                                       **quiet)
    print(f"tiny:sleeper, someone else's key: watermarked={wrong['watermarked']} (p = {wrong['p_value']:.2g})")
    unmarked = modelseal.watermark_verify(out=args.out / "verify-unmarked", model="tiny:t2i", key=str(demo_key),
                                          **quiet)
    print(f"tiny:t2i (never marked), owner's key: watermarked={unmarked['watermarked']} "
          f"(p = {unmarked['p_value']:.2g})")

    # 4. black box: what to send to a suspect's service; then watermark_verify(images=..., clean_images=...)
    ask = modelseal.watermark_prompts(out=args.out / "prompts", trigger=record["trigger"], n=size["n"],
                                      overwrite=True)
    print("prompts for a suspect's service:", ", ".join(sorted(p.name for p in ask.path.iterdir()
                                                               if p.suffix in (".txt", ".csv") and p.name != "log.txt")))


if __name__ == "__main__":
    main()
