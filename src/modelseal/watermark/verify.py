"""Verification: images in (generated here, or returned by the suspect's service), bits read
with the owner's reader, a model-level verdict.

Reader: every image is quantized to 8 bits (as served images are), centre-cropped and
resized to the codec's input size, encoded by the owner's VAE stored with the codec (never
the suspect's: a thief could swap or fine-tune it), and the extractor reads k bits.

Verdict (stats.key_test on the triggered images): S(m) = matches with the owner's message
summed over images; under H0 "m is independent of this model" the message is the random
part, so p = P(S(m') >= S(m)) for a uniform m' is exact however alike the images read. The
smallest possible p is 2^-k (k = 32: 2.3e-10). The majority-vote message and its agreement
with m are reported beside it.

Per image (the paper's metric): M matching bits, p = P(X >= M) for X ~ Binomial(k, 1/2);
detected at FPR f when M reaches stats.bit_threshold(k, f); TPR at f = 1e-6.

An adapted extractor (`watermark adapt`) was fitted to one model's outputs, so its key test
alone is no evidence (watermark.provenance): with one, the suspect is read by both it and the
stage-1 extractor it carries, each key test at alpha / 2 (Bonferroni): p = min(1, 2 min(p_1,
p_a)), so a random key still passes at most alpha of the time; `readings` holds both.

Diagnostics, never the verdict: the pooled binomial p-value (the N*k bits as independent
coins: images of one model read alike, so about one random key in five passes it) and the
controlled p-value (triggered vs clean matches per position: it shows that *a* mark follows
the trigger, not that it is this key's).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import stats
from ..models.diffusion import T2IModel, vae_encode
from ..quality import psnr
from .codec import Codec
from .fidelity import image_fidelity
from .trigger import add_triggers


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to 8 bits, as a served PNG holds them."""
    return (images.float().clamp(0, 1) * 255).round() / 255


def reader_size(codec: Codec) -> int:
    """Pixel size the owner's reader takes (latent size x the VAE's downscale)."""
    n = int(codec.latent_shape[1])
    if codec.vae is None:
        return n
    return n * 2 ** (len(codec.vae.config.block_out_channels) - 1)


@torch.no_grad()
def read_bits(codec: Codec, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Bits (N, k) as 0/1 int64 read from pixels (N, 3, H, W) in [0, 1] with the owner's reader."""
    codec.require_reader()
    size = reader_size(codec)
    device = next(codec.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = quantize(images[i:i + batch_size]).to(device)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        z = vae_encode(codec.vae, x) if codec.vae is not None else x * 2 - 1
        out.append(codec.read_bits(z.float()).cpu())
    return torch.cat(out).to(torch.int64)


def hits(codec: Codec, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Which bits match, per image (N, k) bool."""
    return read_bits(codec, images) == bits.cpu().to(torch.int64).view(1, -1)


def matches(codec: Codec, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Matching bits per image (N,)."""
    return hits(codec, images, bits).sum(1)


def generate(model: T2IModel, prompts: list[str], seeds: list[int], trigger: str | None, guidance: float,
             steps: int, batch_size: int = 64) -> torch.Tensor:
    return model.sample(add_triggers(trigger, prompts, model.tokenizer), seeds=seeds, steps=steps, guidance=guidance,
                        batch_size=batch_size)


def decide(read_trig, bits, alpha: float = 1e-3, fpr: float = 1e-6, read_clean=None) -> dict:
    """Results of one verification from the bits read (N, k) off triggered images (and, if
    given, clean ones): the key-randomization verdict, per-image figures, diagnostics."""
    rt = np.asarray(read_trig, dtype=np.int64)
    m = np.asarray(bits, dtype=np.int64).ravel()
    k = m.size
    h_tr = rt == m[None]
    key = stats.key_test(rt, m)
    per = stats.summarize_bits(h_tr.sum(1), k, fpr)
    per_image = per.pop("per_image_p_values")
    pooled = per.pop("p_value")
    res = {
        **per,
        "test": "key_randomization",
        "p_value": key["p_value"],
        "log10_p_value": key["log10_p_value"],
        "min_p_value": key["min_p_value"],
        "informative_bits": key["informative_bits"],
        "majority_agreement": key["majority_agreement"],
        "alpha": alpha,
        "watermarked": bool(key["p_value"] <= alpha),
        "median_image_p_value": float(np.median(per_image)),
        "diagnostics": {"pooled_binomial_p_value": pooled,
                        "pooled_binomial_log10_p_value": stats.log10_pooled_pvalue(h_tr.sum(1), k)},
    }
    if read_clean is not None:
        rc = np.asarray(read_clean, dtype=np.int64)
        h_cl = rc == m[None]
        ck = stats.key_test(rc, m)
        res.update({
            "clean_bit_accuracy": float(h_cl.mean()),
            "clean_tpr_at_fpr": stats.summarize_bits(h_cl.sum(1), k, fpr)["tpr_at_fpr"],
            "clean_p_value": ck["p_value"],
            "clean_log10_p_value": ck["log10_p_value"],
            "clean_majority_agreement": ck["majority_agreement"],
            "n_clean_images": int(len(rc)),
        })
        res["diagnostics"]["controlled_p_value"] = stats.controlled_pvalue(h_tr, h_cl)
    return res


def union_p(p_stage1, p_adapted):
    """The p-value of the union of two key tests (Bonferroni): min(1, 2 min(p_1, p_a));
    numbers or arrays (one per key)."""
    return np.minimum(1.0, 2 * np.minimum(p_stage1, p_adapted))


def combine_readings(adapted: dict, stage1: dict, alpha: float) -> dict:
    """The verdict of an adapted codec: `adapted` (decide() on the adapted extractor's bits,
    whose other figures stay as they are) with p_value the Bonferroni union of both key tests,
    `watermarked` from it, and `readings` holding each reading's own figures."""
    keep = ("p_value", "log10_p_value", "bit_accuracy", "tpr_at_fpr", "majority_agreement", "clean_bit_accuracy",
            "clean_p_value")
    readings = {name: {**{k: r[k] for k in keep if k in r}, "watermarked": bool(r["p_value"] <= alpha / 2)}
                for name, r in (("stage1", stage1), ("adapted", adapted))}
    p = float(union_p(stage1["p_value"], adapted["p_value"]))
    return {**adapted, "p_value": p, "log10_p_value": stats.log10_p(p), "watermarked": bool(p <= alpha),
            "test": "key_randomization_bonferroni", "readings": readings}


def decide_images(codec: Codec, images: torch.Tensor, bits, alpha: float = 1e-3, fpr: float = 1e-6,
                  clean: torch.Tensor | None = None, stage1: Codec | None = None) -> dict:
    """decide() on images read by `codec`; with `stage1` (the stage-1 codec an adapted `codec`
    carries) both readings, combined by combine_readings."""
    res = decide(read_bits(codec, images), bits, alpha, fpr, read_bits(codec, clean) if clean is not None else None)
    if stage1 is None:
        return res
    first = decide(read_bits(stage1, images), bits, alpha, fpr,
                   read_bits(stage1, clean) if clean is not None else None)
    return combine_readings(res, first, alpha)


def verify_model(model: T2IModel, codec: Codec, bits: torch.Tensor, prompts: list[str], seeds: list[int],
                 trigger: str, guidance: float = 7.5, steps: int = 30, fpr: float = 1e-6,
                 attacks: dict[str, Callable] | None = None, alpha: float = 1e-3, batch_size: int = 64,
                 stage1: Codec | None = None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """White-box: triggered and clean images of `model` at `guidance`, read with the owner's
    reader (the model's own VAE is not used); under each image attack too (name -> a
    function (images, generator) -> images, attacks.suite.image_attack). Returns (results,
    triggered images, clean images; the triggered ones again when there is no trigger).

    With a trigger, results['trigger_fidelity'] holds what the trigger does to the picture:
    PSNR / SSIM of each triggered image against the clean image of the same seed. `stage1`:
    the stage-1 codec an adapted `codec` carries (both readings, decide_images)."""
    trig = quantize(generate(model, prompts, seeds, trigger, guidance, steps, batch_size))
    # With no trigger (an always-on mark) the two image sets are the same: no clean control.
    clean = quantize(generate(model, prompts, seeds, None, guidance, steps, batch_size)) if trigger else trig
    res = decide_images(codec, trig, bits, alpha, fpr, clean if trigger else None, stage1)
    res["guidance"] = guidance
    if trigger:
        res["trigger_fidelity"] = image_fidelity(trig, clean)
    if attacks:
        g = torch.Generator().manual_seed(0)
        res["attacks"] = {}
        for name, attack in attacks.items():
            attacked = attack(trig, g)
            r = decide_images(codec, attacked, bits, alpha, fpr, stage1=stage1)
            res["attacks"][name] = {**{k: r[k] for k in ("bit_accuracy", "tpr_at_fpr", "p_value", "log10_p_value",
                                                         "watermarked")},
                                    "psnr": float(psnr(attacked, trig).mean())}
    return res, trig, clean
