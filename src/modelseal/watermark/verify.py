"""Black-box verification: prompts in, images out, bits read back, p-values.

N prompts with the trigger and fixed seeds -> images -> VAE encode -> extractor -> bits.
Per image M matching bits of k; under H0 (not our model) M ~ Binomial(k, 1/2), so the
per-image p-value is P(X >= M) and an image counts as detected at FPR f when M reaches
stats.bit_threshold(k, f). Pooled over N images the matches sum to Binomial(N k, 1/2)
under H0: the model-level p-value. The same prompts and seeds without the trigger show
that nothing leaks into normal use (bit accuracy near 50%), and give a second model-level
test that does not trust the extractor to read 1/2 per bit on unmarked images:
stats.controlled_pvalue compares triggered with clean matches position by position.
"""
from __future__ import annotations

import torch

from .. import stats
from ..models.diffusion import T2IModel
from .codec import Codec, extract_bits


def hits(codec: Codec, model: T2IModel, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Which bits match, per image (N, k) bool, read from pixels."""
    read = extract_bits(codec, model, images)
    return read.cpu() == bits.cpu().view(1, -1)


def matches(codec: Codec, model: T2IModel, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Matching bits per image (N,) read from pixels."""
    return hits(codec, model, images, bits).sum(1)


def generate(model: T2IModel, prompts: list[str], seeds: list[int], trigger: str | None, guidance: float,
             steps: int, batch_size: int = 64) -> torch.Tensor:
    p = [(trigger or "") + q for q in prompts]
    return model.sample(p, seeds=seeds, steps=steps, guidance=guidance, batch_size=batch_size)


def verify_model(model: T2IModel, codec: Codec, bits: torch.Tensor, prompts: list[str], seeds: list[int],
                 trigger: str, guidance: float = 7.5, steps: int = 30, fpr: float = 1e-6,
                 attacks: tuple[str, ...] = (), alpha: float = 1e-3, batch_size: int = 64) -> dict:
    """Triggered and clean images at `guidance`; bit statistics, under each image attack too."""
    from ..attacks.image import apply_attack

    k = int(bits.numel())
    trig = generate(model, prompts, seeds, trigger, guidance, steps, batch_size)
    clean = generate(model, prompts, seeds, None, guidance, steps, batch_size)
    h_tr = hits(codec, model, trig, bits)
    h_cl = hits(codec, model, clean, bits)
    m_tr, m_cl = h_tr.sum(1), h_cl.sum(1)
    res = stats.summarize_bits(m_tr.numpy(), k, fpr)
    per_image = res.pop("per_image_p_values")
    # With no trigger (an always-on mark) the two image sets are the same: no control.
    controlled = stats.controlled_pvalue(h_tr.numpy(), h_cl.numpy()) if trigger else None
    res.update({
        "clean_bit_accuracy": float(m_cl.float().mean() / k),
        "clean_tpr_at_fpr": stats.summarize_bits(m_cl.numpy(), k, fpr)["tpr_at_fpr"],
        "clean_p_value": stats.pooled_pvalue(m_cl.numpy(), k),
        "p_value_controlled": controlled,
        "guidance": guidance,
        "watermarked": bool(res["p_value"] <= alpha and (controlled is None or controlled <= alpha)),
        "alpha": alpha,
        "median_image_p_value": float(torch.tensor(per_image).median()),
    })
    if attacks:
        g = torch.Generator().manual_seed(0)
        res["attacks"] = {}
        for name in attacks:
            m = matches(codec, model, apply_attack(name, trig, generator=g), bits)
            s = stats.summarize_bits(m.numpy(), k, fpr)
            res["attacks"][name] = {"bit_accuracy": s["bit_accuracy"], "tpr_at_fpr": s["tpr_at_fpr"]}
    return res, trig, clean
