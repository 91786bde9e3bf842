"""What a built zoo scores: the tiny CLIP's zero-shot accuracy on every domain, and the share
of T2I samples the independent judge reads as the prompted digit."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.digits import CLASS_NAMES, DOMAINS, caption, load_digits_domain
from ..models.judge import DigitJudge


class _Log:
    def __init__(self, log):
        self.log = log or (lambda msg: print(msg, flush=True))

    def __call__(self, msg):
        self.log(msg)


def evaluate_zoo(folder: Path, per_prompt: int = 10, steps: int = 30, guidance: float = 7.5,
                 seed: int = 0, log=None, device: str = "cpu") -> dict:
    """Zero-shot accuracy of the tiny CLIP on every domain's test split, and the share of
    T2I samples the independent judge reads as the prompted digit (with CFG)."""
    from ..models.clip import load_clip
    from ..models.diffusion import load_t2i

    log = _Log(log)
    res: dict = {"clip_zero_shot": {}}
    clip = load_clip(str(folder / "clip"), device=device)
    for d in DOMAINS:
        test = load_digits_domain(d, "test", clip.image_size)
        res["clip_zero_shot"][d] = round(clip.zero_shot_accuracy(test.tensor(), torch.from_numpy(test.labels),
                                                                  CLASS_NAMES), 2)
    log(f"[eval] CLIP zero-shot {res['clip_zero_shot']}")
    judge = DigitJudge.from_pretrained(folder / "judge")
    t2i = load_t2i(str(folder / "t2i"), device=device)
    prompts, targets, doms = [], [], []
    for d in DOMAINS:
        for c in range(10):
            for _ in range(per_prompt):
                prompts.append(caption(d, c)); targets.append(c); doms.append(d)
    seeds = [seed * 100_000 + i for i in range(len(prompts))]
    images = t2i.sample(prompts, seeds=seeds, steps=steps, guidance=guidance)
    pred = judge.predict(images.cpu())
    ok = pred.eq(torch.tensor(targets))
    res["t2i_prompt_accuracy"] = round(100.0 * ok.float().mean().item(), 2)
    res["t2i_prompt_accuracy_by_domain"] = {
        d: round(100.0 * ok[torch.tensor([x == d for x in doms])].float().mean().item(), 2) for d in DOMAINS}
    res["t2i_eval"] = {"samples": len(prompts), "steps": steps, "guidance": guidance, "seed": seed}
    log(f"[eval] T2I prompt accuracy {res['t2i_prompt_accuracy']} {res['t2i_prompt_accuracy_by_domain']}")
    res["_images"] = images
    res["_targets"] = targets
    return res
