"""Training loop shared by IP-CLIP and the baselines (SL, NTL, CUTI).

The frozen vision tower runs once per image (its block statistics and feature are cached),
so a step costs one batched text-encoder pass over every (image, class) prompt of the
authorized and unauthorized batches together.
"""
from __future__ import annotations

import math
import time

import torch

from .. import parallel
from ..config import LockTrainOptions
from ..runs import TrainingCheckpoint
from ..runs.diverge import Divergence
from .ipclip import IPCLIP, ProjectorConfig
from .losses import (FeatureBank, IPLossWeights, StyleAttention, cuti_loss, ipclip_loss, ntl_loss,
                     supervised_loss)

METHODS = ("ip-clip", "supervised", "ntl", "cuti")


def projector_config(opts: LockTrainOptions) -> ProjectorConfig:
    """The prompt learner's architecture the options ask for (a checkpoint's card records it)."""
    return ProjectorConfig(n_image_tokens=opts.n_image_tokens, shared_image_tokens=opts.shared_image_tokens,
                           read_feature=opts.read_feature or opts.harden != "none")


def _subset(frozen: dict, idx) -> dict:
    return {k: v[idx] for k, v in frozen.items()}


@torch.no_grad()
def zero_shot_probs(clip, class_names, frozen, templates) -> torch.Tensor:
    w = clip.class_text_features(class_names, templates).float()
    return (clip.model.logit_scale.exp().float() * frozen["feat"] @ w.T).softmax(-1)


@torch.no_grad()
def accuracy(model: IPCLIP, frozen: dict, labels: torch.Tensor) -> float:
    return 100.0 * model.predict(frozen).eq(labels.cpu()).float().mean().item()


class LockModel(torch.nn.Module):
    """What a lock checkpoint holds: the projector and, for IP-CLIP, the style branch."""

    def __init__(self, clip, class_names, projector: ProjectorConfig, text_chunk: int | None = None):
        super().__init__()
        self.ipclip = IPCLIP(clip, class_names, projector)
        self.ipclip.text_chunk = text_chunk
        dim = clip.model.config.projection_dim
        self.att_s = StyleAttention(dim)
        self.att_t = StyleAttention(dim)
        self.to(clip.device)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ipclip.clip.")}


def train_lock(clip, class_names: list[str], auth: dict, y_a: torch.Tensor, unauth: dict | None,
               y_u: torch.Tensor | None, cfg: LockTrainOptions, templates=("a photo of a {}.",), log=print,
               progress_every: int = 50, u_groups: torch.Tensor | None = None,
               checkpoint: TrainingCheckpoint | None = None,
               init: dict[str, torch.Tensor] | None = None, label: str | None = None) -> tuple[LockModel, list[dict]]:
    """auth / unauth: cached frozen features (mu, sigma, feat) with labels.

    u_groups (optional): the source of each unauthorized image. Batches then draw every
    source equally often: the clamped unauthorized terms average over the batch, so a
    small source mixed into large ones would otherwise never be pushed down once the
    batch mean saturates.

    Under `accelerate launch` / `torchrun` every process draws its own batches (so the
    effective batch is batch_size x processes) and gradients are averaged (parallel.py).
    `checkpoint`: where the loop saves and resumes its state (runs.TrainingCheckpoint).
    `init`: a trainable state (LockModel.trainable_state) to start from instead of the
    initial prompts (a hardening round continues the lock it hardens).
    `label`: how a divergence names this training (default: lock training (<method>)).
    Divergence (a non-finite loss or weight) raises InputError at once, naming --lr; the
    loop's checkpoint is dropped with it, so nothing of the diverged training is kept.
    """
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 7919 * parallel.rank())
    model = LockModel(clip, class_names, projector_config(cfg), cfg.text_chunk)
    if init is not None:
        model.load_state_dict({k: v.clone() for k, v in init.items()}, strict=False)
    params = list(model.ipclip.projector.parameters())
    if cfg.method == "ip-clip":
        w = IPLossWeights.preset(cfg.weights)
        w.per_sample_clamp = cfg.clamp == "sample"
        p_a = zero_shot_probs(clip, class_names, auth, templates).cpu()
        p_u = zero_shot_probs(clip, class_names, unauth, templates).cpu()
        bank_a = FeatureBank.fill(auth["feat"].cpu(), p_a, y_a.cpu(), cfg.bank_k).prototypes().to(clip.device)
        bank_u = FeatureBank.fill(unauth["feat"].cpu(), p_u, None, cfg.bank_k).prototypes().to(clip.device)
        if cfg.train_attention:
            params += list(model.att_s.parameters()) + list(model.att_t.parameters())
        else:
            model.att_s.requires_grad_(False)
            model.att_t.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = []
    t0 = time.time()
    n_a = len(y_a)
    n_u = 0 if y_u is None else len(y_u)
    u_weights = None
    if u_groups is not None and len(torch.unique(u_groups)) > 1:
        counts = torch.bincount(u_groups)
        u_weights = 1.0 / counts[u_groups].double()
    ckpt = checkpoint or TrainingCheckpoint(None)
    history = ckpt.resume(cfg.steps, params, opt, gen=g, state=lambda: {"history": history},
                          meta={"method": cfg.method}).get("history", history)
    # diverged: the loop's resume state leads to the same NaN, so none of it is kept
    guard = Divergence(label or f"lock training ({cfg.method})", "--lr", cfg.lr,
                       default=LockTrainOptions.model_fields["lr"].default, on_diverge=ckpt.remove)
    for step in ckpt.steps():
        lr_f = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else \
            0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr * lr_f
        ia = torch.randint(0, n_a, (cfg.batch_size,), generator=g)
        fa = _subset(auth, ia.to(auth["feat"].device))
        ya = y_a[ia].to(clip.device)
        if cfg.method == "supervised":
            logits_a, _, _ = model.ipclip(fa)
            loss, parts = supervised_loss(logits_a, ya)
        else:
            iu = torch.randint(0, n_u, (cfg.batch_size,), generator=g) if u_weights is None else \
                torch.multinomial(u_weights, cfg.batch_size, replacement=True, generator=g)
            fu = _subset(unauth, iu.to(unauth["feat"].device))
            yu = y_u[iu].to(clip.device)
            both = {k: torch.cat([fa[k], fu[k]]) for k in fa}
            logits, text, dom = model.ipclip(both)
            b = cfg.batch_size
            logits_a, logits_u, text_a, text_u = logits[:b], logits[b:], text[:b], text[b:]
            if cfg.method == "ip-clip":
                f_sa = model.att_s(fa["feat"], bank_a)
                f_ta = model.att_t(fa["feat"], bank_u)
                inter_s = model.ipclip.logits(f_sa, text_a)
                inter_t = model.ipclip.logits(f_ta, text_a)
                loss, parts = ipclip_loss(logits_a, ya, logits_u, yu, inter_s, inter_t, dom[:b], dom[b:],
                                          text_a, text_u, w)
            elif cfg.method == "ntl":
                loss, parts = ntl_loss(logits_a, ya, logits_u, yu, text_a, text_u)
            else:
                loss, parts = cuti_loss(logits_a, ya, logits_u, yu)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(params)
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        if step % progress_every == 0 or step == cfg.steps - 1:
            parts["loss"] = float(loss.detach())
            parts["step"] = step + 1
            history.append(parts)
            log(f"[lock:{cfg.method}] step {step + 1}/{cfg.steps} " +
                " ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "step") + f" ({time.time() - t0:.0f}s)")
    model.eval()
    return model, history
