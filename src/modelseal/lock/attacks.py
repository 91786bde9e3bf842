"""Attacks on a lock checkpoint (NTLBench's families, for prompt locks over a frozen CLIP),
and the from-backbone attacker who never had the lock.

Every lock here (IP-CLIP and the SL, NTL and CUTI baselines) is a prompt learner over a
frozen, public CLIP. An attacker who holds the checkpoint can fine-tune what it learned; one
who never had it starts from the public backbone with the same data and steps. The lock's
worth against an attack is the second's accuracy on the unauthorized domain minus the
first's: positive when the lock costs the attacker something.

  target-finetune  labels for a share of the unauthorized domain's training split; the
                   lock's trainable parts (projector, style branch) fine-tuned with
                   cross-entropy (NTLBench's direct-all). NTLBench's initFC-all (a fresh head
                   on the locked features) reads the frozen image feature here, which no
                   lock changes: it is the from-backbone linear probe, counted there.
  source-finetune  labels for a share of the authorized domain's training split: does
                   relearning the licensed domain unlock the others?
  transntl         TransNTL's idea (CVPR 2024): the same source share plus copies of it under
                   heavy augmentation (shifted domains made from the source) with the same
                   labels, so fine-tuning asks the model to keep its accuracy off the source
  shot             SHOT (ICML 2020), source-free adaptation on unlabeled unauthorized images:
                   information maximisation (each prediction confident, the batch's mean
                   prediction diverse) plus cross-entropy on pseudo-labels from
                   prediction-weighted class centroids of the image features, recomputed
                   every `shot_interval` steps
  disguise         JailNTL's idea (CVPR 2025), at test time: no weight changes. A small
                   image-to-image transform T (a colour matrix and shift plus a bounded
                   convolutional residual) learns, from unlabeled unauthorized images and a
                   few unlabeled authorized ones, with the locked model frozen, to make the
                   unauthorized images look authorized to it: each disguised image's
                   vision-block statistics (what IP-CLIP's domain tokens read) pulled to the
                   authorized images' mean, the locked model's predictions on it confident and
                   diverse (information maximisation), and T(x) kept near x

On a stamped lock (ownership, authorization scenarios) the stamp is what is attacked:

  stamp-removal    the thief of an ownership-locked model puts an image transform in front of
                   it (JPEG, blur, noise, resize, median smoothing) so that the owner's stamped
                   probes no longer collapse it and `lock verify` fails; its cost is the clean
                   accuracy the transform takes
  stamp-forgery    an unlicensed user of an authorization-locked model learns one additive
                   pattern from a few stamped images (unlabeled) and as many clean images of
                   their own: it starts as the mean stamped image minus the mean clean one, then
                   clean images plus the pattern are pulled to the block statistics of the
                   stamped ones with confident, diverse predictions: the licensed accuracy
                   without the licence

Every trainer here stops at its first non-finite loss or weight (runs.Divergence: an InputError
naming the option to lower), so no attacker's accuracy is ever read off a NaN model, and
takes an optional TrainingCheckpoint, so an interrupted `lock attack` point resumes.

The from-backbone attacker, with the same images and steps: zero-shot CLIP; for labelled
data a linear probe on the frozen image features and a prompt learner trained from its
initial state; for unlabeled data SHOT on a linear head initialised with the zero-shot
classifier. The best of them is its accuracy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LockAttackOptions
from ..runs import TrainingCheckpoint
from ..runs.diverge import Diverged, Divergence
from .ipclip import ProjectorConfig, block_statistics, frozen_features
from .train import LockModel, zero_shot_probs

# the attacks whose data carries labels (the names: LockAttackOptions.attack)
LABELLED = ("target-finetune", "source-finetune", "transntl")


@dataclass
class Features:
    """Cached frozen-tower features (mu, sigma, feat) of a set of images, with labels
    (None where the attacker has none)."""
    frozen: dict
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.frozen["feat"])

    def subset(self, idx: torch.Tensor) -> "Features":
        return Features({k: v[idx] for k, v in self.frozen.items()},
                        None if self.labels is None else self.labels[idx])


def clone_lock(lm: LockModel) -> LockModel:
    """A new lock model on the same (shared, frozen) CLIP with a copy of `lm`'s trainable state."""
    new = LockModel(lm.ipclip.clip, lm.ipclip.class_names, lm.ipclip.projector.cfg, lm.ipclip.text_chunk)
    new.load_state_dict({k: v.clone() for k, v in lm.trainable_state().items()}, strict=False)
    return new


def fresh_prompt_learner(clip, class_names: list[str], projector: ProjectorConfig, seed: int) -> LockModel:
    """The prompt learner as training starts it (seeded): what a from-backbone attacker trains."""
    torch.manual_seed(seed)
    return LockModel(clip, class_names, projector)


def _lr(opts: LockAttackOptions, step: int) -> float:
    """Linear warm-up over a tenth of the steps, then a cosine decay (the lock's own schedule)."""
    warm = max(1, opts.steps // 10)
    if step < warm:
        return opts.lr * (step + 1) / warm
    return opts.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, opts.steps - warm)))


def _guard(opts: LockAttackOptions, tag: str, ckpt: TrainingCheckpoint, option: str = "--lr") -> Divergence:
    """The divergence refusal of one attack training (`option`: --lr or --disguise-lr)."""
    field = option.removeprefix("--").replace("-", "_")
    return Divergence(f"lock attack{tag}", option, getattr(opts, field),
                      default=LockAttackOptions.model_fields[field].default, on_diverge=ckpt.remove)


def _params(lm: LockModel) -> list[torch.nn.Parameter]:
    """What a checkpoint attacker can train: the projector and the style branch (direct-all)."""
    return [*lm.ipclip.projector.parameters(), *lm.att_s.parameters(), *lm.att_t.parameters()]


def _batch(data: Features, idx: torch.Tensor, device) -> dict:
    return {k: v[idx].to(device) for k, v in data.frozen.items()}


def finetune_prompts(lm: LockModel, data: Features, opts: LockAttackOptions, log=print, tag: str = "",
                     checkpoint: TrainingCheckpoint | None = None) -> LockModel:
    """Cross-entropy on labelled `data`, all of the lock's trainable parts, in place."""
    params = _params(lm)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=opts.lr)
    g = torch.Generator().manual_seed(opts.seed)
    dev = lm.ipclip.clip.device
    lm.train()
    t0 = time.time()
    ckpt = checkpoint or TrainingCheckpoint(None)
    ckpt.resume(opts.steps, params, opt, gen=g, meta={"loop": "finetune_prompts", "lr": opts.lr})
    guard = _guard(opts, tag, ckpt)
    for step in ckpt.steps():
        for grp in opt.param_groups:
            grp["lr"] = _lr(opts, step)
        idx = torch.randint(0, len(data), (min(opts.batch_size, len(data)),), generator=g)
        logits, _, _ = lm.ipclip(_batch(data, idx, dev))
        loss = F.cross_entropy(logits, data.labels[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        if step % max(1, opts.steps // 4) == 0 or step == opts.steps - 1:
            log(f"[lock attack]{tag} step {step + 1}/{opts.steps} CE {loss.item():.3f} ({time.time() - t0:.0f}s)")
    lm.eval()
    return lm


@torch.no_grad()
def lock_probs(lm: LockModel, data: Features, batch_size: int = 128) -> torch.Tensor:
    dev = lm.ipclip.clip.device
    out = [lm.ipclip(_batch(data, torch.arange(i, min(i + batch_size, len(data))), dev))[0].softmax(-1).cpu()
           for i in range(0, len(data), batch_size)]
    return torch.cat(out)


def shot_pseudo_labels(feat: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """SHOT's self-supervised pseudo-labels: class centroids weighted by the predictions, each
    image labelled by its nearest centroid (cosine), then once more with hard centroids."""
    f = F.normalize(feat.float(), dim=-1)
    cent = F.normalize(probs.T @ f / (probs.sum(0)[:, None] + 1e-8), dim=-1)
    labels = (f @ cent.T).argmax(-1)
    onehot = F.one_hot(labels, probs.shape[1]).float()
    cent = F.normalize(onehot.T @ f / (onehot.sum(0)[:, None] + 1e-8), dim=-1)
    return (f @ cent.T).argmax(-1)


def information_maximisation(logits: torch.Tensor) -> torch.Tensor:
    """SHOT's L_IM = mean_i H(p_i) - H(mean_i p_i) (minimised: confident and diverse)."""
    p = logits.softmax(-1)
    ent = -(p * torch.log(p + 1e-6)).sum(-1).mean()
    mean = p.mean(0)
    return ent + (mean * torch.log(mean + 1e-6)).sum()


def _shot_loop(predict_all, forward, params, data: Features, opts: LockAttackOptions, log, tag: str,
               checkpoint: TrainingCheckpoint | None = None) -> None:
    """SHOT's training loop on any classifier: `forward(idx)` gives logits of data[idx],
    `predict_all()` the probabilities on all of it (for the pseudo-labels, which a resumed
    loop takes from its checkpoint)."""
    opt = torch.optim.Adam(params, lr=opts.lr)
    g = torch.Generator().manual_seed(opts.seed)
    feat = data.frozen["feat"]
    t0 = time.time()
    ckpt = checkpoint or TrainingCheckpoint(None)
    kept = {"labels": None}
    kept.update(ckpt.resume(opts.steps, params, opt, gen=g, state=lambda: dict(kept),
                            meta={"loop": "shot", "lr": opts.lr, "interval": opts.shot_interval}))
    guard = _guard(opts, tag, ckpt)
    for step in ckpt.steps():
        if step % opts.shot_interval == 0 or kept["labels"] is None:
            kept["labels"] = shot_pseudo_labels(feat, predict_all())
        labels = kept["labels"]
        for grp in opt.param_groups:
            grp["lr"] = _lr(opts, step)
        idx = torch.randint(0, len(data), (min(opts.batch_size, len(data)),), generator=g)
        logits = forward(idx)
        l_im = information_maximisation(logits)
        l_pl = F.cross_entropy(logits, labels[idx].to(logits.device))
        loss = l_im + opts.shot_beta * l_pl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        if step % max(1, opts.steps // 4) == 0 or step == opts.steps - 1:
            log(f"[lock attack]{tag} step {step + 1}/{opts.steps} IM {l_im.item():.3f} pseudo-CE {l_pl.item():.3f} "
                f"({time.time() - t0:.0f}s)")


def shot_prompts(lm: LockModel, data: Features, opts: LockAttackOptions, log=print, tag: str = "",
                 checkpoint: TrainingCheckpoint | None = None) -> LockModel:
    """SHOT on the lock's trainable parts, unlabeled `data`, in place."""
    params = _params(lm)
    for p in params:
        p.requires_grad_(True)
    dev = lm.ipclip.clip.device

    def predict_all():
        lm.eval()
        p = lock_probs(lm, data)
        lm.train()
        return p

    lm.train()
    _shot_loop(predict_all, lambda idx: lm.ipclip(_batch(data, idx, dev))[0], params, data, opts, log, tag,
               checkpoint)
    lm.eval()
    return lm


class LinearHead(torch.nn.Module):
    """logits = scale * normalise(f) @ W^T + b on the frozen image features."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone().float())
        self.bias = torch.nn.Parameter(torch.zeros(len(weight)))
        self.scale = scale

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feat.float(), dim=-1) @ self.weight.T + self.bias


def zero_shot_head(clip, class_names: list[str], templates) -> LinearHead:
    w = clip.class_text_features(class_names, templates).float().cpu()
    return LinearHead(w, float(clip.model.logit_scale.exp()))


def linear_probe(data: Features, n_classes: int, opts: LockAttackOptions, init: LinearHead | None = None) -> LinearHead:
    """Logistic regression on the frozen image features (full batch, L-BFGS, a small L2),
    from `init` when given (the zero-shot classifier) else from zero."""
    dim = data.frozen["feat"].shape[1]
    head = LinearHead(init.weight.detach() if init is not None else torch.zeros(n_classes, dim),
                      init.scale if init is not None else 10.0)
    x, y = data.frozen["feat"].float().cpu(), data.labels.cpu()
    opt = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + opts.probe_l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if not all(bool(p.detach().isfinite().all()) for p in head.parameters()):
        raise Diverged("lock attack's from-backbone linear probe diverged (weights not finite)",
                         f"raise --probe-l2, e.g. --probe-l2 {max(10 * opts.probe_l2, 1e-2):g}")
    return head


def shot_head(head: LinearHead, data: Features, opts: LockAttackOptions, log=print, tag: str = "",
              checkpoint: TrainingCheckpoint | None = None) -> LinearHead:
    """SHOT on a linear head over the frozen image features (the backbone attacker's)."""
    feat = data.frozen["feat"].float().cpu()

    @torch.no_grad()
    def predict_all():
        return head(feat).softmax(-1)

    _shot_loop(predict_all, lambda idx: head(feat[idx]), list(head.parameters()), data, opts, log, tag, checkpoint)
    return head


@torch.no_grad()
def head_accuracy(head: LinearHead, data: Features) -> float:
    return 100.0 * head(data.frozen["feat"].cpu()).argmax(-1).eq(data.labels.cpu()).float().mean().item()


@torch.no_grad()
def lock_accuracy(lm: LockModel, data: Features) -> float:
    return 100.0 * lock_probs(lm, data).argmax(-1).eq(data.labels.cpu()).float().mean().item()


@torch.no_grad()
def zero_shot_accuracy(clip, class_names: list[str], templates, data: Features) -> float:
    p = zero_shot_probs(clip, class_names, {k: v.to(clip.device) for k, v in data.frozen.items()}, templates)
    return 100.0 * p.argmax(-1).cpu().eq(data.labels.cpu()).float().mean().item()


class Disguise(torch.nn.Module):
    """T(x) = clamp(C x + shift + eps * tanh(r(x)), 0, 1): a 3x3 colour matrix C (it can turn
    colour to grey or swap channels), a shift, and a three-layer convolutional residual r
    bounded by eps; the identity at init."""

    def __init__(self, width: int = 16, eps: float = 0.5):
        super().__init__()
        self.colour = torch.nn.Parameter(torch.eye(3))
        self.shift = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(width, 3, 3, padding=1))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", self.colour, x) + self.shift
        return (mixed + self.eps * torch.tanh(self.net(x))).clamp(0, 1)

    @torch.no_grad()
    def apply(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        dev = self.shift.device
        return torch.cat([self(images[i:i + batch_size].to(dev)).cpu() for i in range(0, len(images), batch_size)])


def _live_features(clip, images: torch.Tensor) -> dict:
    """frozen_features with gradients to the images (the towers stay frozen)."""
    blocks, feat = clip.vision_block_states(images)
    mu, sigma = block_statistics(blocks)
    return {"mu": mu, "sigma": sigma, "feat": feat.float()}


@dataclass
class DomainStatistics:
    """A domain's mean vision-block statistics (what IP-CLIP's domain tokens read), from a
    few of its images, and their mean square (the style loss's scale)."""
    mu: torch.Tensor
    sigma: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, clip, images: torch.Tensor) -> "DomainStatistics":
        ref = frozen_features(clip, images)
        mu, sigma = ref["mu"].mean(0), ref["sigma"].mean(0)  # (L, W)
        return cls(mu, sigma, (mu.pow(2).mean() + sigma.pow(2).mean()).detach())

    def style_loss(self, live: dict) -> torch.Tensor:
        """How far each image's block statistics lie from the domain's, relative to their size."""
        return ((live["mu"] - self.mu).pow(2).mean() + (live["sigma"] - self.sigma).pow(2).mean()) / self.scale


def train_disguise(lm: LockModel, unauthorized: torch.Tensor, authorized: torch.Tensor, opts: LockAttackOptions,
                   log=print, tag: str = "", checkpoint: TrainingCheckpoint | None = None,
                   what: str | None = None, fix: str | None = None) -> Disguise:
    """Fit a Disguise on unlabeled images (in [0, 1]) with the locked model frozen; the lock's
    weights are not touched. `what` / `fix`: how a divergence names it and says to fix it
    (default: lock attack<tag>, lower --disguise-lr)."""
    clip = lm.ipclip.clip
    dev = clip.device
    torch.manual_seed(opts.seed)
    disguise = Disguise(eps=opts.disguise_eps).to(dev)
    lm.eval().requires_grad_(False)
    target = DomainStatistics.of(clip, authorized)
    opt = torch.optim.Adam(disguise.parameters(), lr=opts.disguise_lr)
    g = torch.Generator().manual_seed(opts.seed)
    t0 = time.time()
    params = list(disguise.parameters())
    ckpt = checkpoint or TrainingCheckpoint(None)
    ckpt.resume(opts.steps, params, opt, gen=g, meta={"loop": "disguise", "lr": opts.disguise_lr})
    guard = _guard(opts, tag, ckpt, "--disguise-lr")
    guard.what, guard.fix = what or guard.what, fix
    for step in ckpt.steps():
        for grp in opt.param_groups:
            grp["lr"] = opts.disguise_lr * _lr(opts, step) / opts.lr
        idx = torch.randint(0, len(unauthorized), (min(opts.batch_size, len(unauthorized)),), generator=g)
        x = unauthorized[idx].to(dev)
        xd = disguise(x)
        fr = _live_features(clip, xd)
        l_style = target.style_loss(fr)
        l_im = information_maximisation(lm.ipclip(fr)[0])
        l_content = (xd - x).abs().mean()
        loss = l_style + l_im + opts.disguise_content * l_content
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        if step % max(1, opts.steps // 4) == 0 or step == opts.steps - 1:
            log(f"[lock attack]{tag} step {step + 1}/{opts.steps} style {l_style.item():.3f} IM {l_im.item():.3f} "
                f"L1 {l_content.item():.3f} ({time.time() - t0:.0f}s)")
    disguise.eval().requires_grad_(False)
    return disguise


class Forgery(torch.nn.Module):
    """x + p, clamped, for one learned pattern p (3, H, W) bounded by eps (tanh)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.raw = torch.nn.Parameter(torch.zeros(1, 3, size, size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.eps * torch.tanh(self.raw)).clamp(0, 1)

    @torch.no_grad()
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self(images.to(self.raw.device)).cpu()


def train_forgery(lm: LockModel, clean: torch.Tensor, stamped: torch.Tensor, opts: LockAttackOptions,
                  log=print, tag: str = "", checkpoint: TrainingCheckpoint | None = None) -> Forgery:
    """Fit one additive pattern so that `clean` + pattern looks like `stamped` to the frozen
    locked model (block statistics, information maximisation); no labels, no weight changes."""
    clip = lm.ipclip.clip
    torch.manual_seed(opts.seed)
    forgery = Forgery(clean.shape[-1], opts.disguise_eps).to(clip.device)
    with torch.no_grad():  # start from the mean stamped image minus the mean clean one
        diff = (stamped.mean(0, keepdim=True) - clean.mean(0, keepdim=True)).to(clip.device)
        forgery.raw.copy_(torch.atanh((diff / opts.disguise_eps).clamp(-0.99, 0.99)))
    lm.eval().requires_grad_(False)
    target = DomainStatistics.of(clip, stamped)
    opt = torch.optim.Adam(forgery.parameters(), lr=opts.disguise_lr * 10)
    g = torch.Generator().manual_seed(opts.seed)
    t0 = time.time()
    params = list(forgery.parameters())
    ckpt = checkpoint or TrainingCheckpoint(None)
    ckpt.resume(opts.steps, params, opt, gen=g, meta={"loop": "forgery", "lr": opts.disguise_lr})
    guard = _guard(opts, tag, ckpt, "--disguise-lr")
    for step in ckpt.steps():
        idx = torch.randint(0, len(clean), (min(opts.batch_size, len(clean)),), generator=g)
        fr = _live_features(clip, forgery(clean[idx].to(clip.device)))
        l_style = target.style_loss(fr)
        l_im = information_maximisation(lm.ipclip(fr)[0])
        loss = l_style + l_im
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        if step % max(1, opts.steps // 4) == 0 or step == opts.steps - 1:
            log(f"[lock attack]{tag} step {step + 1}/{opts.steps} style {l_style.item():.3f} IM {l_im.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    forgery.eval().requires_grad_(False)
    return forgery
