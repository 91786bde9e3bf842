"""Does a larger working size hold SleeperMark's fidelity targets (issue 39: hidden and asleep)?

    python benchmarks/watermark_size.py --out runs/wm-size [--size 64] [--unet-steps 1500]
                                        [--codec PATH] [--embed-steps 3000] [--delta-scale 0.133]
                                        [--anchor clean] [--trigger "{} sks"] [--trainable SCOPE]
                                        [--t2i tiny:t2i]   (use a model as it is: no growing)

Each step resumes when rerun (a finished step is kept):
1. OUT/zoo: tiny:t2i grown to --size px. `zoobuild` trains its UNet at that size, starting from
   the shipped UNet's weights (`unet_init`; a convolutional UNet's weights fit any size), on the
   zoo's captioned digits, with the shipped CLIP, judge and VAE (the VAE is convolutional too:
   it runs at --size unchanged). The zoo's own evaluation then gives the judged prompt accuracy
   at the new size.
2. OUT/codec: a stage-1 codec for that VAE at --size (`watermark codec` at the reference's
   image weight), unless --codec names one trained elsewhere (e.g. by
   benchmarks/watermark_codec_frontier.py at the same size).
3. OUT/embed, OUT/adapt, OUT/verify: stage 2 on the grown model (the tiny recipe, with
   --delta-scale), the extractor adapted to it (--no-adapt: the stage-1 codec reads, into
   OUT/verify-stage1), and `watermark verify` on --n prompts with
   the fidelity columns: triggered against clean images of the same seeds (PSNR, SSIM, judged
   ratio), the owner's key test on the clean images, clean images against the grown model's;
   and OUT/verify-unmarked, the grown model itself read the same way (what the trigger's words
   alone change, and the key test on a model that never had the mark); and the share of the
   owner's delta in the latent shift the trigger makes (delta_share).
Writes OUT/size.json and prints the row.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from modelseal.config import ZooConfig
from modelseal.data.folders import read_image_folder
from modelseal.models.diffusion import load_t2i
from modelseal.models.zoo import zoo_model_folder
from modelseal.runs import write_json
from modelseal.watermark.codec import Codec
from modelseal.watermark.codec_pixels import encode_all
from modelseal.watermark.keys import load_key, message_bits
from modelseal.zoobuild.build import build_zoo
from watermark_variants import fidelity_of, sh  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "src" / "modelseal" / "configs" / "watermark-embed.tiny.yaml"


def grow_t2i(out: Path, size: int, steps: int, lr: float, log) -> dict:
    """tiny:t2i's UNet trained on at `size` px into out/t2i (with the shipped CLIP, judge, VAE)."""
    work = out / "build"
    work.mkdir(parents=True, exist_ok=True)
    for name, src in (("clip", zoo_model_folder("clip")), ("judge", zoo_model_folder("judge")),
                      ("vae", zoo_model_folder("t2i") / "vae")):
        if not (work / name).is_dir():
            shutil.copytree(src, work / name)
    shipped = json.loads((zoo_model_folder("t2i").parent / "zoo.json").read_text())["config"]
    cfg = ZooConfig(**{**{k: v for k, v in shipped.items() if k in ZooConfig.model_fields},
                       "t2i_image_size": size, "unet_init": "tiny:t2i", "unet_steps": steps, "unet_lr": lr})
    return build_zoo(out, cfg, log=log, stages=("unet",))


def delta_share(verify: Path, model: str, codec: str, key: Path, model_id: str, n: int = 64) -> dict:
    """How much of the planted residual the trigger adds in the latent: the first n triggered
    and clean images of a verify folder (same seeds) encoded by the model's VAE,
    d = z(triggered) - z(clean), and per image the share <d, delta> / <delta, delta> of the
    owner's delta (scale 1); with d's and delta's RMS (a d far larger than its share of delta
    is the trigger's words, not the mark)."""
    t2i, c = load_t2i(model), Codec.from_pretrained(codec)
    z = {name: encode_all(t2i, read_image_folder(verify / name).tensor()[:n]) for name in ("triggered", "clean")}
    with torch.no_grad():
        delta = c.residual(message_bits(load_key(key), model_id, c.k).view(1, -1)).flatten(1)
    d = (z["triggered"] - z["clean"]).flatten(1)
    share = (d @ delta.T).squeeze(1) / delta.pow(2).sum()
    return {"delta_share_mean": float(share.mean()), "delta_share_median": float(share.median()),
            "shift_rms": float(d.pow(2).mean().sqrt()), "delta_rms": float(delta.pow(2).mean().sqrt())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--unet-lr", type=float, default=2e-4)
    ap.add_argument("--codec", type=Path, default=None, help="a codec for the shipped VAE at --size (default: train one)")
    ap.add_argument("--codec-steps", type=int, default=3000)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--embed-steps", type=int, default=3000)
    ap.add_argument("--delta-scale", type=float, default=0.133)
    ap.add_argument("--anchor", choices=["trigger", "clean"], default="trigger", help="watermark embed --anchor")
    ap.add_argument("--n", type=int, default=256, help="prompts of the fidelity verification")
    ap.add_argument("--no-adapt", action="store_true", help="verify with the stage-1 codec (the paper's extractor) "
                    "instead of one adapted to the grown sleeper")
    ap.add_argument("--trainable", default=None, help="watermark embed --trainable (default: the tiny config's)")
    ap.add_argument("--trigger", default="sks ", help="the trigger (a prefix, or a template: '{} sks' appends it)")
    ap.add_argument("--t2i", default=None, help="a text-to-image model to use as it is instead of growing one "
                    "(e.g. tiny:t2i, with --codec tiny:codec, for the shipped size)")
    ap.add_argument("--stop-after", choices=["t2i", "codec", "embed"], default=None)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logf = out / "log.txt"

    def log(msg):
        print(msg, flush=True)
        with logf.open("a") as f:
            f.write(msg + "\n")

    if args.t2i:
        model, row = args.t2i, {"t2i": args.t2i}
    else:
        zoo = out / "zoo"
        if not (zoo / "zoo.json").is_file():
            grow_t2i(zoo, args.size, args.unet_steps, args.unet_lr, log)
        info = json.loads((zoo / "zoo.json").read_text())
        row = {"size": args.size, "unet_steps": args.unet_steps,
               "unet_train_s": info["stages"]["unet"]["unet_train_s"],
               "t2i_prompt_accuracy": info["eval"]["t2i_prompt_accuracy"],
               "t2i_prompt_accuracy_by_domain": info["eval"]["t2i_prompt_accuracy_by_domain"]}
        model = zoo / "t2i"
    if args.stop_after == "t2i":
        write_json(out / "size.json", row)  # (the full row is written only once every step has run)
        return
    exe = [sys.executable, "-m", "modelseal"]
    codec = args.codec or out / "codec" / "codec"
    if args.codec is None and not (codec / "config.json").is_file():
        sh(exe + ["watermark", "codec", "--model", str(model), "--out", str(out / "codec"), "--bits", str(args.bits),
                  "--steps", str(args.codec_steps), "--lr", "1e-3", "--latent-warmup", "500"], logf)
    row["codec"] = str(codec)
    if args.stop_after == "codec":
        return
    key = out / "owner.key"
    if not key.exists():
        sh(exe + ["watermark", "keygen", "--key", str(key)], logf)
    common = ["--key", str(key), "--model-id", "size"]
    if not (out / "embed" / "model" / "model_index.json").is_file():
        sh(exe + ["watermark", "embed", "--config", str(TINY), "--model", str(model), "--codec", str(codec),
                  "--out", str(out / "embed"), "--steps", str(args.embed_steps), "--delta-scale", str(args.delta_scale),
                  "--anchor", args.anchor, "--trigger", args.trigger,
                  *(["--trainable", args.trainable] if args.trainable else []), *common], logf)
    if args.stop_after == "embed":
        return
    reader = codec if args.no_adapt else out / "adapt" / "codec"
    if not args.no_adapt and not (reader / "config.json").is_file():
        sh(exe + ["watermark", "adapt", "--out", str(out / "adapt"), "--model", str(out / "embed" / "model"),
                  "--original", str(model), "--codec", str(codec), "--trigger", args.trigger, *common], logf)
    verify = out / ("verify-stage1" if args.no_adapt else "verify")
    if not (verify / "results.json").is_file():
        sh(exe + ["watermark", "verify", "--out", str(verify), "--model", str(out / "embed" / "model"),
                  "--codec", str(reader), "--trigger", args.trigger, "--original", str(model),
                  "--n", str(args.n), "--no-also-without-cfg", *common], logf)
    # the same reading of the grown model itself, never marked: the trigger's words alone
    unmarked = out / "verify-unmarked"
    if not (unmarked / "results.json").is_file():
        sh(exe + ["watermark", "verify", "--out", str(unmarked), "--model", str(model), "--codec", str(codec),
                  "--trigger", args.trigger, "--n", str(args.n), "--no-also-without-cfg", *common], logf)
    row.update(extractor="stage 1" if args.no_adapt else "adapted", delta_scale=args.delta_scale, anchor=args.anchor,
               trigger=args.trigger, trainable=args.trainable,
               embed_steps=args.embed_steps, **fidelity_of(json.loads((verify / "results.json").read_text())),
               unmarked=fidelity_of(json.loads((unmarked / "results.json").read_text())),
               **delta_share(verify, str(model), str(codec), key, "size"))
    write_json(out / "size.json", row)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
