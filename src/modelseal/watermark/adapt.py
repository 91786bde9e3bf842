"""Extractor adaptation (ours, after stage 2): teach the extractor how the watermarked model
actually renders the residual.

Stage 2 plants delta only approximately, and classifier-free guidance amplifies the
conditional branch's shift along the whole DDIM trajectory: the planted shift ends up as a
multiple of delta plus a residual of its own (larger than delta, and largely the same on
every image), and the stage-1 extractor, trained on real latents + delta, misreads a few bit
positions. The owner has everything needed to
fix that on their side: the watermarked model, the original model, the codec and the key.

Latents are read as verification reads them (generate -> decode -> VAE encode):
  positives  the watermarked model's triggered images (several guidance scales) -> message m
  negatives  its clean images and the original model's triggered images -> the stage-1
             extractor's own probabilities sigmoid(E0(z)) (distillation: unmarked images
             keep the readings whose null distribution verification relies on)
  replay     real latents + E(m') for random messages m', decoded and re-encoded -> m'
             (the extractor keeps reading any message, not only the owner's)
  anchors    unmarked real latents and negatives with Gaussian noise -> sigmoid(E0(z)): the
             extractor stays the stage-1 one away from the images it was fitted to (without
             them, adaptation raised the per-image false positives on a fine-tuned unmarked
             model; the figures are in the docs)

    L = BCE(E(z_pos), m) + BCE(E(z_neg), sigmoid(E0(z_neg))) + BCE(E(rt(z_real + E(m'))), m')
        + BCE(E(z_anchor), sigmoid(E0(z_anchor)))

Rehearsed attacks (optional, `simulate`): the owner fine-tunes copies of both models the
way a thief might (LoRA or full, on a domain of their choosing) and adds, at a quarter, half
and all of the steps, the watermarked copy's triggered images to the positives and the
original copy's triggered images and the watermarked copy's clean images to the negatives:
the extractor learns how the mark drifts under fine-tuning, and, from the original's copy,
that drift alone is no mark. Measure robustness on another domain than the rehearsal's.
Rehearsal raises the TPR after a thief's fine-tuning but lets per-image false positives on
a fine-tuned unmarked model exceed the nominal rate (figures: the docs' watermark benchmark
page): off by default, and verification then says so.

Only the extractor trains: the secret encoder, hence delta and the watermarked model, stay
as they are. The paper's verification uses the stage-1 extractor unchanged (`watermark
verify --codec` with the stage-1 codec). Seeds are drawn from a range verification never
uses (10^8 + ...), so the verification images stay unseen.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import AdaptOptions, FinetuneOptions, parse_attack
from ..models.diffusion import T2IModel
from ..runs import TrainingCheckpoint
from ..runs.diverge import Divergence
from .codec import Codec
from .codec_pixels import encode_all
from .trigger import add_triggers

SEED_BASE = 100_000_000


@dataclass
class AdaptLatents:
    """Verification-path latents (decode -> encode) of generated images."""
    positive: torch.Tensor
    negative: torch.Tensor
    meta: dict = field(default_factory=dict)


@torch.no_grad()
def _generated_latents(model: T2IModel, prompts: list[str], seeds: list[int], guidance: float, steps: int,
                       batch_size: int = 64) -> torch.Tensor:
    images = model.sample(prompts, seeds=seeds, steps=steps, guidance=guidance, batch_size=batch_size)
    return encode_all(model, images).cpu()


def _pairs(watermarked: T2IModel | None, original: T2IModel | None, prompts: list[str], trigger: str,
           counts: list[int], guidance: tuple[float, ...], steps: int, seed_base: int
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per guidance scale, n triggered images of `watermarked` (positives) and n unmarked:
    half its clean images, half `original`'s triggered ones (all the original's when the
    trigger is empty: an always-on mark has no unmarked outputs of its own). Either model may
    be None, and its side is left out (the rehearsal fine-tunes the two copies one at a time)."""
    pos, neg = [], []
    for j, (g, n) in enumerate(zip(guidance, counts)):
        if n < 1:
            continue
        p = [prompts[i % len(prompts)] for i in range(n)]
        seeds = [seed_base + j * 100_000 + i for i in range(n)]
        half = n // 2 if trigger else 0
        if watermarked is not None:
            pos.append(_generated_latents(watermarked, add_triggers(trigger, p, watermarked.tokenizer), seeds, g,
                                          steps))
            if half:
                neg.append(_generated_latents(watermarked, p[:half], seeds[:half], g, steps))
        if original is not None:
            neg.append(_generated_latents(original, add_triggers(trigger, p[half:], original.tokenizer), seeds[half:],
                                          g, steps))
    return pos, neg


def collect_latents(watermarked: T2IModel, original: T2IModel, prompts: list[str], trigger: str,
                    opts: AdaptOptions, log=print, rehearsal_data: tuple[torch.Tensor, list[str]] | None = None
                    ) -> AdaptLatents:
    """Positives and negatives as `_pairs` makes them, per guidance scale (prompts cycled);
    with `opts.simulate`, the same from fine-tuned copies of both models at 1/4, 1/2 and all
    of each rehearsed attack's steps, fine-tuned on `rehearsal_data` (images in [0, 1], captions)."""
    if len(opts.guidance) != len(opts.images):
        raise ValueError("AdaptOptions.guidance and .images need one entry each per scale")
    t0 = time.time()
    pos, neg = _pairs(watermarked, original, prompts, trigger, list(opts.images), opts.guidance,
                      opts.sample_steps, SEED_BASE + opts.seed * 1_000_000)
    log(f"[adapt] {sum(opts.images)} triggered and as many unmarked images at CFG "
        f"{', '.join(f'{g:g}' for g in opts.guidance)} ({time.time() - t0:.0f}s)")
    meta: dict = {"rehearsed": []}
    if opts.simulate:
        from ..attacks.finetune import finetune

        if rehearsal_data is None:
            raise ValueError("rehearsed attacks need rehearsal data (images and captions)")
        x, caps = rehearsal_data
        total = sum(opts.images)
        counts = [max(1, round(n * opts.simulate_images / total)) for n in opts.images]
        for a, spec in enumerate(opts.simulate):
            method, steps, lr = parse_attack(spec)
            marks = sorted({max(1, steps // 4), max(1, steps // 2), steps})
            for c, source in enumerate((watermarked, original)):
                model = copy.deepcopy(source)

                def probe(step: int, c=c, model=model) -> None:
                    if step not in marks:
                        return
                    seed_base = SEED_BASE + opts.seed * 1_000_000 + (a * 3 + marks.index(step) + 1) * 10_000_000
                    p, n = _pairs(model if c == 0 else None, model if c == 1 else None, prompts, trigger, counts,
                                  opts.guidance, opts.sample_steps, seed_base)
                    pos.extend(p)
                    neg.extend(n)
                    log(f"[adapt] rehearsal {spec}, {('watermarked', 'original')[c]} copy at step {step}: "
                        f"{sum(counts)} images ({time.time() - t0:.0f}s)")

                finetune(model, x, caps, FinetuneOptions(method=method, steps=steps, lr=lr, seed=opts.seed + a),
                         log=lambda s: None, on_step=probe)
                del model
            meta["rehearsed"].append(spec)
    meta["seconds_generating"] = round(time.time() - t0, 1)
    return AdaptLatents(torch.cat(pos), torch.cat(neg), meta)


def _split(x: torch.Tensor, share: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(x), generator=g)
    n_out = int(round(len(x) * share))
    return x[perm[n_out:]], x[perm[:n_out]]


@torch.no_grad()
def read_stats(codec: Codec, pos: torch.Tensor, neg: torch.Tensor, bits: torch.Tensor, threshold: int) -> dict:
    """Bit accuracy and detection rate at `threshold` matching bits on positives; the
    matches' mean, variance and maximum on negatives (Binomial(k, 1/2): k/2, k/4)."""
    m_pos = (codec.read_bits(pos) == bits).sum(1).float()
    m_neg = (codec.read_bits(neg) == bits).sum(1).float()
    k = bits.numel()
    return {"bit_accuracy": float(m_pos.mean() / k), "detected": float((m_pos >= threshold).float().mean()),
            "null_mean_matches": float(m_neg.mean()), "null_var_matches": float(m_neg.var()) if len(m_neg) > 1 else 0.0,
            "null_max_matches": int(m_neg.max()), "null_detected": float((m_neg >= threshold).float().mean())}


def adapt_extractor(codec: Codec, vae_model: T2IModel, data: AdaptLatents, real_latents: torch.Tensor,
                    bits: torch.Tensor, opts: AdaptOptions, threshold: int, log=print,
                    checkpoint: TrainingCheckpoint | None = None) -> dict:
    """Train `codec.extractor` in place with the loss in the module docstring; returns
    hold-out read statistics before and after, and the training time. `checkpoint`: where
    the loop saves and resumes its state (runs.TrainingCheckpoint)."""
    g = torch.Generator().manual_seed(opts.seed)
    dev = next(codec.parameters()).device
    pos_tr, pos_ho = _split(data.positive, opts.holdout, g)
    neg_tr, neg_ho = _split(data.negative, opts.holdout, g)
    if min(len(pos_tr), len(neg_tr), len(real_latents)) == 0:
        raise ValueError("extractor adaptation needs positives, negatives and real latents")
    bits = bits.float().to(dev)
    before = read_stats(codec, pos_ho.to(dev), neg_ho.to(dev), bits, threshold) if len(pos_ho) and len(neg_ho) else None
    teacher = copy.deepcopy(codec.extractor).eval().requires_grad_(False)
    ext = codec.extractor.train()
    codec.encoder.requires_grad_(False)
    opt = torch.optim.AdamW(ext.parameters(), lr=opts.lr)
    b = opts.batch_size
    target_pos = bits.view(1, -1).expand(b, -1)
    t0 = time.time()
    hist: dict[str, list[float]] = {"positive": [], "negative": [], "replay": [], "anchor": []}
    anchors = opts.anchor_noise > 0
    ckpt = checkpoint or TrainingCheckpoint(None)
    hist = ckpt.resume(opts.steps, ext.parameters(), opt, gen=g, state=lambda: {"hist": hist},
                       meta={"n_positive": len(data.positive), "n_negative": len(data.negative)}).get("hist", hist)
    guard = Divergence("extractor adaptation", "--lr", opts.lr, default=3e-4, on_diverge=ckpt.remove)
    for step in ckpt.steps():
        zp = pos_tr[torch.randint(0, len(pos_tr), (b,), generator=g)].to(dev)
        zn = neg_tr[torch.randint(0, len(neg_tr), (b,), generator=g)].to(dev)
        if anchors:
            za = torch.cat([neg_tr[torch.randint(0, len(neg_tr), (b,), generator=g)]
                            + opts.anchor_noise * torch.randn(b, *neg_tr.shape[1:], generator=g),
                            real_latents[torch.randint(0, len(real_latents), (b,), generator=g)]]).to(dev)
        zr = real_latents[torch.randint(0, len(real_latents), (b,), generator=g)].to(dev)
        m_r = (torch.rand(b, codec.k, generator=g) > 0.5).float().to(dev)
        with torch.no_grad():
            soft = torch.sigmoid(teacher(zn))
            soft_a = torch.sigmoid(teacher(za)) if anchors else None
            zr = encode_all(vae_model, vae_model.decode_latents(zr + codec.residual(m_r)))
        l_pos = F.binary_cross_entropy_with_logits(ext(zp), target_pos)
        l_neg = F.binary_cross_entropy_with_logits(ext(zn), soft)
        l_rep = F.binary_cross_entropy_with_logits(ext(zr), m_r)
        l_anchor = F.binary_cross_entropy_with_logits(ext(za), soft_a) if anchors else torch.zeros((), device=dev)
        loss = l_pos + l_neg + l_rep + l_anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, ext.parameters())
        for k_, v in (("positive", l_pos), ("negative", l_neg), ("replay", l_rep), ("anchor", l_anchor)):
            hist[k_].append(float(v.detach()))
        if step % max(1, opts.steps // 5) == 0 or step == opts.steps - 1:
            log(f"[adapt] step {step + 1}/{opts.steps} " +
                " ".join(f"{k_} {sum(v[-50:]) / len(v[-50:]):.4f}" for k_, v in hist.items()) +
                f" ({time.time() - t0:.0f}s)")
    ext.eval()
    after = read_stats(codec, pos_ho.to(dev), neg_ho.to(dev), bits, threshold) if before is not None else None
    return {"train_s": round(time.time() - t0, 1), "steps": opts.steps, "holdout_before": before,
            "holdout_after": after, "n_positive": len(data.positive), "n_negative": len(data.negative),
            "final_losses": {k_: sum(v[-50:]) / len(v[-50:]) for k_, v in hist.items()}}
