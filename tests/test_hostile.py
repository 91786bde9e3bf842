"""A careless or hostile user: every case exits 2 with one line on stderr (no traceback),
loads nothing it should not, and leaves nothing half-written. Run folders, signals and
resuming are in test_resume.py."""
import json
import pickle

import numpy as np
import pytest
import torch
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
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--model", str(clip), "--steps", "1",
                            "--unauthorized", "builtin:digits/mnist-m"],
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
                            "--steps", "1", "--unauthorized", "builtin:digits/mnist-m"], capsys)
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
    from modelseal.lock.ipclip import ProjectorConfig
    from modelseal.lock.run import LockModel
    from modelseal.models.clip import load_clip
    from modelseal.data.digits import CLASS_NAMES
    from dataclasses import asdict

    clip = load_clip("tiny:clip")
    projector = ProjectorConfig()
    lm = LockModel(clip, list(CLASS_NAMES), projector)
    stamp = {"pattern": "lines", "strength": 0.5, "period": 3, "color": [1.0, 1.0, 1.0]}
    save_lock(tmp_path / "ck", lm.trainable_state(), {
        "format": "modelseal-lock/1", "method": "ipclip", "scenario": "ownership", "class_names": list(CLASS_NAMES),
        "projector": asdict(projector), "authorized": ["mnist"], "stamp": stamp,
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


# --------------------------------------------------------------------------- nonsense that used to run

def _pngs(folder, n, seed=0, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{seed}-{i}.png")
    return folder


def test_non_finite_numbers_are_refused(tmp_path, capsys):
    from modelseal.config import DemoConfig, WatermarkAdaptConfig, load_config
    from modelseal.errors import InputError
    from modelseal.lock.scenarios import Stamp

    for value in ("inf", "nan", "-inf"):
        code, _, err = run_cli(["finetune", "--out", str(tmp_path / value), "--lr", value, "--data",
                                "builtin:digits/mnist"], capsys)
        one_line_error(code, err, "--lr")
        assert not (tmp_path / value / "results.json").exists()
    # numbers inside strings, which the config's float checks never see
    with pytest.raises(InputError, match="lora:10:inf"):
        load_config({"codec": "c", "key": "k", "model_id": "m", "model": "x", "simulate": ["lora:10:inf"]},
                    WatermarkAdaptConfig)
    with pytest.raises(InputError, match="full:inf"):
        load_config({"watermark": {"finetune": ["full:inf"]}}, DemoConfig)
    with pytest.raises(InputError, match="stamp"):  # a lock card's stamp is read without the options' checks
        Stamp(strength=float("nan"))


@pytest.mark.parametrize("lr", [1e6, 1e38])  # NaN weights; a step that overflows float32
def test_a_diverging_finetune_stops_before_writing_nan_weights(lr):
    from modelseal.attacks.finetune import finetune
    from modelseal.config import FinetuneOptions
    from modelseal.errors import InputError
    from modelseal.models.diffusion import load_t2i

    model = load_t2i("tiny:t2i")
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="diverged.*--lr"):
        finetune(model, x, ["a digit"] * 2, FinetuneOptions(method="full", steps=5, lr=lr, batch_size=2),
                 log=lambda m: None)


def test_lock_refuses_the_authorized_domain_as_unauthorized(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--authorized", "builtin:digits/mnist",
                            "--unauthorized", "builtin:digits/mnist", "--steps", "1"], capsys)
    one_line_error(code, err, "--unauthorized", "--authorized")
    dom = _class_folder(tmp_path / "dom", ["cat", "dog"])
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r2"), "--authorized", str(dom),
                            "--unauthorized", "./dom/", "--unauthorized", "builtin:digits/uci", "--steps", "1"], capsys)
    one_line_error(code, err, "--unauthorized", "./dom/")
    assert not (tmp_path / "r2" / "results.json").exists()


def test_audit_refuses_one_image_on_both_sides(tmp_path, capsys):
    a, b = _pngs(tmp_path / "a", 2, seed=1), _pngs(tmp_path / "b", 2, seed=2)
    base = ["audit", "--finetuned", "tiny:t2i", "--prompt", "a digit", "--steps", "1"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "o1"), "--members", str(a), "--holdout", f"{a}/"], capsys)
    one_line_error(code, err, "--members", "--holdout", "same folder")
    (b / "renamed.png").write_bytes((a / "1-0.png").read_bytes())  # one file under two names
    code, _, err = run_cli([*base, "--out", str(tmp_path / "o2"), "--images", str(a), "--calibration", str(b)],
                           capsys)
    one_line_error(code, err, "--images", "--calibration", "1-0.png", "renamed.png")


@pytest.mark.parametrize("cmd", [["watermark", "prompts"],
                                 ["watermark", "verify", "--model", "tiny:sleeper", "--codec", "tiny:sleeper-codec",
                                  "--key", "k", "--model-id", "m"],
                                 ["watermark", "embed", "--codec", "tiny:codec", "--key", "k", "--model-id", "m"]])
def test_an_empty_or_blank_trigger_is_refused(cmd, tmp_path, capsys):
    for trigger in ("", "  "):
        code, _, err = run_cli([*cmd, "--out", str(tmp_path / "o"), "--trigger", trigger], capsys)
        one_line_error(code, err, "--trigger", "blank")
    assert not (tmp_path / "o" / "results.json").exists()


def test_float16_on_the_cpu_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--method", "prune", "--dtype", "float16",
                            "--device", "cpu"], capsys)
    one_line_error(code, err, "float16", "CPU", "--dtype float32")
    from modelseal.models.diffusion import check_dtype

    check_dtype(torch.bfloat16, "cpu")  # bfloat16 runs on a CPU (SDXL at a small size does)


# --------------------------------------------------------------------------- messages

@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    from modelseal.attacks.finetune import add_lora
    from modelseal.models.diffusion import load_t2i

    folder = tmp_path_factory.mktemp("lora") / "lora"
    m = load_t2i("tiny:t2i")
    add_lora(m, 2)
    m.save_lora(folder, base="tiny:t2i")
    return folder


def test_a_corrupt_lora_is_not_blamed_on_the_base_model(tmp_path, lora):
    from safetensors.torch import load_file, save_file

    from modelseal.errors import InputError
    from modelseal.models.diffusion import LORA_FILE, load_t2i

    bad = _copy(lora, tmp_path / "x")
    data = (lora / LORA_FILE).read_bytes()
    (bad / LORA_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError) as e:
        load_t2i(bad)
    msg = str(e.value)
    assert LORA_FILE in msg and "corrupt, truncated" in msg and "base" not in msg and "trained on" not in msg
    state = load_file(str(lora / LORA_FILE))
    name = sorted(state)[0]
    save_file({**state, name: torch.zeros(3, 3)}, str(bad / LORA_FILE))
    with pytest.raises(InputError) as e:
        load_t2i(bad)
    msg = str(e.value)
    assert "does not fit the base model" in msg and name.split(".")[1] in msg and "is (3, 3) in the LoRA" in msg
    assert "\n" not in msg and "corrupt, truncated" not in msg


def test_a_codec_whose_config_does_not_match_its_weights_is_one_line(tmp_path):
    from modelseal.errors import InputError
    from modelseal.models.zoo import resolve_model
    from modelseal.watermark.codec import Codec

    folder = _copy(resolve_model("tiny:codec", "codec"), tmp_path / "codec")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["k"] += 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError) as e:
        Codec.from_pretrained(folder)
    msg = str(e.value)
    assert str(folder) in msg and "config.json" in msg and f"{cfg['k']}" in msg and "\n" not in msg


def test_a_model_whose_weights_do_not_fit_its_config_gives_our_own_line(tmp_path, capsys, zoo):
    t2i = _copy(zoo / "t2i", tmp_path / "t2i")
    cfg = json.loads((t2i / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] *= 2
    (t2i / "unet" / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "f"), "--model", str(t2i), "--method", "prune"], capsys)
    line = one_line_error(code, err, "unet", "config.json", "do not fit")
    assert "low_cpu_mem_usage" not in line and "ignore_mismatched_sizes" not in line and "http" not in line
    clip = _copy(zoo / "clip", tmp_path / "clip")  # transformers raises a bare RuntimeError here
    cfg = json.loads((clip / "config.json").read_text())
    cfg["projection_dim"] *= 2
    (clip / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "l"), "--model", str(clip), "--steps", "1",
                            "--unauthorized", "builtin:digits/mnist-m"],
                           capsys)
    line = one_line_error(code, err, "config.json", "text_projection.weight", "do not fit")
    assert "ignore_mismatched_sizes" not in line


def test_a_key_path_that_is_a_folder_says_so(tmp_path, capsys):
    from modelseal.errors import InputError
    from modelseal.watermark.keys import load_key

    with pytest.raises(InputError, match="is a folder"):
        load_key(tmp_path)
    code, _, err = run_cli(["watermark", "keygen", "--key", str(tmp_path), "--overwrite"], capsys)
    one_line_error(code, err, "is a folder")


def test_a_key_others_can_read_is_used_with_a_warning(tmp_path, capsys):
    import os

    from modelseal.watermark.keys import generate_key, load_key

    key = tmp_path / "k.key"
    secret = generate_key(key)
    capsys.readouterr()
    assert load_key(key) == secret and capsys.readouterr().err == ""  # 0600: nothing to say
    os.chmod(key, 0o644)
    assert load_key(key) == secret
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "others" in lines[0] and "chmod 600" in lines[0]


def test_a_looping_link_in_an_image_folder_is_named(tmp_path):
    import os

    from modelseal.data.folders import read_class_folders, read_image_folder
    from modelseal.errors import InputError

    folder = _pngs(tmp_path / "imgs", 2)
    os.symlink("loop.png", folder / "loop.png")
    with pytest.raises(InputError, match="loop.png.*loops"):
        read_image_folder(folder)
    tree = _class_folder(tmp_path / "tree", ["cat", "dog"])
    os.symlink("bird", tree / "bird")
    with pytest.raises(InputError, match="bird"):
        read_class_folders(tree)


def test_lock_eval_on_other_classes_names_both_sides(tmp_path, capsys):
    from modelseal.lock.checkpoint import backbone_hash, save_lock
    from modelseal.lock.ipclip import ProjectorConfig
    from modelseal.lock.run import LockModel
    from modelseal.models.clip import load_clip
    from dataclasses import asdict

    clip = load_clip("tiny:clip")
    projector = ProjectorConfig()
    lm = LockModel(clip, ["cat", "dog"], projector)
    save_lock(tmp_path / "ck", lm.trainable_state(), {
        "format": "modelseal-lock/1", "method": "ipclip", "scenario": "target-specified", "class_names": ["cat", "dog"],
        "projector": asdict(projector), "authorized": ["pets"],
        "backbone": {"source": "tiny:clip", "sha256": backbone_hash(clip.model)}})
    for cmd in (["lock", "eval"], ["lock", "verify"]):
        code, _, err = run_cli([*cmd, "--out", str(tmp_path / cmd[1]), "--checkpoint", str(tmp_path / "ck"), "--eval",
                                "builtin:digits/uci"], capsys)
        one_line_error(code, err, "checkpoint's classes and the data's classes differ", "cat, dog", "eight, five",
                       "builtin:digits/uci")


# --------------------------------------------------------------------------- long work talks

def test_audit_progress_lines_and_resume_go_to_a_piped_stderr(tmp_path, capsys, monkeypatch):
    import modelseal.audit.run as audit_run

    monkeypatch.setattr(audit_run._Progress, "EVERY_S", 0.0)  # every step (by default: every 30 s)
    m, h = _pngs(tmp_path / "m", 2, seed=1), _pngs(tmp_path / "h", 2, seed=2)
    args = ["audit", "--finetuned", "tiny:sleeper", "--prompt", "a digit", "--members", str(m), "--holdout", str(h),
            "--steps", "2", "--batch-size", "2", "--loss-samples", "2", "--no-evidence", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    for words in ("CGI-DM: members batch 1/1, PGD step 1/2", "CGI-DM: holdout batch 1/1, PGD step 2/2",
                  "loss scores, members: draw 2/2", "baselines: CLiD 4/4 images", "PIA: pretrained 4/4 images",
                  "PIA: suspect 4/4 images"):
        assert words in err, (words, err)
    assert "Loading weights" not in err and "resuming" not in err
    next(iter((tmp_path / "r" / "cache").glob("holdout-*/batch0000.safetensors"))).unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "resuming: 1 of 1 members batches were scored before" in err
    assert "resuming: 0 of" not in err and "holdout batch 1/1, PGD step 1/2" in err


def test_loading_a_model_prints_no_library_progress_bar(capsys):
    import transformers.utils.logging as tlog

    from modelseal.models.clip import load_clip
    from modelseal.models.diffusion import load_t2i

    tlog.enable_progress_bar()  # as in a fresh Python session
    tlog.set_verbosity_info()
    load_clip("tiny:clip")
    load_t2i("tiny:t2i")
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err


# --------------------------------------------------------------------------- what the code says of itself

def test_stats_exports_every_public_function():
    import inspect

    from modelseal import stats

    public = {n for n, f in inspect.getmembers(stats, inspect.isfunction)
              if f.__module__ == stats.__name__ and not n.startswith("_")}
    assert public <= set(stats.__all__), public - set(stats.__all__)
    assert all(hasattr(stats, n) for n in stats.__all__)


def test_verify_model_says_it_returns_a_tuple():
    import inspect

    from modelseal.watermark.verify import verify_model

    assert inspect.signature(verify_model).return_annotation.startswith("tuple[dict")


def test_runtime_text_carries_no_measured_figures():
    """Timings, memory and results belong in the docs, written by the benchmarks."""
    import re
    from pathlib import Path

    import modelseal

    pattern = re.compile(r"\b\d+(\.\d+)? ?(GB|GiB|minutes?|hours?)\b|about an hour|about a minute|on 2 CPU")
    hits = [f"{p.name}:{i}" for p in Path(modelseal.__file__).parent.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
