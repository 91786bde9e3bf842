"""`modelseal lock attack`: one attack family (lock.attacks) against a lock checkpoint and,
with the same data and steps, against the public backbone; the lock's worth per data share.

Shares: `--fractions` of the attacked domain's training split (labelled or not, as the
attack has it). On an authorization lock (stamp-forgery) the "unauthorized" accuracy is the
licensed domain's clean test split (what an unlicensed user gets) and the "authorized" one
the same images stamped. stamp-removal has no shares: one ownership test per transform.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..attacks.suite import image_attack
from ..config import LockVerifyConfig
from ..data.sources import same_source, source_name
from ..errors import InputError
from ..report.figures import bar_chart, line_chart
from ..runs import TrainingCheckpoint, atomic_write_bytes, write_json
from ..runs.diverge import Diverged
from . import attacks as lock_attacks
from .checkpoint import read_card
from .ipclip import ProjectorConfig, frozen_features
from .metrics import ownership_test
from .run import (STAMPED, a_or_an, check_lock_sources, domain_spec, in_checkpoint_classes, load_checkpoint,
                  load_labelled_split)
from .scenarios import Stamp, heavy_augment

# the scenario each attack family is for
SCENARIOS = {"stamp-removal": ("ownership",), "stamp-forgery": ("authorization",)}
DOMAIN_LOCKS = ("target-specified", "target-free")
# where the attacker's images come from: the unauthorized domain, else the licensed one
FROM_UNAUTHORIZED = ("target-finetune", "shot", "disguise")


def _show(acc: dict) -> str:
    return f"unauthorized {acc['unauthorized']:.1f} %, authorized {acc['authorized']:.1f} %"


def _budget(n: int, fraction: float, n_classes: int) -> int:
    return min(n, max(n_classes, int(round(fraction * n))))


def _check_scenario(cfg, card: dict) -> None:
    wanted = SCENARIOS.get(cfg.attack, DOMAIN_LOCKS)
    if card["scenario"] not in wanted:
        what = "a stamped lock, whose attacks are stamp-removal (ownership) and stamp-forgery (authorization)" \
            if card["scenario"] not in DOMAIN_LOCKS else "a domain lock, which has no stamp to attack"
        raise InputError(f"--attack {cfg.attack} needs {a_or_an(' or '.join(wanted))} lock; checkpoint "
                         f"'{cfg.checkpoint}' is {a_or_an(card['scenario'])} lock ({what})",
                         f"give {a_or_an(' or '.join(wanted))} checkpoint or another --attack")


def _check_domains(cfg, card: dict) -> None:
    """The attack's domains are the checkpoint's: its lock card records the licensed domain
    and, for a target-specified lock, the ones it locks out (a target-free lock refuses every
    other domain; a stamped lock's attack reads only the licensed one)."""
    auth = [n.removesuffix(STAMPED) for n in card.get("authorized") or []]
    unauth = [n for n in card.get("unauthorized") or [] if not n.endswith(STAMPED)]
    wrong = []
    if auth and source_name(cfg.authorized) not in auth:
        wrong.append(f"--authorized '{cfg.authorized}'")
    if card["scenario"] == "target-specified" and unauth and source_name(cfg.unauthorized) not in unauth:
        wrong.append(f"--unauthorized '{cfg.unauthorized}'")
    if not wrong:
        return
    has = f"licenses {', '.join(auth)}" + (f" and locks out {', '.join(unauth)}"
                                           if card["scenario"] == "target-specified" else "")
    fix = f"--authorized {domain_spec(auth[0])}" + (f" --unauthorized {domain_spec(unauth[0])}"
                                                   if card["scenario"] == "target-specified" and unauth else "")
    raise InputError(f"{' and '.join(wrong)} {'are' if len(wrong) > 1 else 'is'} not the checkpoint's: "
                     f"checkpoint '{cfg.checkpoint}' {has} (its lock card)",
                     f"attack the domains the lock was trained for: {fix}")


def attack_command(cfg, out: Path, device: str, log=print) -> dict:
    """Per data share: both attackers' accuracies on the unauthorized and authorized test
    splits and the lock's worth (the backbone attacker's best unauthorized accuracy minus the
    checkpoint attacker's). Points already in OUT/points are kept (resume)."""
    stamped_lock = cfg.attack in SCENARIOS
    check_lock_sources(authorized=cfg.authorized, unauthorized=None if stamped_lock else cfg.unauthorized)
    if not stamped_lock and same_source(cfg.authorized, cfg.unauthorized):
        raise InputError(f"--unauthorized '{cfg.unauthorized}' is the --authorized domain",
                         "give --unauthorized a domain the lock refuses")
    card = read_card(Path(cfg.checkpoint))
    _check_scenario(cfg, card)
    _check_domains(cfg, card)
    lm, card, clip = load_checkpoint(Path(cfg.checkpoint), cfg.model, device, cfg.local_files_only, card=card)
    t0 = time.time()
    classes, templates = card["class_names"], tuple(card.get("templates") or ("a photo of a {}.",))
    size, bs = clip.image_size, cfg.feature_batch_size

    def load(spec: str, split: str, limit=None):
        s = load_labelled_split(spec, split, size, limit, cfg.seed)
        return in_checkpoint_classes(s, card, spec, cfg.checkpoint)

    def feats(x: torch.Tensor, y) -> lock_attacks.Features:
        return lock_attacks.Features({k: v.cpu() for k, v in frozen_features(clip, x, bs).items()}, y)

    if cfg.attack == "stamp-removal":
        res = _stamp_removal(cfg, out, lm, card, load(cfg.authorized, "test", cfg.eval_limit), feats, log)
        return {**res, "seconds": round(time.time() - t0, 1)}
    stamp = Stamp(**card["stamp"]) if stamped_lock else None
    if stamped_lock:  # unlicensed = clean inputs of the licensed domain, licensed = the same stamped
        licensed = load(cfg.authorized, "test", cfg.eval_limit)
        x_test, y_test = licensed.tensor(), torch.from_numpy(licensed.labels)
        test_x = {"unauthorized": x_test, "authorized": stamp.apply(x_test)}
        test_y = {"unauthorized": y_test, "authorized": y_test}
        unauth_name = source_name(cfg.authorized) + " (clean, unlicensed)"
    else:
        tests = {"unauthorized": load(cfg.unauthorized, "test", cfg.eval_limit),
                 "authorized": load(cfg.authorized, "test", cfg.eval_limit)}
        test_x = {k: s.tensor() for k, s in tests.items()}
        test_y = {k: torch.from_numpy(s.labels) for k, s in tests.items()}
        unauth_name = source_name(cfg.unauthorized)
    test_f = {k: feats(test_x[k], test_y[k]) for k in test_x}
    attacked_spec = cfg.unauthorized if cfg.attack in FROM_UNAUTHORIZED else cfg.authorized
    pool = load(attacked_spec, "train")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed))
    reference = None
    if cfg.attack == "disguise":  # a few unlabeled licensed images, the disguise's reference
        auth_pool = load(cfg.authorized, "train")
        pick = torch.randperm(len(auth_pool), generator=torch.Generator().manual_seed(cfg.seed + 1))
        if cfg.disguise_authorized > len(auth_pool):
            raise InputError(f"--disguise-authorized {cfg.disguise_authorized} is more than the {len(auth_pool)} "
                             f"training images of {source_name(cfg.authorized)}",
                             f"give at most that many, e.g. --disguise-authorized {min(64, len(auth_pool))}")
        reference = auth_pool.subset(pick[:cfg.disguise_authorized].numpy()).tensor()
    log(f"[lock attack] {cfg.attack} on {a_or_an(card['method'])} lock ({card['scenario']}); the attacker's data: "
        f"shares {', '.join(f'{f:g}' for f in cfg.fractions)} of {source_name(attacked_spec)}'s {len(pool)} "
        "training images")

    def accs(predict) -> dict:
        return {k: round(predict(f), 2) for k, f in test_f.items()}

    before = {"checkpoint": accs(lambda f: lock_attacks.lock_accuracy(lm, f)),
              "zero_shot": accs(lambda f: lock_attacks.zero_shot_accuracy(clip, classes, templates, f))}
    log(f"[lock attack] before: the lock {_show(before['checkpoint'])}; zero-shot backbone "
        f"{_show(before['zero_shot'])}")
    points = []
    for frac in cfg.fractions:
        path = out / "points" / f"{cfg.attack}-{frac:g}.json"
        if path.is_file():
            points.append(json.loads(path.read_text()))
            log(f"[lock attack] share {frac:g}: kept from {path}")
            continue
        n = _budget(len(pool), frac, len(classes))
        x, y = pool.subset(order[:n].numpy()).tensor(), torch.from_numpy(pool.labels[order[:n].numpy()])
        if cfg.attack == "transntl":
            aug = heavy_augment(x, copies=cfg.aug_copies, seed=cfg.seed)
            x, y = torch.cat([x, aug]), torch.cat([y, y.repeat(cfg.aug_copies)])
        if cfg.attack == "stamp-forgery":  # n stamped images of the licence, n clean ones of the user's own
            own = order[n:2 * n] if 2 * n <= len(pool) else order[-n:]
            reference, x = stamp.apply(x), pool.subset(own.numpy()).tensor()
        labelled = cfg.attack in lock_attacks.LABELLED
        data = feats(x, y if labelled else None)
        tag = f" {cfg.attack} {frac:g}"
        stages: dict[str, TrainingCheckpoint] = {}

        def stage(name: str) -> TrainingCheckpoint:
            """The resume state of one of this point's trainings (kept once finished, so a
            rerun goes on from the training that was stopped)."""
            stages[name] = TrainingCheckpoint.in_run(out, f"attack-{cfg.attack}-{frac:g}-{name}",
                                                     f"lock attack{tag} {name}", log, final=True)
            return stages[name]

        attacked = lock_attacks.clone_lock(lm)
        point = {"fraction": frac, "images": n, "labelled": n if labelled else 0, "training_images": len(data)}
        try:
            if cfg.attack in ("disguise", "stamp-forgery"):
                train = lock_attacks.train_disguise if cfg.attack == "disguise" else lock_attacks.train_forgery
                transform = train(attacked, x, reference, cfg, log, tag + " (checkpoint)", stage("checkpoint"))
                seen = feats(transform.apply(test_x["unauthorized"]), test_y["unauthorized"])
                point["checkpoint"] = {"unauthorized": round(lock_attacks.lock_accuracy(attacked, seen), 2),
                                       "authorized": before["checkpoint"]["authorized"]}
                after = attacked.trainable_state()
                point["weights_unchanged"] = all(torch.equal(v, after[k]) for k, v in lm.trainable_state().items())
                point["reference_images"] = len(reference)
            else:
                if labelled:
                    lock_attacks.finetune_prompts(attacked, data, cfg, log, tag + " (checkpoint)", stage("checkpoint"))
                else:
                    lock_attacks.shot_prompts(attacked, data, cfg, log, tag + " (checkpoint)", stage("checkpoint"))
                point["checkpoint"] = accs(lambda f: lock_attacks.lock_accuracy(attacked, f))
            if cfg.backbone:
                point.update(_backbone(cfg, clip, classes, templates, card, data, labelled, before, accs, log, tag,
                                       stage))
                point["worth"] = round(point["backbone_best"]["unauthorized"] - point["checkpoint"]["unauthorized"], 2)
        except Diverged:  # trained at the options that diverge: keep none of the point's states
            for ck in stages.values():
                ck.remove()
            raise
        write_json(path, point)
        for ck in stages.values():  # the point is kept: its trainings' resume states are not needed
            ck.remove()
        points.append(point)
        msg = f"[lock attack] share {frac:g} ({n} images): checkpoint attacker {_show(point['checkpoint'])}"
        if cfg.backbone:
            best = point["backbone_best"]
            msg += f"; backbone best ({best['attacker']}) {_show(best)}; the lock's worth {point['worth']:+.1f}"
        log(msg)
    curves = {f"from the {card['method']} checkpoint": ([p["fraction"] for p in points],
                                                       [p["checkpoint"]["unauthorized"] for p in points])}
    if cfg.backbone:
        curves["from the backbone (best)"] = ([p["fraction"] for p in points],
                                              [p["backbone_best"]["unauthorized"] for p in points])
    png = line_chart(curves, xlabel=f"attacker's share of {source_name(attacked_spec)}'s training split",
                     ylabel=f"{unauth_name} accuracy (%)", title=f"lock attack: {cfg.attack} on {card['method']}",
                     logx=len(points) > 1, hlines={"the lock before": before["checkpoint"]["unauthorized"],
                                                   "chance": 100.0 / len(classes)})
    atomic_write_bytes(out / "attack.png", png)
    return {"attack": cfg.attack, "method": card["method"], "scenario": card["scenario"],
            "authorized": source_name(cfg.authorized), "unauthorized": unauth_name,
            "chance": round(100.0 / len(classes), 2), "before": before, "points": points,
            "test_images": {k: len(v) for k, v in test_y.items()}, "seconds": round(time.time() - t0, 1)}


def _backbone(cfg, clip, classes, templates, card, data, labelled, before, accs, log, tag, stage) -> dict:
    """The attacker who never had the lock, on the same data and steps: zero-shot; with labels
    a linear probe and a prompt learner from its initial state; without, SHOT on the
    zero-shot head. The best unauthorized accuracy counts."""
    bb = {"zero_shot": before["zero_shot"]}
    if labelled:
        probe = lock_attacks.linear_probe(data, len(classes), cfg)
        bb["linear_probe"] = accs(lambda f: lock_attacks.head_accuracy(probe, f))
        fresh = lock_attacks.fresh_prompt_learner(clip, classes, ProjectorConfig(**card["projector"]), cfg.seed)
        lock_attacks.finetune_prompts(fresh, data, cfg, log, tag + " (backbone prompt)", stage("backbone-prompt"))
        bb["prompt"] = accs(lambda f: lock_attacks.lock_accuracy(fresh, f))
    else:
        head = lock_attacks.zero_shot_head(clip, classes, templates)
        lock_attacks.shot_head(head, data, cfg, log, tag + " (backbone)", stage("backbone-shot"))
        bb["shot_head"] = accs(lambda f: lock_attacks.head_accuracy(head, f))
    best = max(bb, key=lambda k: bb[k]["unauthorized"])
    return {"backbone": bb, "backbone_best": {"attacker": best, **bb[best]}}


def _stamp_removal(cfg, out: Path, lm, card: dict, licensed, feats, log) -> dict:
    """The ownership test the owner runs (clean against stamped probes of the licensed
    domain), with the thief's transform in front of the model, per transform."""
    stamp = Stamp(**card["stamp"])
    x, y = licensed.tensor(), torch.from_numpy(licensed.labels)
    verify = LockVerifyConfig.model_fields
    min_drop, alpha = verify["min_drop"].default, verify["alpha"].default
    rows = []
    for spec in cfg.removal:
        try:
            transform = image_attack(spec)
        except ValueError as e:
            raise InputError(f"--removal: {e}", "see the docs' lock page for the transforms") from None
        pc = lm.ipclip.predict(feats(transform(x, torch.Generator().manual_seed(cfg.seed)), y).frozen).eq(y)
        ps = lm.ipclip.predict(feats(transform(stamp.apply(x), torch.Generator().manual_seed(cfg.seed)), y).frozen)
        res = ownership_test(pc.numpy(), ps.eq(y).numpy(), min_drop=min_drop, alpha=alpha)
        rows.append({"transform": spec, "clean_accuracy": round(res["clean_accuracy"], 2),
                     "stamped_accuracy": round(res["stamped_accuracy"], 2), "p_value": res["p_value"],
                     "verdict": "ours" if res["ours"] else "not ours"})
        log(f"[lock attack] stamp-removal {spec}: clean {rows[-1]['clean_accuracy']:.1f} %, stamped "
            f"{rows[-1]['stamped_accuracy']:.1f} %, p {res['p_value']:.1e}: {rows[-1]['verdict']}")
    png = bar_chart({"clean probes": {r["transform"]: r["clean_accuracy"] for r in rows},
                     "stamped probes": {r["transform"]: r["stamped_accuracy"] for r in rows}},
                    ylabel="accuracy (%)",
                    title=f"stamp removal in front of {a_or_an(card['method'])} ownership lock",
                    hline=100.0 / len(card["class_names"]), hline_label="chance")
    atomic_write_bytes(out / "attack.png", png)
    return {"attack": "stamp-removal", "method": card["method"], "scenario": card["scenario"],
            "authorized": source_name(cfg.authorized), "transforms": rows,
            "removed_by": [r["transform"] for r in rows if r["verdict"] != "ours" and r["transform"] != "none"],
            "min_drop": min_drop, "alpha": alpha, "test_images": len(y)}
