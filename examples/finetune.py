"""finetune: make a suspect, or attack a model (full, LoRA, DreamBooth, pruning, quantization).

1. LoRA on the 200 LFW faces that ship with scikit-image (captioned 'a photo of a face'),
   a domain tiny:t2i never saw; the training loss before and after;
2. the LoRA folder loaded back like any model: the same prompt and seeds sampled before and
   after fine-tuning (samples.png);
3. the model-level attacks that need no data: magnitude pruning and 4-bit quantization.

    python examples/finetune.py runs/ex-ft               # the demo's size (a few minutes on a CPU)
    python examples/finetune.py runs/ex-ft --size tiny   # under a minute (or MODELSEAL_EXAMPLE_SIZE=tiny)
"""
import argparse
import os
from pathlib import Path

import torch

import modelseal
from modelseal.models.diffusion import load_t2i
from modelseal.report.figures import sample_grid

SIZES = {  # LoRA steps and training images; samples per model and their DDIM steps
    "demo": dict(steps=1000, limit=None, samples=8, sample_steps=30),
    "tiny": dict(steps=150, limit=64, samples=4, sample_steps=10),
}
PROMPT = "a photo of a face"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the runs")
    ap.add_argument("--size", choices=SIZES, default=os.environ.get("MODELSEAL_EXAMPLE_SIZE", "demo"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    size, common = SIZES[args.size], dict(device=args.device, overwrite=True)

    # 1. LoRA (rank 8 on the UNet's attention) on faces
    lora = modelseal.finetune(out=args.out / "lora", model="tiny:t2i", method="lora", data="builtin:faces",
                              limit=size["limit"], steps=size["steps"], **common)
    print(f"LoRA on {lora['data']}: {lora['steps']} steps, lr {lora['lr']:g}, "
          f"training loss {lora['loss_start']:.4f} -> {lora['loss_end']:.4f} ({lora['train_s']:.0f} s)")

    # 2. the adapter loads on top of its base (named in lora_base.json); same seeds before / after
    seeds = list(range(size["samples"]))
    before = load_t2i("tiny:t2i").sample([PROMPT] * len(seeds), seeds=seeds, steps=size["sample_steps"])
    after = load_t2i(lora.path / "model").sample([PROMPT] * len(seeds), seeds=seeds, steps=size["sample_steps"])
    (args.out / "samples.png").write_bytes(sample_grid(torch.cat([before, after]), ["tiny:t2i", "+ LoRA on faces"],
                                                       ncols=len(seeds), title=f"'{PROMPT}', same seeds"))
    change = (after - before).abs().mean().item()
    print(f"'{PROMPT}' before / after: mean pixel change {change:.3f} (of 1); grid: {args.out / 'samples.png'}")

    # 3. attacks without data
    pruned = modelseal.finetune(out=args.out / "prune", method="prune", amount=0.3, **common)
    quant = modelseal.finetune(out=args.out / "quantize", method="quantize", bits=4, **common)
    print(f"pruned: {pruned['pruned_fraction']:.1%} of the UNet's weights zeroed -> {pruned['model']}")
    print(f"quantized to {quant['bits']} bits: relative weight error {quant['relative_weight_error']:.3f} "
          f"-> {quant['model']}")


if __name__ == "__main__":
    main()
