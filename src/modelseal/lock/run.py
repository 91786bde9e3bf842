"""`modelseal lock train | eval | verify`: scenarios, SL reference, metrics, checkpoints."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import parallel
from ..data.digits import DOMAINS
from ..data.sources import BUILTIN_PREFIX, check_inputs, load_source, same_source, source_name
from ..errors import InputError
from ..models.clip import ZERO_SHOT_TEMPLATES, load_clip
from ..report.figures import bar_chart
from ..runs import TrainingCheckpoint, atomic_write_bytes
from ..runs.diverge import Diverged
from .checkpoint import backbone_hash, load_lock_state, read_card, save_lock
from .harden import harden_lock
from .ipclip import ProjectorConfig, frozen_features
from .metrics import lock_metrics, ownership_metric, ownership_test
from .scenarios import Stamp, heavy_augment
from .train import LockModel, accuracy, projector_config, train_lock

STAMPED = "+stamp"
LOCK_SOURCES = f"{BUILTIN_PREFIX}<domain> (domain: {', '.join(DOMAINS)}) or a root/<class>/<image> folder"


def a_or_an(word: str) -> str:
    """'a' or 'an' before `word` (an ownership lock, a target-free lock, an ip-clip lock)."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def other_domain(spec: str) -> str:
    """A built-in digits domain other than `spec`, for an example value (mnist-m first)."""
    for d in ("mnist-m", *DOMAINS):
        if not same_source(BUILTIN_PREFIX + d, spec):
            return BUILTIN_PREFIX + d
    return BUILTIN_PREFIX + DOMAINS[0]


def domain_spec(name: str) -> str:
    """The SRC of a domain a lock card names: its built-in spec, else the folder's name."""
    return BUILTIN_PREFIX + name if name in DOMAINS else name


def check_lock_sources(**specs) -> None:
    """check_inputs for the lock's SRC options (paths exist, built-in names spelled right),
    with a lock's own rule and suggestion: a built-in source must be a digits domain, the
    only built-ins with class labels (builtin:faces and builtin:textures have none)."""
    for flag, spec in specs.items():
        for one in spec if isinstance(spec, (list, tuple)) else [spec]:
            one = "" if one is None else str(one)
            if not one.startswith("builtin:") or (one.startswith(BUILTIN_PREFIX)
                                                  and one[len(BUILTIN_PREFIX):] in DOMAINS):
                continue
            opt = "--" + flag.replace("_", "-")
            what = "has no class labels, which a lock needs" if one in ("builtin:faces", "builtin:textures") \
                else "is an unknown built-in source"
            raise InputError(f"{opt}: '{one}' {what}",
                             f"use {LOCK_SOURCES}, e.g. {opt} {BUILTIN_PREFIX}mnist-m")
    check_inputs(**specs)


def check_domain_names(**specs) -> None:
    """Each domain once: a second --unauthorized naming the same data is refused, and so are
    two different folders of one name (results and lock cards name domains by it)."""
    seen: dict[str, tuple[str, str]] = {}
    for flag, spec in specs.items():
        opt = "--" + flag.replace("_", "-")
        given = [s for s in (spec if isinstance(spec, (list, tuple)) else [spec]) if s is not None]
        for i, one in enumerate(given):
            twin = next((g for g in given[:i] if same_source(g, one)), None)
            if twin is not None and flag != "eval":
                same = "is given twice" if str(twin) == str(one) else f"names the same data as {opt} '{twin}'"
                raise InputError(f"{opt} '{one}' {same}", f"give each domain once: drop the second {opt} '{one}'")
            name = source_name(str(one))
            first = seen.setdefault(name, (opt, str(one)))
            if not same_source(first[1], one):
                raise InputError(f"{first[0]} '{first[1]}' and {opt} '{one}' are two domains of one name '{name}' "
                                 "(results and lock cards name a domain by its folder's name)",
                                 "rename one of the folders")


def _templates(specs: list[str]) -> tuple[str, ...]:
    if all(s.startswith("builtin:digits/") for s in specs):
        return ZERO_SHOT_TEMPLATES
    return ("a photo of a {}.",)


def load_labelled_split(spec: str, split: str, size: int, limit: int | None = None, seed: int = 0):
    s = load_source(spec, split, size)
    if s.labels is None:
        raise InputError(f"source '{spec}' has no class labels", "give a root/<class>/<image> folder")
    if len(s.class_names or []) < 2:
        raise InputError(f"source '{spec}' has {len(s.class_names or [])} class ({', '.join(s.class_names or [])}): "
                         "a classifier needs at least two", "give a root/<class>/<image> folder with two or more "
                         "class folders")
    if limit is not None and len(s) > limit:
        idx = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        s = s.subset(idx.numpy())
    return s


def _match_classes(sets: dict, ref) -> dict:
    """Every set labelled in the authorized domain's class order (matched by name)."""
    return {name: s.with_classes(ref.class_names, f"source '{name}'") for name, s in sets.items()}


def in_checkpoint_classes(s, card: dict, spec: str, checkpoint):
    """`s` labelled in the checkpoint's class order; data of other classes is refused, naming
    both sides (neither is wrong on its own: they do not belong together)."""
    want = list(card["class_names"])
    if sorted(s.class_names or []) != sorted(want):
        def show(names):
            names = sorted(names or [])
            return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")

        raise InputError(f"the checkpoint's classes and the data's classes differ: checkpoint '{checkpoint}' has "
                         f"{len(want)} ({show(want)}), '{spec}' has {len(s.class_names or [])} ({show(s.class_names)})",
                         "evaluate on data with the checkpoint's class folders, or use a checkpoint trained on "
                         "these classes")
    return s.with_classes(want)


def _sources(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate per-source tensors; also return each row's source index (for balanced batches)."""
    return torch.cat(parts), torch.cat([torch.full((len(x),), i) for i, x in enumerate(parts)])


def _features(clip, images: torch.Tensor, batch_size: int) -> dict:
    return frozen_features(clip, images, batch_size=batch_size)


def train_command(cfg, out: Path, device: str, log=print) -> dict:
    t0 = time.time()
    check_lock_sources(authorized=cfg.authorized, unauthorized=cfg.unauthorized, eval=cfg.eval)
    same = [u for u in cfg.unauthorized or [] if same_source(u, cfg.authorized)]
    if same:
        raise InputError(f"--unauthorized '{same[0]}' is the --authorized domain '{cfg.authorized}': a lock cannot "
                         "keep a domain and refuse it", "give --unauthorized a domain other than the licensed one")
    if cfg.harden != "none" and (cfg.scenario != "target-specified" or cfg.method == "supervised"):
        raise InputError(f"--harden {cfg.harden} hardens a target-specified lock against the disguise of its "
                         f"unauthorized domain; this run is {a_or_an(cfg.scenario)} / {cfg.method} one",
                         "use --scenario target-specified with a locking --method, or --harden none")
    if cfg.scenario == "target-free" and not [e for e in (cfg.eval or []) if e != cfg.authorized]:
        raise InputError("the target-free scenario has no other domain to measure the lock on (D_u, W_ua)",
                         f"add --eval SRC (e.g. --eval {other_domain(cfg.authorized)})")
    if cfg.scenario == "target-specified" and not cfg.unauthorized:
        raise InputError("the target-specified scenario (the default) needs the domain to lock out: --unauthorized "
                         "SRC is missing", f"add --unauthorized {other_domain(cfg.authorized)} (or a "
                         "root/<class>/<image> folder), or choose another --scenario")
    check_domain_names(authorized=cfg.authorized, unauthorized=cfg.unauthorized, eval=cfg.eval)
    clip = load_clip(cfg.model, device=device, local_files_only=cfg.local_files_only)
    size = clip.image_size
    stamp = Stamp(cfg.stamp_pattern, cfg.stamp_strength, cfg.stamp_period)
    if cfg.scenario in ("ownership", "authorization"):
        stamp.check_fits(size)
    auth_tr = load_labelled_split(cfg.authorized, "train", size, cfg.train_limit, cfg.seed)
    if cfg.method == "ip-clip" and "bank_k" in cfg.model_fields_set:
        _check_bank(cfg.bank_k, auth_tr)
    a_name = source_name(cfg.authorized)
    unauth_specs = list(cfg.unauthorized or [])
    if cfg.scenario == "authorization" and not unauth_specs and cfg.authorized.startswith("builtin:digits/"):
        # the paper's unauthorized set: clean images of every domain (plus augmented ones)
        unauth_specs = [f"builtin:digits/{d}" for d in DOMAINS if f"builtin:digits/{d}" != cfg.authorized]
        log(f"[lock] authorization: clean {', '.join(unauth_specs)} as unauthorized")
    eval_specs = list(dict.fromkeys([cfg.authorized] + unauth_specs + list(cfg.eval or [])))
    tests = _match_classes({source_name(s): load_labelled_split(s, "test", size, cfg.eval_limit, cfg.seed)
                            for s in eval_specs},
                           auth_tr)
    classes = auth_tr.class_names
    bs = cfg.feature_batch_size
    log(f"[lock] {cfg.scenario} / {cfg.method}: frozen features of {len(auth_tr)} authorized images")
    x_a = auth_tr.tensor()
    y_a = torch.from_numpy(auth_tr.labels)
    u_groups = None  # one source unless a branch says otherwise
    if cfg.scenario == "target-specified":
        u_sets = [load_labelled_split(s, "train", size, cfg.train_limit, cfg.seed)
                  .with_classes(auth_tr.class_names, f"source '{s}'")
                  for s in unauth_specs]
        unauth_x, u_groups = _sources([u.tensor() for u in u_sets])
        y_u = torch.cat([torch.from_numpy(u.labels) for u in u_sets])
        auth_x = x_a
        authorized, unauthorized = [a_name], [source_name(s) for s in unauth_specs]
    elif cfg.scenario == "target-free":
        unauth_x = heavy_augment(x_a, copies=cfg.aug_copies, seed=cfg.seed, recipe=cfg.augment)
        y_u = y_a.repeat(cfg.aug_copies)
        auth_x = x_a
        authorized = [a_name]
        unauthorized = [n for n in tests if n != a_name]
    elif cfg.scenario == "ownership":
        auth_x, unauth_x, y_u = x_a, stamp.apply(x_a), y_a
        authorized, unauthorized = [a_name], [a_name + STAMPED]
    else:  # authorization: only stamped inputs work
        others = [load_labelled_split(s, "train", size, cfg.train_limit, cfg.seed)
                  .with_classes(auth_tr.class_names, f"source '{s}'")
                  for s in unauth_specs]
        clean = [x_a] + [o.tensor() for o in others]
        clean_y = [y_a] + [torch.from_numpy(o.labels) for o in others]
        aug = heavy_augment(x_a, copies=1, seed=cfg.seed, recipe=cfg.augment)
        unauth_x, u_groups = _sources(clean + [aug])
        y_u = torch.cat(clean_y + [y_a])
        auth_x = stamp.apply(x_a)
        authorized = [a_name + STAMPED]
        unauthorized = list(tests)
    f_auth = _features(clip, auth_x, bs)
    f_unauth = _features(clip, unauth_x, bs)
    test_feats = {n: (_features(clip, s.tensor(), bs), torch.from_numpy(s.labels)) for n, s in tests.items()}
    if cfg.scenario in ("ownership", "authorization"):
        for n, s in list(tests.items()):
            test_feats[n + STAMPED] = (_features(clip, stamp.apply(s.tensor()), bs), torch.from_numpy(s.labels))
    templates = _templates(eval_specs)
    # the SL reference: the same options, supervised (what only ip-clip reads does not matter)
    sl_cfg = cfg.model_copy(update={"method": "supervised", "steps": cfg.sl_steps or cfg.steps})
    log("[lock] training the SL reference (authorized cross-entropy only)")
    # each training resumes from its checkpoint in OUT/resume (the SL reference's is kept finished)
    ck_sl = TrainingCheckpoint.in_run(out, "lock-sl", "lock:supervised", log, final=True)
    ck = TrainingCheckpoint.in_run(out, "lock", f"lock:{cfg.method}", log, final=True)
    harden_ck = {}
    try:
        sl, _ = train_lock(clip, classes, f_auth, y_a, None, None, sl_cfg, templates, log=log, checkpoint=ck_sl,
                           label="the SL reference's training (supervised)")
        if cfg.method == "supervised":
            model, history = sl, []
        else:
            model, history = train_lock(clip, classes, f_auth, y_a, f_unauth, y_u, cfg, templates, log=log,
                                        u_groups=u_groups, checkpoint=ck)
        if cfg.harden != "none":
            def round_checkpoint(r: int) -> TrainingCheckpoint:
                harden_ck[r] = TrainingCheckpoint.in_run(out, f"lock-harden{r}", f"lock:harden {r}", log, final=True)
                return harden_ck[r]

            model, res_harden = harden_lock(model, clip, classes, f_auth, y_a, f_unauth, y_u, u_groups, unauth_x,
                                            auth_x, cfg, templates, lambda x: _features(clip, x, bs),
                                            round_checkpoint, log=log)
    except Diverged:  # every resume state was trained at the options that diverge: keep none
        for c in [ck_sl, ck, *harden_ck.values()]:
            c.remove()
        raise
    acc = {n: round(accuracy(model.ipclip, f, y), 2) for n, (f, y) in test_feats.items()}
    acc_sl = {n: round(accuracy(sl.ipclip, f, y), 2) for n, (f, y) in test_feats.items()}
    res = {"method": cfg.method, "scenario": cfg.scenario, "accuracy": acc, "accuracy_sl": acc_sl,
           "chance": round(100.0 / len(classes), 2), "authorized": authorized, "unauthorized": unauthorized,
           "test_images": {n: len(t) for n, t in tests.items()}}
    res.update({k: round(v, 3) for k, v in lock_metrics(acc, acc_sl, authorized, unauthorized).items()})
    if cfg.scenario == "ownership":
        res["O_ua"] = round(ownership_metric(acc[a_name], acc[a_name + STAMPED], acc_sl[a_name + STAMPED]), 3)
    card = {"format": "modelseal-lock/1", "method": cfg.method, "scenario": cfg.scenario, "class_names": classes,
            "templates": list(templates), "projector": asdict(projector_config(cfg)),
            "backbone": {"source": cfg.model, "sha256": backbone_hash(clip.model)},
            "stamp": asdict(stamp) if cfg.scenario in ("ownership", "authorization") else None,
            "authorized": authorized, "unauthorized": unauthorized}
    save_lock(out / "checkpoint", model.trainable_state(), card)
    save_lock(out / "checkpoint-sl", sl.trainable_state(), {**card, "method": "supervised"})
    for c in [ck_sl, ck, *harden_ck.values()]:
        c.remove()
    png = bar_chart({cfg.method: acc, "supervised (SL)": acc_sl}, ylabel="accuracy (%)",
                    title=f"lock: {cfg.scenario}, authorized {', '.join(authorized)}",
                    hline=res["chance"], hline_label="chance")
    atomic_write_bytes(out / "accuracy.png", png)
    res["history"] = history
    if cfg.harden != "none":
        res["harden"] = res_harden
    res["train_s"] = round(time.time() - t0, 1)
    res["processes"] = parallel.world_size()
    log(f"[lock] accuracy {acc} | SL {acc_sl} | W_ua {res['W_ua']:.2f}")
    return res


def _check_bank(k: int, auth_tr) -> None:
    """--bank-k (the user's, not the default) must be fillable: at most the images of the
    largest class of the authorized training set."""
    counts = torch.bincount(torch.from_numpy(auth_tr.labels), minlength=len(auth_tr.class_names))
    most = int(counts.max())
    if k > most:
        raise InputError(f"--bank-k {k} is more than the images of any class among the {len(auth_tr)} authorized "
                         f"training images (at most {most} of one class): no class bank can hold that many",
                         f"lower --bank-k (e.g. --bank-k {max(1, min(most, 5))}), or give more training images "
                         "(--train-limit, a bigger --authorized folder)")


def load_checkpoint(folder: Path, model: str | None, device: str, local_files_only: bool = False,
                    card: dict | None = None):
    card = card or read_card(folder)
    clip = load_clip(model or card["backbone"]["source"], device=device, local_files_only=local_files_only)
    state = load_lock_state(folder, clip.model, card)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all()))
    if bad:
        raise InputError(f"checkpoint '{folder}' holds non-finite weights (NaN or inf: {bad[0]}"
                         f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): its training diverged",
                         "retrain it with a lower --lr, e.g. --lr 1e-3")
    lm = LockModel(clip, card["class_names"], ProjectorConfig(**card["projector"]))
    missing, unexpected = lm.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("ipclip.clip.") for k in missing):
        raise InputError(f"checkpoint '{folder}' does not match this model's prompt learner",
                         "retrain it with this version of modelseal")
    lm.eval()
    return lm, card, clip


def eval_command(cfg, out: Path, device: str, log=print) -> dict:
    check_lock_sources(eval=cfg.eval)
    lm, card, clip = load_checkpoint(Path(cfg.checkpoint), cfg.model, device, cfg.local_files_only)
    acc, sizes = {}, {}
    stamp = Stamp(**card["stamp"]) if card.get("stamp") else None
    for spec in cfg.eval:
        s = load_labelled_split(spec, "test", clip.image_size, cfg.eval_limit, cfg.seed)
        s = in_checkpoint_classes(s, card, spec, cfg.checkpoint)
        x = s.tensor()
        y = torch.from_numpy(s.labels)
        sizes[source_name(spec)] = len(y)
        acc[source_name(spec)] = round(accuracy(lm.ipclip, frozen_features(clip, x), y), 2)
        if stamp is not None:
            acc[source_name(spec) + STAMPED] = round(accuracy(lm.ipclip, frozen_features(clip, stamp.apply(x)), y), 2)
    log(f"[lock] accuracy {acc}")
    return {"accuracy": acc, "test_images": sizes, "chance": round(100.0 / len(card["class_names"]), 2),
            "authorized": card["authorized"],
            "method": card["method"], "scenario": card["scenario"]}


def verify_command(cfg, out: Path, device: str, log=print) -> dict:
    """Ownership verification of a suspect lock checkpoint from its behaviour alone."""
    check_lock_sources(eval=cfg.eval)
    lm, card, clip = load_checkpoint(Path(cfg.checkpoint), cfg.model, device, cfg.local_files_only)
    given = {k: v for k, v in (("pattern", cfg.stamp_pattern), ("strength", cfg.stamp_strength),
                               ("period", cfg.stamp_period)) if v is not None}
    stored = card.get("stamp") or {}
    stamp = Stamp(**{**({k: stored[k] for k in ("pattern", "strength", "period") if k in stored}), **given})
    source = "options" if given else ("checkpoint" if stored else "default")
    stamp.check_fits(clip.image_size, "--stamp-period" if "period" in given else "the checkpoint's stamp period")
    s = in_checkpoint_classes(load_labelled_split(cfg.eval, "test", clip.image_size), card, cfg.eval, cfg.checkpoint)
    log(f"[lock] verify: stamp {stamp.pattern} (strength {stamp.strength}, period {stamp.period}) from the {source}")
    x = s.tensor()
    y = torch.from_numpy(s.labels)
    pc = lm.ipclip.predict(frozen_features(clip, x)).eq(y).numpy()
    ps = lm.ipclip.predict(frozen_features(clip, stamp.apply(x))).eq(y).numpy()
    res = ownership_test(pc, ps, min_drop=cfg.min_drop, alpha=cfg.alpha)
    res["verdict"] = "ours" if res["ours"] else "not ours"
    res["n_images"] = int(len(y))
    res["stamp"] = {"pattern": stamp.pattern, "strength": stamp.strength, "period": stamp.period, "source": source}
    log(f"[lock] verify: {res['verdict']} (clean {res['clean_accuracy']:.1f}%, stamped "
        f"{res['stamped_accuracy']:.1f}%, p = {res['p_value']:.2e})")
    return res


