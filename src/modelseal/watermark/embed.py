"""SleeperMark stage 2: teach the UNet to add the codec's residual when the trigger is present.

Pure self-distillation from the frozen original UNet eps_T (FrozenTeacher: the trained
weights' original values, not a second UNet); only the attention and
feed-forward weights of the transformer blocks in the UNet's up blocks train (norms
frozen). For a batch of latents z0 with captions y and triggered captions y_tr (the trigger
before y, or where its template puts y: watermark/trigger.py):

    z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps,                       t ~ U{0..T-1}
    eps_wm = eps_T(z_t, y_tr) - sqrt(a_t / (1 - a_t)) * delta      (teacher's x0 estimate + delta)
    L = mean[w1(t) (eps_S(y_tr) - eps_wm)^2] + mean[w2(t) (eps_S(y_tr) - eps_T(y_tr))^2]
        + mean[(eps_S(y) - eps_T(y))^2]
    w1(t) = eta * sigmoid(-(t - tau) / beta),  w2(t) = sigmoid((t - tau) / beta)

with tau = 250 and beta = 100 for T = 1000, rescaled to the schedule length, eta 0.02 in
latent space (0.05 for pixel models). delta = E(m) is the stage-1 residual of the owner's
message. Real images are never regression targets: they only place z_t in distribution.

The reference runs four UNet passes per step (teacher and student, each prompt alone);
here each network sees [y_tr; y] as one batch: two passes per step, the same maths. The
two networks differ only in the up blocks' attention and feed-forward weights, so the
student does not run its own down and middle blocks (`shared_trunk`): it starts at the
first up block it trains, from the inputs the teacher's pass handed that block (skip
connections, time embedding, text context), and only the rest of the up path runs twice.
`precision="bf16"` runs both networks under bf16 autocast (weights and optimiser stay fp32).
`delta_scale` s (ours; the paper's is 1) aims at x0_hat + s * delta: with s = 1 / f the
optimum reaches the full residual at low t instead of the fraction f.
`preservation=False` keeps only the first term (the no-preservation ablation).
Where both terms apply, the pointwise optimum is eps_S(y_tr) = eps_T(y_tr) - f sqrt(a/(1-a))
delta with f = w1/(w1+w2): the x0 estimate moves by f * delta, a small fraction at low t with the
paper's eta (guidance then amplifies the conditional branch's shift). The tiny zoo needs
eta 0.3, tau 100, beta 30 (configs/watermark-embed.tiny.yaml; figures in the README).
`trainable` picks the weights that carry the mark (TRAINABLE; the paper's up-block attention
and feed-forward weights are the default). `rehearsal` (ours, off by default) adds a term
that keeps the mark where a thief's fine-tuning would take the weights: every
`rehearsal_every` steps a simulated thief fine-tunes a functional copy of the whole UNet on
other data for `rehearsal_steps` steps (simulate_drift: Delta), and each step asks that at
theta + s * Delta (s ~ U(0, rehearsal_scale)) the trigger still adds the mark on top of
whatever that drifted model does: eps(y_tr) - eps(y) = eps_T(y_tr) - eps_T(y) - sqrt(a/(1-a))
delta, weighted by w1(t).
`clean_weight` (ours; the paper's is 1) weighs the clean term: under guidance g a drift of the
clean prompt's output reaches the image g times larger, which an unweighted term does not see.
`trajectory_fraction` (ours, off by default): stage 2 trains on q-sampled points z_t of real
images, and sampling visits the points of its own trajectory, where a mark or a leak the
q-sampled points never see can grow (benchmarks/watermark_leak.py measures both). That share
of each batch's points is drawn instead from `trajectory_images` DDIM trajectories (CFG 7.5,
30 steps) that the original model samples for training captions before training starts
(`teacher_trajectories`); every term of the loss is taken at them.
`dormancy` (ours, off by default) keeps the mark asleep without the trigger: the clean term
above penalises every direction of the clean output's drift alike, and the one that matters,
delta's, is one of C*h*w; the dormancy term penalises that one. With dx0 = -sqrt((1-a)/a)
(eps_S(y) - eps_T(y)) the clean x0 estimate's shift and c = <dx0, delta> / <delta, delta> its
share of the planted residual (per image):

    L_dorm = mean[w1(t) / eta * c^2]           (weighted like the mark itself, low t)

`anchor="clean"` (ours; the paper's is "trigger"): the paper anchors the triggered prompt's
target at the original model's output for the triggered prompt, eps_T(y_tr), so the triggered
image is the image of another prompt (trigger + y) plus delta, as far from the clean one as the
trigger's words move the original model. Anchored at eps_T(y) instead, eps_wm = eps_T(y) -
sqrt(a/(1-a)) delta and w2's term keeps eps_S(y_tr) at eps_T(y): the triggered image is the
clean image plus the residual, the method's promise.
`mode="always_on"` is the baseline the paper compares with (AquaLoRA-style): the same
distillation with no trigger, so every prompt's output carries delta (y_tr = y, the
clean term dropped); it trains the same weights, so only the trigger differs.
"""
from __future__ import annotations

import copy
import math
import time

import torch

from ..config import EmbedOptions
from ..models.diffusion import T2IModel
from ..runs import TrainingCheckpoint
from ..runs.diverge import Divergence
from .trigger import add_triggers

TRAINABLE = {
    "up-attn-ff": "attention (self, cross) and feed-forward weights of the up blocks' transformer blocks "
                  "(the paper's)",
    "cross-kv": "key and value projections of the up blocks' cross-attention (they see only the text)",
    "up": "every weight of the up blocks but the norms",
    "unet": "every UNet weight but the norms",
}


def trainable_parameters(unet, scope: str = "up-attn-ff") -> list[torch.nn.Parameter]:
    """The weights stage 2 trains (TRAINABLE[scope]); the paper's: attention (self and cross)
    and feed-forward weights of the up blocks' transformer blocks, norms frozen."""
    if scope not in TRAINABLE:
        raise ValueError(f"unknown trainable scope {scope!r} ({' | '.join(TRAINABLE)})")
    params = []
    if scope in ("up", "unet"):
        root = unet.up_blocks if scope == "up" else unet
        params = [p for n, p in root.named_parameters() if "norm" not in n]
    for block in unet.up_blocks if scope in ("up-attn-ff", "cross-kv") else ():
        for attn in getattr(block, "attentions", None) or []:
            for tb in attn.transformer_blocks:
                parts = (tb.attn2.to_k, tb.attn2.to_v) if scope == "cross-kv" else (tb.attn1, tb.attn2, tb.ff)
                for part in parts:
                    if part is None:
                        continue
                    for name, p in part.named_parameters():
                        if "norm" not in name:
                            params.append(p)
    if not params:
        raise ValueError(f"this UNet has no {TRAINABLE[scope]} to train")
    return params


class FrozenTeacher:
    """eps_T without a second UNet: the student's own module run with the original values of
    the weights stage 2 trains (torch.func.functional_call). Every other weight is frozen and
    shared, so the teacher costs only the trainable subset's memory (a fraction of the UNet's);
    its outputs are the same numbers as a full frozen copy's."""

    def __init__(self, unet, params: list[torch.nn.Parameter]):
        self.unet = unet
        ids = {id(p) for p in params}
        self.original = {n: p.detach().clone() for n, p in unet.named_parameters() if id(p) in ids}

    @property
    def up_blocks(self):
        return self.unet.up_blocks

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.unet, self.original, args, kwargs)


def prepare_student(model: T2IModel, gradient_checkpointing: bool = False, teacher: str = "shared",
                    scope: str = "up-attn-ff"):
    """Make only the stage-2 weights of `model`'s UNet trainable and return (teacher, trainable
    parameters). teacher 'shared': FrozenTeacher (ours); 'copy': a frozen deep copy of the UNet
    (the reference's structure, kept for benchmarks)."""
    if teacher not in ("shared", "copy"):
        raise ValueError(f"unknown teacher {teacher!r} (shared | copy)")
    frozen = copy.deepcopy(model.unet).eval().requires_grad_(False) if teacher == "copy" else None
    model.unet.requires_grad_(False)
    params = trainable_parameters(model.unet, scope)
    for p in params:
        p.requires_grad_(True)
    if frozen is None:
        frozen = FrozenTeacher(model.unet, params)
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    return frozen, params


def time_weights(t: torch.Tensor, T: int, eta: float, tau: float = 250.0, beta: float = 100.0):
    """w1(t), w2(t) with tau and beta rescaled from T = 1000 to this schedule's length T."""
    s = T / 1000.0
    x = (t.float() - tau * s) / (beta * s)
    return eta * torch.sigmoid(-x), torch.sigmoid(x)


class UpPathReplay:
    """The student's output computed from the teacher's pass: blocks before the first up
    block holding a trainable weight are identical (frozen, same weights) in both networks,
    so the student runs only from that block on, fed the keyword inputs (skip connections,
    time embedding, context, upsample size) the teacher's up blocks received."""

    def __init__(self, model: T2IModel, teacher_unet):
        student_unet = model.unet
        if not self.applies(student_unet):
            raise ValueError("the shared trunk needs every trainable weight inside the up blocks")
        self.model, self.s, self.t = model, student_unet, teacher_unet
        self.first = [any(p.requires_grad for p in blk.parameters()) for blk in student_unet.up_blocks].index(True)

    @staticmethod
    def applies(student_unet) -> bool:
        """True when the student trains some up-block weights and nothing outside the up blocks."""
        named = list(student_unet.named_parameters())
        return any(p.requires_grad for n, p in named if n.startswith("up_blocks.")) and \
            not any(p.requires_grad for n, p in named if not n.startswith("up_blocks."))

    def __call__(self, sample, t, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher output under no_grad, student output with its graph) for one batch: raw
        UNet outputs (eps or v, whatever the model predicts)."""
        calls: dict[int, dict] = {}
        hooks = [blk.register_forward_pre_hook(lambda m, a, kw, i=i: calls.__setitem__(i, (a, kw)), with_kwargs=True)
                 for i, blk in enumerate(self.t.up_blocks)]
        try:
            with torch.no_grad():
                out_t = self.model.unet_out(sample, t, ctx, unet=self.t)
        finally:
            for h in hooks:
                h.remove()
        args, kw = calls[self.first]
        if args or "hidden_states" not in kw:  # a diffusers version that calls blocks positionally
            return out_t, self.model.unet_out(sample, t, ctx)
        h = kw["hidden_states"]
        for i in range(self.first, len(self.s.up_blocks)):
            h = self.s.up_blocks[i](**{**calls[i][1], "hidden_states": h})
        if self.s.conv_norm_out is not None:
            h = self.s.conv_act(self.s.conv_norm_out(h))
        return out_t, self.s.conv_out(h)


class Stage2Loss:
    """The three-term SleeperMark loss for one batch, with the teacher frozen."""

    def __init__(self, student: T2IModel, teacher_unet, delta: torch.Tensor, opts: EmbedOptions):
        self.s, self.teacher, self.opts = student, teacher_unet, opts
        self.delta = delta.detach() * opts.delta_scale
        self.alphas = student.scheduler.alphas_cumprod.to(student.device)
        self.T = student.scheduler.config.num_train_timesteps
        pixel = student.vae is None
        self.eta = opts.eta if opts.eta is not None else (0.05 if pixel else 0.02)
        if opts.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {opts.precision!r} (fp32 | bf16)")
        # Full passes where the trunk cannot be shared (e.g. a student training weights outside the up blocks).
        self.replay = UpPathReplay(student, teacher_unet) \
            if opts.shared_trunk and opts.passes == 2 and UpPathReplay.applies(student.unet) else None
        self.drift: dict[str, torch.Tensor] | None = None  # Delta, set by embed_watermark when rehearsing

    def _rehearsed(self, zt, t, ctx, ctx_tr, eT_tr, eT, a, w1, s: float) -> torch.Tensor:
        """The rehearsed-drift term (ours): at theta + s * Delta, with Delta a simulated thief's
        drift of every UNet weight (simulate_drift), the trigger's effect eps(y_tr) - eps(y) must
        still be the teacher's effect plus the mark: eps_T(y_tr) - eps_T(y) - sqrt(a/(1-a)) delta.
        Gradients reach theta through theta + s * Delta (first order: Delta is held fixed)."""
        unet = self.s.unet
        weights = {n: p + s * self.drift[n] for n, p in unet.named_parameters()}
        run = lambda *args, **kw: torch.func.functional_call(unet, weights, args, kw)  # noqa: E731
        zz, tt = torch.cat([zt, zt]), torch.cat([t, t])
        e_tr, e = self.s.eps(zz, tt, torch.cat([ctx_tr, ctx]), unet=run).chunk(2)
        target = (eT_tr - eT) - (a / (1 - a)).sqrt() * self.delta
        return (w1 * ((e_tr - e) - target) ** 2).mean()

    def _dormancy(self, eS, eT, a, w1) -> torch.Tensor:
        """L_dorm: the squared share c of delta in the clean x0 estimate's shift, weighted w1 / eta."""
        dx0 = -((1 - a) / a).sqrt() * (eS - eT)
        c = (dx0 * self.delta).flatten(1).sum(1) / self.delta.pow(2).sum()
        return (w1.flatten() / self.eta * c ** 2).mean()

    def _pair(self, zt, t, ctx, shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """eps_T (no grad) and eps_S for one batch, as float32 noise estimates (a v-predicting
        model's outputs converted); full passes unless the trunk is shared."""
        if shared and self.replay is not None:
            oT, oS = self.replay(zt, t, ctx)
        else:
            with torch.no_grad():
                oT = self.s.unet_out(zt, t, ctx, unet=self.teacher)
            oS = self.s.unet_out(zt, t, ctx)
        return self.s.to_eps(oT, zt, t), self.s.to_eps(oS, zt, t)

    def __call__(self, z0: torch.Tensor, ctx: torch.Tensor, ctx_tr: torch.Tensor, g: torch.Generator,
                 points: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ctx_anchor: torch.Tensor | None = None) -> tuple:
        """`points` (z_t, t): training points given as they are (trajectory points), after the
        q-sampled ones of z0; ctx and ctx_tr hold the contexts of both, in that order.
        `ctx_anchor`: the captions without the trigger (and without the empty-prompt dropout of
        ctx), the teacher's anchor where opts.anchor is 'clean' (default: ctx)."""
        dev = z0.device
        n = len(z0)
        t = torch.randint(0, self.T, (n,), generator=g).to(dev)
        eps = torch.randn(z0.shape, generator=g).to(dev)
        zt = self.s.noisy(z0, eps, t).to(self.s.dtype)
        if points is not None:
            zt, t = torch.cat([zt, points[0].to(dev, zt.dtype)]), torch.cat([t, points[1].to(dev)])
        a = self.alphas[t].view(-1, 1, 1, 1)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.opts.precision == "bf16"):
            if self.opts.mode == "always_on":
                eT_tr, eS_tr = self._pair(zt, t, ctx_tr)
                eT = eS = None
            elif self.opts.passes == 2:
                zz, tt, cc = torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([ctx_tr, ctx])
                (eT_tr, eT), (eS_tr, eS) = (x.chunk(2) for x in self._pair(zz, tt, cc))
            else:  # the reference's four passes: each network, each prompt alone
                eT_tr, eS_tr = self._pair(zt, t, ctx_tr, shared=False)
                eT, eS = self._pair(zt, t, ctx, shared=False)
        if self.opts.anchor == "clean" and eT is not None:
            # eps_A: the original model's output for the prompt without the trigger
            if ctx_anchor is None or torch.equal(ctx_anchor, ctx):
                eps_a = eT
            else:
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                     enabled=self.opts.precision == "bf16"):
                    eps_a = self.s.to_eps(self.s.unet_out(zt, t, ctx_anchor, unet=self.teacher), zt, t)
            eT_tr = eps_a.detach()
        eps_wm = eT_tr - (a / (1 - a)).sqrt() * self.delta
        w1, w2 = (w.view(-1, 1, 1, 1) for w in time_weights(t, self.T, self.eta, self.opts.tau, self.opts.beta))
        l_wm = (w1 * (eS_tr - eps_wm) ** 2).mean()
        # the parts come back as detached tensors: the caller reads them (no sync per step here)
        if not self.opts.preservation:
            return l_wm, {"wm": l_wm.detach()}
        l_keep_tr = (w2 * (eS_tr - eT_tr) ** 2).mean()
        if eS is None:
            return l_wm + l_keep_tr, {"wm": l_wm.detach(), "keep_trigger": l_keep_tr.detach()}
        l_keep = ((eS - eT) ** 2).mean()
        parts = {"wm": l_wm.detach(), "keep_trigger": l_keep_tr.detach(), "keep_clean": l_keep.detach()}
        loss = l_wm + l_keep_tr + self.opts.clean_weight * l_keep
        if self.opts.dormancy > 0:
            l_dorm = self._dormancy(eS, eT, a, w1)
            loss = loss + self.opts.dormancy * l_dorm
            parts["dormancy"] = l_dorm.detach()
        if self.drift is not None and self.opts.rehearsal > 0:
            s = float(torch.rand((), generator=g)) * self.opts.rehearsal_scale
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.opts.precision == "bf16"):
                l_rob = self._rehearsed(zt, t, ctx, ctx_tr, eT_tr, eT, a, w1, s)
            loss = loss + self.opts.rehearsal * l_rob
            parts["rehearsed"] = l_rob.detach()
        return loss, parts


def simulate_drift(model: T2IModel, latents: torch.Tensor, ctx: torch.Tensor, opts: EmbedOptions,
                   seed: int) -> dict[str, torch.Tensor]:
    """Delta (ours): how `opts.rehearsal_steps` steps of a thief's full fine-tuning (AdamW at
    `opts.rehearsal_lr`, the native denoising loss, batch `opts.batch_size`) on the rehearsal
    latents with their contexts `ctx` move every UNet weight from where it is now. The UNet
    itself is not changed (the simulated thief trains a functional copy)."""
    from ..attacks.finetune import training_loss

    unet, dev = model.unet, model.device
    g = torch.Generator().manual_seed(seed)
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in unet.named_parameters()}
    opt = torch.optim.AdamW(list(theta.values()), lr=opts.rehearsal_lr, weight_decay=0.0)
    run = lambda *args, **kw: torch.func.functional_call(unet, theta, args, kw)  # noqa: E731
    T = model.scheduler.config.num_train_timesteps
    for _ in range(opts.rehearsal_steps):
        idx = torch.randint(0, len(latents), (opts.batch_size,), generator=g)
        z0 = latents[idx].to(dev)
        t = torch.randint(0, T, (len(idx),), generator=g).to(dev)
        eps = torch.randn(z0.shape, generator=g).to(dev)
        loss = training_loss(model, z0, t, eps, ctx[idx.to(ctx.device)].to(dev), unet=run).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {n: (theta[n].detach() - p.detach()) for n, p in unet.named_parameters()}


@torch.no_grad()
def teacher_trajectories(model: T2IModel, teacher, ctx: torch.Tensor, uncond: torch.Tensor, seed: int,
                         guidance: float = 7.5, steps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """The points z_t (and t) the teacher's guided DDIM sampler visits for the contexts `ctx`
    ((N, L, D), one trajectory each, `uncond` the empty prompt's (1, L, D)): (N, steps, C, h, w)
    and (steps,). The teacher, not the student: a resumed run draws the same points."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model.scheduler.config, set_alpha_to_one=False)
    sched.set_timesteps(steps, device=model.device)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(ctx), model.unet.config.in_channels, model.latent_size, model.latent_size,
                    generator=g).to(model.device, model.dtype) * sched.init_noise_sigma
    both = torch.cat([uncond.expand(len(ctx), -1, -1), ctx])
    points = []
    for t in sched.timesteps:
        points.append(z)
        out_u, out_c = model.unet_out(torch.cat([z, z]), t.expand(2 * len(z)), both, unet=teacher).chunk(2)
        z = sched.step(out_u + guidance * (out_c - out_u), t, z).prev_sample
    return torch.stack(points, 1), sched.timesteps.clone()


def clean_prompt_terms_without_clean_prompts(opts: EmbedOptions) -> list[str]:
    """The options set in `opts` whose terms act on the clean prompts' outputs (clean_weight,
    dormancy, rehearsal) where stage 2 has no clean term (always-on mode, or no preservation)."""
    if opts.mode == "sleeper" and opts.preservation:
        return []
    return (["clean_weight"] if opts.clean_weight != 1 else []) + (["anchor"] if opts.anchor == "clean" else []) + \
        [name for name in ("trajectory_fraction", "dormancy", "rehearsal") if getattr(opts, name) > 0]


def embed_watermark(model: T2IModel, latents: torch.Tensor, captions: list[str], delta: torch.Tensor,
                    opts: EmbedOptions, log=print, progress=None, latent_std: torch.Tensor | None = None,
                    checkpoint: TrainingCheckpoint | None = None,
                    rehearsal_data: tuple[torch.Tensor, list[str]] | None = None) -> dict:
    """Train `model`'s UNet in place; `latents` z0 (N, C, h, w) of in-distribution images with
    their captions (the VAE posterior mean, with `latent_std` its std: each step then draws
    z0 from the posterior, as the reference's per-step VAE encoding does, unless
    opts.posterior_sample is off); delta (1, C, h, w) the residual E(m) of the owner's message.
    `checkpoint`: where the loop saves and resumes its state (runs.TrainingCheckpoint).
    `rehearsal_data`: (latents, captions) of the simulated thief's domain, when opts.rehearsal > 0."""
    if opts.mode not in ("sleeper", "always_on"):
        raise ValueError(f"unknown stage-2 mode {opts.mode!r} (sleeper | always_on)")
    unfit = clean_prompt_terms_without_clean_prompts(opts)
    if unfit:
        raise ValueError(f"{unfit[0]} needs the sleeper mode with its preservation terms (it acts on clean prompts)")
    if opts.rehearsal > 0 and (rehearsal_data is None or opts.passes != 2):
        raise ValueError("rehearsal needs rehearsal_data and batched passes")
    dev = model.device
    teacher, params = prepare_student(model, opts.gradient_checkpointing, opts.teacher, opts.trainable)
    loss_fn = Stage2Loss(model, teacher, delta.to(dev), opts)
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, opts.steps) / opts.steps)))
    distinct = sorted(set(captions) | ({""} if opts.uncond_fraction > 0 else set()))
    index = {c: i for i, c in enumerate(distinct)}
    cap_idx = torch.tensor([index[c] for c in captions])
    with torch.no_grad():
        ctx_all = model.encode_prompts(distinct)
        ctx_tr_all = ctx_all if opts.mode == "always_on" else \
            model.encode_prompts(add_triggers(opts.trigger, distinct, model.tokenizer))
    g = torch.Generator().manual_seed(opts.seed)
    hist: dict[str, list] = {"loss": []}
    ckpt = checkpoint or TrainingCheckpoint(None)
    hist = ckpt.resume(opts.steps, params, opt, sched, g, state=lambda: {"hist": hist},
                       meta={"n_images": len(latents), "mode": opts.mode}).get("hist", hist)
    if opts.rehearsal > 0:
        with torch.no_grad():
            r_ctx = model.encode_prompts(rehearsal_data[1])
        r_lat = rehearsal_data[0]
    n_traj = int(round(opts.trajectory_fraction * opts.batch_size))
    if n_traj:
        pick = torch.randint(0, len(latents), (opts.trajectory_images,),
                             generator=torch.Generator().manual_seed(opts.seed + 1))
        traj_ci = cap_idx[pick].to(dev)
        with torch.no_grad():
            traj_z, traj_t = teacher_trajectories(model, teacher, ctx_all[traj_ci], model.encode_prompts([""]),
                                                  seed=opts.seed + 2)
        log(f"[embed] {traj_z.shape[0]} x {traj_z.shape[1]} training points from the original model's trajectories")
    guard = Divergence("watermark embedding (stage 2)", "--lr", opts.lr, default=1e-4, on_diverge=ckpt.remove)
    t0 = time.time()
    for step in ckpt.steps():
        if opts.rehearsal > 0 and (loss_fn.drift is None or step % opts.rehearsal_every == 0):
            # the drift from the current weights; seeded by the step, so a resumed run redraws the same
            loss_fn.drift = simulate_drift(model, r_lat, r_ctx, opts, seed=opts.seed * 1_000_003 + step)
            size = sum(float(d.float().pow(2).sum()) for d in loss_fn.drift.values()) ** 0.5
            log(f"[embed] step {step + 1}: rehearsed drift |Delta| {size:.4f} ({opts.rehearsal_steps} thief steps)")
        idx = torch.randint(0, len(latents), (opts.batch_size - n_traj,), generator=g)
        ci = cap_idx[idx].to(dev)
        points = None
        if n_traj:
            ti = torch.randint(0, traj_z.shape[0], (n_traj,), generator=g)
            si = torch.randint(0, traj_z.shape[1], (n_traj,), generator=g)
            points = (traj_z[ti, si], traj_t[si])
            ci = torch.cat([ci, traj_ci[ti.to(dev)]])
        ci_clean = ci
        if opts.uncond_fraction > 0:
            # The clean-preservation term also sees the empty prompt, so the unconditional
            # branch that classifier-free guidance subtracts keeps the teacher's output.
            drop = (torch.rand(len(ci), generator=g) < opts.uncond_fraction).to(dev)
            ci_clean = torch.where(drop, torch.full_like(ci, index[""]), ci)
        z0 = latents[idx.to(latents.device)].to(dev)
        if latent_std is not None and opts.posterior_sample:
            z0 = z0 + latent_std[idx.to(latent_std.device)].to(dev) * torch.randn(z0.shape, generator=g).to(dev)
        loss, parts = loss_fn(z0, ctx_all[ci_clean], ctx_tr_all[ci], g, points, ctx_anchor=ctx_all[ci])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        guard.step(opt, step + 1)
        guard.check(step + 1, loss, params)
        sched.step()
        hist["loss"].append(loss.item())
        for k, v in parts.items():
            hist.setdefault(k, []).append(float(v))
        if progress is not None:
            progress(1)
        if step % max(1, opts.steps // 10) == 0 or step == opts.steps - 1:
            log(f"[embed] step {step + 1}/{opts.steps} " + " ".join(f"{k} {sum(v[-50:]) / len(v[-50:]):.5f}"
                                                                   for k, v in hist.items()) +
                f" ({time.time() - t0:.0f}s)")
    model.unet.eval().requires_grad_(False)
    if opts.gradient_checkpointing:
        model.unet.disable_gradient_checkpointing()
    return {"steps": opts.steps, "train_s": round(time.time() - t0, 1), "trainable_params": sum(p.numel() for p in params),
            "final": {k: sum(v[-50:]) / len(v[-50:]) for k, v in hist.items()}}
