"""What is left of the mark in an attacked (stolen) model, beside what is left to the thief.

The owner verifies the attacked model as a suspect (its triggered images, 8-bit, read by the
codec and decided against the owner's bits) and attacks.utility.UtilityProbe measures its
utility on fixed prompts and seeds: one point of a robustness curve.
"""
from __future__ import annotations

import torch

from ..attacks.utility import UtilityProbe
from ..models.diffusion import T2IModel
from .verify import decide_images, generate, quantize


@torch.no_grad()
def mark_at_point(model: T2IModel, codec, bits: torch.Tensor, trigger: str | None, prompts: list[str],
                  seeds: list[int], guidance: float = 7.5, steps: int = 30, stage1=None) -> dict:
    """The owner's verification of an attacked model: its triggered images (8-bit, as a
    suspect would publish them) read by `codec` and decided against `bits` (the key test;
    with `stage1`, the stage-1 codec an adapted `codec` carries, both readings)."""
    images = quantize(generate(model, prompts, seeds, trigger, guidance, steps))
    return decide_images(codec, images, bits, stage1=stage1)


def mark_and_utility(model: T2IModel, codec, bits: torch.Tensor, trigger: str | None, prompts: list[str],
                     seeds: list[int], probe: UtilityProbe, before: torch.Tensor | None = None,
                     original_accuracy: float | None = None, loss_before: float | None = None,
                     guidance: float = 7.5, steps: int = 30, stage1=None) -> dict:
    """One attack point: what is left of the mark (TPR at FPR 1e-6, bit accuracy, the verdict
    and its p-value) beside what is left to the thief (UtilityProbe.measure)."""
    s = mark_at_point(model, codec, bits, trigger, prompts, seeds, guidance, steps, stage1)
    util, _ = probe.measure(model, before, original_accuracy, loss_before)
    return {"tpr": s["tpr_at_fpr"]["1e-6"], "bit_accuracy": s["bit_accuracy"], "p_value": s["p_value"],
            "watermarked": s["watermarked"], **util}
