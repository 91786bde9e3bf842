"""Hardening a domain lock against the input disguise (`lock train --harden disguise`; ours,
not the paper's).

The disguise attack (lock.attacks.train_disguise, JailNTL's idea) leaves the lock's weights
alone and learns an image transform that pulls the unauthorized images' block statistics to
the licensed domain's: IP-CLIP's domain tokens read exactly those statistics, so a lock that
reads nothing else cannot tell a disguised image from a licensed one. Hardening gives the
domain tokens the image's final feature too (ProjectorConfig.read_feature: a zero-initialised
map, so training starts from the paper's lock) and then plays the attacker in rounds:

  round r:  fit a disguise against the current lock on the unauthorized training images
            (the owner holds them and a few licensed ones, as the attacker would);
            add the disguised images to the unauthorized set as a source of their own
            (batches draw every source equally often);
            continue training the lock on the enlarged set (`harden_steps` at half the lr).

Each round's training resumes from its own checkpoint in OUT/resume; the disguises are seeded,
so a resumed run rebuilds the same disguised images.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import LockAttackOptions, LockTrainOptions
from ..runs import TrainingCheckpoint
from .attacks import clone_lock, train_disguise
from .train import LockModel, accuracy, train_lock


def round_options(cfg: LockTrainOptions, r: int) -> LockTrainOptions:
    """The lock training options of hardening round r (1-based)."""
    return cfg.model_copy(update={"steps": cfg.harden_steps, "lr": cfg.lr / 2, "seed": cfg.seed + r,
                                  "warmup_steps": min(cfg.warmup_steps, cfg.harden_steps // 10)})


def disguise_options(cfg: LockTrainOptions, r: int) -> LockAttackOptions:
    """The owner's disguise of round r: the attack's own defaults, its steps and a round seed."""
    return LockAttackOptions(attack="disguise", steps=cfg.harden_disguise_steps, batch_size=cfg.batch_size,
                             seed=cfg.seed + 1000 * r)


def harden_lock(model: LockModel, clip, class_names: list[str], auth: dict, y_a: torch.Tensor, unauth: dict,
                y_u: torch.Tensor, u_groups: torch.Tensor | None, x_unauth: torch.Tensor, x_auth: torch.Tensor,
                cfg: LockTrainOptions, templates, features: Callable[[torch.Tensor], dict],
                checkpoint: Callable[[int], TrainingCheckpoint], log=print) -> tuple[LockModel, list[dict]]:
    """Rounds of disguise then lock training (module docstring). `features(images)` gives the
    frozen features the lock trains on; `checkpoint(r)` round r's training checkpoint.
    Returns the hardened lock and, per round, the lock's accuracy on that round's disguised
    unauthorized training images before and after the round's training."""
    groups = torch.zeros(len(y_u), dtype=torch.long) if u_groups is None else u_groups.clone()
    pool, pool_y = dict(unauth), y_u
    history = []
    for r in range(1, cfg.harden_rounds + 1):
        opts = disguise_options(cfg, r)
        pick = torch.randperm(len(x_auth), generator=torch.Generator().manual_seed(opts.seed))
        reference = x_auth[pick[:opts.disguise_authorized]]
        disguise = train_disguise(clone_lock(model), x_unauth, reference, opts, log=log, tag=f" harden {r}",
                                  what=f"hardening round {r}'s disguise",
                                  fix="lower --lr (the lock it is fitted against comes from it), or use --harden none")
        views = features(disguise.apply(x_unauth))
        views = {k: v.to(pool[k].device) for k, v in views.items()}
        unlocked = accuracy(model.ipclip, views, y_u)
        pool = {k: torch.cat([pool[k], views[k]]) for k in pool}
        pool_y = torch.cat([pool_y, y_u])
        groups = torch.cat([groups, torch.full((len(y_u),), int(groups.max()) + 1)])
        model, _ = train_lock(clip, class_names, auth, y_a, pool, pool_y, round_options(cfg, r), templates, log=log,
                              u_groups=groups, checkpoint=checkpoint(r), init=model.trainable_state(),
                              label=f"hardening round {r}'s lock training (at half --lr)")
        row = {"round": r, "disguised_accuracy_before": round(unlocked, 2),
               "disguised_accuracy_after": round(accuracy(model.ipclip, views, y_u), 2)}
        history.append(row)
        log(f"[lock] harden round {r}/{cfg.harden_rounds}: the round's disguise unlocked "
            f"{row['disguised_accuracy_before']:.1f} % of the unauthorized training images; after the round "
            f"{row['disguised_accuracy_after']:.1f} %")
    return model, history
