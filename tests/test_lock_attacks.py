"""lock attack: each attack family's effect on a small locked checkpoint, the from-backbone
attacker beside it, and bad input. Full-size figures: benchmarks/lock_attacks.py."""
import json

import pytest
import torch

from modelseal.cli import main
from modelseal.lock.attacks import information_maximisation, shot_pseudo_labels


def cli(args, capsys):
    try:
        main(args + ["--json"])
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def main_ok(args):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code


def exit_code(args, capsys) -> tuple[int, str]:
    try:
        main(args)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return 0, ""


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """An IP-CLIP lock of mnist against mnist-m at a small size (module-wide)."""
    out = tmp_path_factory.mktemp("lock")
    main_ok(["lock", "train", "--out", str(out), "--unauthorized", "builtin:digits/mnist-m", "--steps", "100",
             "--batch-size", "16", "--train-limit", "600", "--eval-limit", "300"])
    res = json.loads((out / "results.json").read_text())
    assert res["accuracy"]["mnist-m"] <= res["chance"] + 15, res  # locked before any attack
    return out / "checkpoint"


def test_shot_pseudo_labels_follow_the_clusters_not_the_predictions():
    """Two well separated clusters, predictions that are right on most of each: the
    centroid labels correct the wrong minority."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(50, 2, generator=g)
    b = torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(50, 2, generator=g)
    feat = torch.cat([a, b])
    truth = torch.cat([torch.zeros(50), torch.ones(50)]).long()
    pred = truth.clone()
    pred[:10] = 1  # a fifth of cluster a predicted wrong
    probs = torch.nn.functional.one_hot(pred, 2).float() * 0.8 + 0.1
    assert shot_pseudo_labels(feat, probs).eq(truth).all()


def test_information_maximisation_prefers_confident_and_diverse_predictions():
    confident_diverse = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    confident_collapsed = torch.tensor([[10.0, 0.0], [10.0, 0.0]])
    unsure = torch.zeros(2, 2)
    im = [float(information_maximisation(x)) for x in (confident_diverse, confident_collapsed, unsure)]
    assert im[0] < im[1] and im[0] < im[2]


@pytest.mark.slow
def test_target_finetuning_unlocks_and_the_backbone_attacker_is_beside_it(locked, tmp_path, capsys):
    res = cli(["lock", "attack", "--out", str(tmp_path / "t"), "--checkpoint", str(locked), "--attack",
               "target-finetune", "--fractions", "0.1", "--steps", "60", "--eval-limit", "300"], capsys)
    before, (p,) = res["before"], res["points"]
    assert before["checkpoint"]["unauthorized"] <= res["chance"] + 15, res
    assert p["labelled"] == 400
    assert p["checkpoint"]["unauthorized"] >= res["chance"] + 20, res  # 10 % labels unlock it
    assert p["checkpoint"]["unauthorized"] >= before["checkpoint"]["unauthorized"] + 20, res
    bb = p["backbone"]
    assert set(bb) == {"zero_shot", "linear_probe", "prompt"}
    assert p["backbone_best"]["unauthorized"] == max(v["unauthorized"] for v in bb.values())
    assert p["worth"] == pytest.approx(p["backbone_best"]["unauthorized"] - p["checkpoint"]["unauthorized"], abs=0.02)
    assert (tmp_path / "t" / "attack.png").stat().st_size > 1000
    # resumable: the point is kept, not recomputed
    again = cli(["lock", "attack", "--out", str(tmp_path / "t"), "--checkpoint", str(locked), "--attack",
                 "target-finetune", "--fractions", "0.1", "--steps", "60", "--eval-limit", "300"], capsys)
    assert again["points"] == res["points"]


@pytest.mark.slow
def test_shot_adapts_without_labels(locked, tmp_path, capsys):
    res = cli(["lock", "attack", "--out", str(tmp_path / "s"), "--checkpoint", str(locked), "--attack", "shot",
               "--fractions", "0.25", "--steps", "60", "--eval-limit", "300", "--no-backbone"], capsys)
    (p,) = res["points"]
    assert p["labelled"] == 0 and "backbone" not in p
    assert p["checkpoint"]["unauthorized"] >= res["before"]["checkpoint"]["unauthorized"] + 15, res


@pytest.mark.slow
def test_source_finetuning_keeps_the_licensed_domain(locked, tmp_path, capsys):
    res = cli(["lock", "attack", "--out", str(tmp_path / "src"), "--checkpoint", str(locked), "--attack",
               "transntl", "--fractions", "0.05", "--steps", "40", "--eval-limit", "300", "--no-backbone"], capsys)
    (p,) = res["points"]
    assert p["labelled"] == 200 and p["training_images"] == 200 * 3  # the share and two augmented copies
    assert p["checkpoint"]["authorized"] >= res["before"]["checkpoint"]["authorized"] - 5, res


@pytest.mark.slow
def test_disguise_raises_unauthorized_accuracy_without_changing_a_weight(locked, tmp_path, capsys):
    res = cli(["lock", "attack", "--out", str(tmp_path / "d"), "--checkpoint", str(locked), "--attack", "disguise",
               "--fractions", "0.1", "--steps", "100", "--eval-limit", "300", "--no-backbone"], capsys)
    (p,) = res["points"]
    assert p["weights_unchanged"] and p["labelled"] == 0 and p["reference_images"] == 64
    assert p["checkpoint"]["unauthorized"] >= res["before"]["checkpoint"]["unauthorized"] + 8, res


@pytest.mark.slow
def test_stamp_removal_reports_which_transform_defeats_verification(tmp_path, capsys):
    """An ownership lock: with no transform the owner's test says ours; a transform that
    washes the faint checkerboard out (blur) makes stamped probes work again, and is named."""
    main_ok(["lock", "train", "--out", str(tmp_path / "own"), "--scenario", "ownership", "--steps", "60",
             "--batch-size", "16", "--train-limit", "600", "--eval-limit", "300"])
    res = cli(["lock", "attack", "--out", str(tmp_path / "r"), "--checkpoint", str(tmp_path / "own" / "checkpoint"),
               "--attack", "stamp-removal", "--removal", "none", "--removal", "gaussian_blur:sigma=2",
               "--removal", "resize:scale=0.25", "--eval-limit", "300"], capsys)
    rows = {r["transform"]: r for r in res["transforms"]}
    assert rows["none"]["verdict"] == "ours"
    assert rows["none"]["clean_accuracy"] - rows["none"]["stamped_accuracy"] >= 30
    assert res["removed_by"], res  # some transform defeats the test (a finding, not a failure)
    for spec in res["removed_by"]:
        assert rows[spec]["verdict"] == "not ours"


@pytest.mark.slow
def test_stamp_forgery_gives_unlicensed_images_part_of_the_licence(tmp_path, capsys):
    main_ok(["lock", "train", "--out", str(tmp_path / "auth"), "--scenario", "authorization", "--steps", "120",
             "--batch-size", "32", "--train-limit", "600", "--eval-limit", "300"])
    res = cli(["lock", "attack", "--out", str(tmp_path / "f"), "--checkpoint", str(tmp_path / "auth" / "checkpoint"),
               "--attack", "stamp-forgery", "--fractions", "0.01", "--steps", "100", "--eval-limit", "300",
               "--no-backbone"], capsys)
    (p,) = res["points"]
    before = res["before"]["checkpoint"]
    assert before["unauthorized"] <= res["chance"] + 20 <= before["authorized"], res  # clean fails, stamped works
    assert p["weights_unchanged"] and p["reference_images"] == 40
    assert p["checkpoint"]["unauthorized"] >= before["unauthorized"] + 20, res
    assert p["checkpoint"]["unauthorized"] >= before["authorized"] - 15, res  # near the licensed accuracy


def test_stamp_attacks_need_a_stamped_lock_and_domain_attacks_a_domain_lock(tmp_path, capsys):
    from modelseal.lock.attack_run import _check_scenario
    from modelseal.config import LockAttackConfig
    from modelseal.errors import InputError

    card = {"scenario": "target-specified"}
    with pytest.raises(InputError, match="no stamp"):
        _check_scenario(LockAttackConfig(checkpoint="c", attack="stamp-forgery"), card)
    with pytest.raises(InputError, match="stamped lock"):
        _check_scenario(LockAttackConfig(checkpoint="c", attack="shot"), {"scenario": "ownership"})
    _check_scenario(LockAttackConfig(checkpoint="c", attack="stamp-removal"), {"scenario": "ownership"})


def test_bad_attack_input_exits_2_with_one_line(tmp_path, capsys):
    code, err = exit_code(["lock", "attack", "--out", str(tmp_path / "a"), "--checkpoint", str(tmp_path),
                           "--fractions", "1.5"], capsys)
    assert code == 2 and "fractions" in err
    code, err = exit_code(["lock", "attack", "--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path),
                           "--unauthorized", "builtin:digits/mnist"], capsys)
    assert code == 2 and "authorized" in err
    code, err = exit_code(["lock", "attack", "--out", str(tmp_path / "c"), "--checkpoint", str(tmp_path / "none")],
                          capsys)
    assert code == 2
    assert not (tmp_path / "c" / "results.json").exists()


def test_hardening_needs_a_target_specified_lock(tmp_path, capsys):
    code, err = exit_code(["lock", "train", "--out", str(tmp_path / "h"), "--scenario", "ownership", "--harden",
                           "disguise"], capsys)
    assert code == 2 and "--harden disguise" in err and "target-specified" in err
    assert not (tmp_path / "h" / "results.json").exists()


@pytest.mark.slow
def test_hardening_makes_the_disguise_fail_where_it_unlocks_the_papers_lock(tmp_path, capsys):
    """syn licensed, uci refused, small: the disguise unlocks the paper's lock; after
    `--harden disguise` a fresh disguise (another seed than the owner's rounds) does not, and
    the licensed accuracy stays."""
    common = ["--authorized", "builtin:digits/syn", "--unauthorized", "builtin:digits/uci", "--steps", "150",
              "--sl-steps", "10", "--train-limit", "600", "--eval-limit", "300"]
    hard = ["--harden", "disguise", "--harden-rounds", "3"]  # 2 rounds of 100 steps: the reduction varied with the threads
    acc = {}
    for name, extra in (("paper", []), ("hardened", hard)):
        res = cli(["lock", "train", "--out", str(tmp_path / name), *common, *extra], capsys)
        att = cli(["lock", "attack", "--out", str(tmp_path / f"{name}-disguise"), "--checkpoint",
                   str(tmp_path / name / "checkpoint"), "--attack", "disguise", "--fractions", "1", "--steps", "100",
                   "--no-backbone", *common[:4], "--eval-limit", "300"], capsys)
        acc[name] = (res["accuracy"]["syn"], res["accuracy"]["uci"], att["points"][0]["checkpoint"]["unauthorized"])
        if name == "hardened":
            assert [r["round"] for r in res["harden"]] == [1, 2, 3]
    (p_syn, p_uci, p_dis), (h_syn, h_uci, h_dis) = acc["paper"], acc["hardened"]
    assert p_uci <= 25 and h_uci <= 25, acc  # both locked as released
    assert p_dis >= 60, acc  # the disguise unlocks the paper's lock
    assert h_dis <= p_dis - 30, acc  # and not the hardened one
    assert h_syn >= p_syn - 5, acc  # the licence kept
