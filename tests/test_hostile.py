"""A careless or hostile user: every case exits 2 with one line on stderr (no traceback),
loads nothing it should not, and leaves nothing half-written. Run folders, signals and
resuming are in test_resume.py."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from test_cli import run_cli


def one_line_error(code, err, *words):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle was opened."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bomb(path, marker):
    path.write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture(scope="module")
def zoo():
    from modelseal.models.zoo import zoo_dir

    return zoo_dir()[0]


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- weights and pickles

def test_corrupt_lock_checkpoint_is_one_line(tmp_path, capsys):
    from modelseal.lock.checkpoint import backbone_hash, save_lock
    from modelseal.models.clip import load_clip

    clip = load_clip("tiny:clip")
    ck = save_lock(tmp_path / "ck", {}, {
        "backbone": {"source": "tiny:clip", "sha256": backbone_hash(clip.model)}, "class_names": ["a", "b"],
        "projector": {}, "method": "ipclip", "scenario": "target-specified", "authorized": ["mnist"]})
    (ck / "lock.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    capsys.readouterr()  # the loading bar of the set-up above
    for cmd in (["lock", "eval", "--eval", "builtin:digits/uci"], ["lock", "verify"]):
        code, _, err = run_cli([*cmd, "--out", str(tmp_path / cmd[1]), "--checkpoint", str(ck)], capsys)
        one_line_error(code, err, "lock.safetensors")
    (ck / "lock.json").write_text("[1, 2]")
    code, _, err = run_cli(["lock", "verify", "--out", str(tmp_path / "v2"), "--checkpoint", str(ck)], capsys)
    one_line_error(code, err, "lock card")


def test_pickle_only_model_folders_are_refused_unopened(tmp_path, capsys, zoo):
    marker = tmp_path / "UNPICKLED"
    clip = tmp_path / "clip-bin"
    clip.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (clip / f).write_bytes((zoo / "clip" / f).read_bytes())
    _pickle_bomb(clip / "pytorch_model.bin", marker)
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--model", str(clip), "--steps", "1"],
                           capsys)
    one_line_error(code, err, "pickle", "pytorch_model.bin", "safetensors")
    assert "weights_only" not in err
    t2i = _copy(zoo / "t2i", tmp_path / "t2i-bin")
    (t2i / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _pickle_bomb(t2i / "unet" / "diffusion_pytorch_model.bin", marker)
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--model", str(t2i), "--method", "prune"], capsys)
    one_line_error(code, err, "pickle")
    from modelseal.audit.scoring import FeatureExtractor
    from modelseal.errors import InputError

    with pytest.raises(InputError, match="pickle"):
        FeatureExtractor(str(clip))
    assert not marker.exists()


def test_a_broken_diffusers_folder_is_one_line_and_names_an_sd_layout(tmp_path, capsys, zoo, monkeypatch):
    t2i = _copy(zoo / "t2i", tmp_path / "t2i")
    (t2i / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--model", str(t2i), "--method", "prune"], capsys)
    one_line_error(code, err, "unet")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "g"), "--model", "runs/nope", "--method", "prune"],
                           capsys)
    line = one_line_error(code, err, "does not exist", "stable-diffusion")
    assert "clip" not in line


def test_offline_hub_id_fails_at_once(tmp_path, capsys, monkeypatch):
    import time

    import modelseal.models.zoo as zoo_mod

    monkeypatch.setattr(zoo_mod, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--model", "openai/clip-vit-base-patch32",
                            "--steps", "1"], capsys)
    one_line_error(code, err, "openai/clip-vit-base-patch32", "cache", "cannot be reached")
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--model", "runwayml/stable-diffusion-v1-5",
                            "--method", "prune"], capsys)
    line = one_line_error(code, err, "cache")
    assert "config.json" not in line
    assert time.time() - t0 < 30


# --------------------------------------------------------------------------- files and folders

def test_prompts_file_missing_or_binary(tmp_path, capsys):
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)))
    for path, word in ((tmp_path / "none.txt", "does not exist"), (tmp_path / "bin.txt", "UTF-8")):
        code, _, err = run_cli(["watermark", "verify", "--out", str(tmp_path / "v"), "--model", "tiny:t2i",
                                "--codec", "tiny:codec", "--key", str(tmp_path / "k"), "--model-id", "m",
                                "--prompts", str(path)], capsys)
        one_line_error(code, err, word)


def test_keygen_never_creates_folders(tmp_path, capsys):
    code, _, err = run_cli(["watermark", "keygen", "--key", str(tmp_path / "no" / "such" / "k.key")], capsys)
    one_line_error(code, err, "does not exist")
    assert not (tmp_path / "no").exists()
    code, _, _ = run_cli(["watermark", "keygen", "--key", str(tmp_path / "k.key")], capsys)
    assert code == 0
    code, _, err = run_cli(["watermark", "keygen", "--key", str(tmp_path / "k.key")], capsys)
    line = one_line_error(code, err, "already exists", "--overwrite")
    assert "pass overwrite" not in line


def test_metadata_names_outside_the_folder_are_refused(tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "outside.png")
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32)).save(data / "in.png")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "in.png", "text": "a"}) + "\n" +
                                         json.dumps({"file_name": "../outside.png", "text": "b"}) + "\n")
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--data", str(data), "--steps", "1"], capsys)
    one_line_error(code, err, "outside")
    assert not (tmp_path / "f" / "results.json").exists()


def _class_folder(root, classes, n=3, size=32):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_lock_refuses_one_class_and_other_class_sets(tmp_path, capsys):
    one = _class_folder(tmp_path / "one", ["cat"])
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--authorized", str(one),
                            "--unauthorized", "builtin:digits/mnist-m", "--steps", "1"], capsys)
    one_line_error(code, err, "two")
    other = _class_folder(tmp_path / "other", ["cat", "dog"])
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r2"), "--unauthorized", str(other),
                            "--steps", "1"], capsys)
    one_line_error(code, err, "classes")


def test_classes_are_matched_by_name_not_order():
    from modelseal.data.dataset import ImageSet
    from modelseal.data.digits import CLASS_NAMES
    from modelseal.errors import InputError

    names = sorted(CLASS_NAMES)   # a folder's order: eight, five, four, ...
    s = ImageSet("f", np.zeros((10, 4, 4, 3), np.uint8), labels=np.arange(10), class_names=names)
    m = s.with_classes(list(CLASS_NAMES))
    assert m.class_names == list(CLASS_NAMES)
    assert [m.class_names[i] for i in m.labels] == [names[i] for i in s.labels]
    with pytest.raises(InputError, match="differ"):
        s.with_classes(list(CLASS_NAMES[:9]) + ["ten"])


def test_target_free_without_eval_is_refused_before_training(tmp_path, capsys):
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--scenario", "target-free"], capsys)
    one_line_error(code, err, "--eval")
    assert not (tmp_path / "r" / "results.json").exists()


def test_mnist_m_builds_at_clip_sizes(monkeypatch):
    """Photo crops smaller than the image (chelsea is 300 px: half of it < 160) used to give
    rng.integers(low >= high)."""
    import modelseal.data.digits as digits

    gray, y = digits._mnist_raw()
    monkeypatch.setattr(digits, "_mnist_raw", lambda: (gray[:40], y[:40]))
    for size in (160, 224):
        x, _ = digits._mnist_m(size)
        assert x.shape == (40, size, size, 3) and x.std() > 0


def test_input_paths_are_checked_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import modelseal.attacks.run as attacks_run
    import modelseal.audit.run as audit_run
    import modelseal.lock.run as lock_run
    import modelseal.watermark.run as wm_run

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    for mod, name in ((attacks_run, "load_for"), (wm_run, "load_for"), (audit_run, "load_pair"),
                      (lock_run, "load_clip")):
        monkeypatch.setattr(mod, name, no_load)
    cases = [
        (["audit", "--finetuned", "tiny:t2i", "--prompt", "a", "--members", str(tmp_path / "m"), "--holdout",
          str(tmp_path)], "--members"),
        (["finetune", "--data", str(tmp_path / "nope")], "--data"),
        (["lock", "train", "--eval", str(tmp_path / "nope")], "--eval"),
        (["lock", "train", "--eval", "builtin:digits/mnistm"], "unknown built-in"),
        (["watermark", "verify", "--images", str(tmp_path / "nope"), "--codec", "tiny:codec", "--key", "k",
          "--model-id", "m"], "--images"),
    ]
    for i, (args, word) in enumerate(cases):
        code, _, err = run_cli([*args, "--out", str(tmp_path / f"o{i}")], capsys)
        one_line_error(code, err, word)


def test_lock_verify_uses_the_stamp_stored_with_the_checkpoint(tmp_path, capsys):
    from modelseal.lock.checkpoint import backbone_hash, save_lock
    from modelseal.lock.run import LockModel
    from modelseal.lock.train import LockTrainConfig
    from modelseal.models.clip import load_clip
    from modelseal.data.digits import CLASS_NAMES
    from dataclasses import asdict

    clip = load_clip("tiny:clip")
    cfg = LockTrainConfig()
    lm = LockModel(clip, list(CLASS_NAMES), cfg)
    stamp = {"pattern": "lines", "strength": 0.5, "period": 3, "color": [1.0, 1.0, 1.0]}
    save_lock(tmp_path / "ck", lm.trainable_state(), {
        "format": "modelseal-lock/1", "method": "ipclip", "scenario": "ownership", "class_names": list(CLASS_NAMES),
        "projector": asdict(cfg.projector), "authorized": ["mnist"], "stamp": stamp,
        "backbone": {"source": "tiny:clip", "sha256": backbone_hash(clip.model)}})
    capsys.readouterr()
    code, out, err = run_cli(["lock", "verify", "--out", str(tmp_path / "v"), "--checkpoint", str(tmp_path / "ck"),
                              "--eval", "builtin:digits/uci", "--json"], capsys)
    assert code == 0, err
    used = json.loads(out)["stamp"]
    assert used == {"pattern": "lines", "strength": 0.5, "period": 3, "source": "checkpoint"}
    code, out, err = run_cli(["lock", "verify", "--out", str(tmp_path / "v2"), "--checkpoint", str(tmp_path / "ck"),
                              "--eval", "builtin:digits/uci", "--stamp-period", "5", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["stamp"] == {"pattern": "lines", "strength": 0.5, "period": 5, "source": "options"}
