"""lock on the shipped tiny CLIP and built-in digits, at a small, fast size: effects, not
just that code runs. Full-size figures: `modelseal lock train` (see the README)."""
import json

import pytest

from modelseal.cli import main


def cli(args, capsys):
    try:
        main(args + ["--json"])
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


SMALL = ["--steps", "60", "--batch-size", "16", "--train-limit", "600"]


def test_target_specified_locks_mnist_m_and_keeps_mnist(tmp_path, capsys):
    res = cli(["lock", "train", "--out", str(tmp_path), "--unauthorized", "builtin:digits/mnist-m", *SMALL,
               "--eval-limit", "400"], capsys)
    assert res["test_images"] == {"mnist": 400, "mnist-m": 400}
    acc, sl = res["accuracy"], res["accuracy_sl"]
    assert acc["mnist"] >= sl["mnist"] - 5, res
    assert acc["mnist-m"] <= res["chance"] + 15, res
    assert sl["mnist-m"] >= 50  # without protection the model transfers: locking did the drop
    assert res["W_ua"] > 40
    # the checkpoint alone reproduces the accuracies (the same seeded test subsets)
    ev = cli(["lock", "eval", "--out", str(tmp_path / "ev"), "--checkpoint", str(tmp_path / "checkpoint"),
              "--eval", "builtin:digits/mnist", "--eval", "builtin:digits/mnist-m", "--eval-limit", "400"], capsys)
    assert ev["accuracy"] == {"mnist": acc["mnist"], "mnist-m": acc["mnist-m"]}


@pytest.mark.slow
def test_ownership_verify_says_ours_only_for_the_locked_model(tmp_path, capsys):
    res = cli(["lock", "train", "--out", str(tmp_path), "--scenario", "ownership", *SMALL], capsys)
    assert res["accuracy"]["mnist+stamp"] <= res["chance"] + 15, res
    assert res["accuracy"]["mnist"] >= res["accuracy_sl"]["mnist"] - 5, res
    ours = cli(["lock", "verify", "--out", str(tmp_path / "v1"), "--checkpoint", str(tmp_path / "checkpoint")], capsys)
    sl = cli(["lock", "verify", "--out", str(tmp_path / "v2"), "--checkpoint", str(tmp_path / "checkpoint-sl")], capsys)
    assert ours["verdict"] == "ours" and ours["p_value"] < 1e-6
    assert sl["verdict"] == "not ours"


@pytest.mark.slow
def test_target_free_locks_unseen_domains_without_target_data(tmp_path, capsys):
    res = cli(["lock", "train", "--out", str(tmp_path), "--scenario", "target-free", "--steps", "200",
               "--batch-size", "32", "--train-limit", "1000", "--eval", "builtin:digits/syn",
               "--eval", "builtin:digits/mnist-m"], capsys)
    acc, sl = res["accuracy"], res["accuracy_sl"]
    assert acc["mnist"] >= sl["mnist"] - 5, res
    assert sl["mnist-m"] - acc["mnist-m"] >= 40, res  # never seen in training
    assert sl["syn"] - acc["syn"] >= 20, res


@pytest.mark.slow
def test_authorization_only_stamped_inputs_work(tmp_path, capsys):
    res = cli(["lock", "train", "--out", str(tmp_path), "--scenario", "authorization", "--steps", "200",
               "--batch-size", "32", "--train-limit", "600"], capsys)
    acc, sl, ch = res["accuracy"], res["accuracy_sl"], res["chance"]
    assert acc["mnist+stamp"] >= sl["mnist+stamp"] - 5, res
    for d in ("mnist", "uci", "mnist-m", "syn"):  # clean inputs of every domain fail
        assert acc[d] <= ch + 20, (d, res)
        assert sl[d] >= 75, (d, res)


def test_checkpoint_on_another_backbone_is_refused(tmp_path, capsys):
    from modelseal.lock.checkpoint import save_lock

    save_lock(tmp_path / "ck", {}, {"backbone": {"source": "x", "sha256": "0" * 64}, "class_names": ["a"],
                                    "projector": {}, "stamp": None, "authorized": [], "method": "ip-clip",
                                    "scenario": "target-specified"})
    try:
        main(["lock", "eval", "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "ck"),
              "--model", "tiny:clip", "--eval", "builtin:digits/mnist"])
    except SystemExit as e:
        assert e.code == 2
    assert "not on this one" in capsys.readouterr().err


@pytest.mark.slow
def test_training_runs_data_parallel_under_torchrun(tmp_path):
    """Two processes (gloo on CPU) train one lock together: one run folder, the lock holds."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
           "-m", "modelseal", "lock", "train", "--out", str(tmp_path / "ddp"), "--unauthorized",
           "builtin:digits/mnist-m", *SMALL, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["processes"] == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ddp"]
    assert res["accuracy"]["mnist"] >= res["accuracy_sl"]["mnist"] - 5, res
    assert res["accuracy"]["mnist-m"] <= res["chance"] + 20, res
