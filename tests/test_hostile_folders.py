"""A careless or hostile user, continued (issue 38): no file the user owns is lost or listed as a
run's, the Python API answers every wrong type with one InputError, seeds are bounded, config
files are read strictly, options are checked before anything heavy loads, a damaged zoo is one
line, and resuming refuses changed inputs. Each case checks its effect (the user's file still
there with its content, the manifest not listing it), not only the exit code."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

import modelseal
from modelseal.config import CONFIGS, LockTrainConfig, load_config
from modelseal.errors import InputError
from modelseal.runs import LOCK_FILE, RunFolder, TrainingCheckpoint, atomic_write_text
from test_cli import run_cli
from test_hostile import one_line_error


def _snapshot(p: Path) -> dict:
    return {str(f.relative_to(p)): f.read_bytes() if f.is_file() else None for f in sorted(p.rglob("*"))}


def _users_folder(p: Path) -> Path:
    (p / "photos").mkdir(parents=True)
    (p / "photos" / "cat.jpg").write_bytes(b"not really a jpeg")
    (p / "thesis.txt").write_text("five years of work\n")
    return p


def _manifest(p: Path) -> dict:
    return json.loads((p / "manifest.json").read_text())


# --------------------------------------------------------------------------- zoo build

def test_zoo_build_into_a_users_folder_is_refused_and_writes_nothing_beside_it(tmp_path, capsys):
    user = _users_folder(tmp_path / "mine")
    before = _snapshot(user)
    code, _, err = run_cli(["zoo", "build", "--config", "zoo-build.micro", "--no-eval", "--out", str(user)], capsys)
    one_line_error(code, err, "not empty")
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no mine.build/ or mine.run/ beside it


def test_zoo_build_from_a_unet_that_is_not_there_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "empty-t2i").mkdir()
    code, _, err = run_cli(["zoo", "build", "--preset", "micro", "--no-eval", "--unet-init", str(tmp_path / "empty-t2i"),
                            "--out", str(tmp_path / "zoo")], capsys)
    one_line_error(code, err, "unet_init", "has no UNet weights")
    code, _, err = run_cli(["zoo", "build", "--preset", "micro", "--no-eval", "--unet-init", str(tmp_path / "no-t2i"),
                            "--out", str(tmp_path / "zoo")], capsys)
    one_line_error(code, err, "no-t2i", "does not exist")
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").rglob("*.safetensors"))


def test_zoo_build_over_a_users_clip_folder_is_refused_naming_it(tmp_path, capsys):
    user = _users_folder(tmp_path / "mine")
    (user / "clip").mkdir()
    (user / "clip" / "notes.md").write_text("my CLIP notes\n")
    before = _snapshot(user)
    code, _, err = run_cli(["zoo", "build", "--preset", "micro", "--no-eval", "--overwrite", "--out", str(user)],
                           capsys)
    one_line_error(code, err, "'clip'", "move or rename")
    assert _snapshot(user) == before


def test_a_zoo_built_before_it_was_a_run_folder_is_taken_over_in_place(tmp_path):
    from modelseal.zoobuild.build import adopt_legacy_zoo

    zoo = tmp_path / "zoo"
    (zoo / "clip").mkdir(parents=True)
    (zoo / "zoo.json").write_text(json.dumps({"config": {}, "stages": {}}))
    assert adopt_legacy_zoo(zoo)
    assert _manifest(zoo)["files"] == ["clip", "manifest.json", "zoo.json"]
    RunFolder(zoo, "zoo build", {"preset": "micro"}, 0, "cpu", replace=True).close()  # goes on there
    assert (zoo / "clip").is_dir() and not (zoo / LOCK_FILE).exists()
    user = _users_folder(tmp_path / "mine")
    (user / "zoo.json").write_text(json.dumps({"config": {}, "stages": {}}))
    assert not adopt_legacy_zoo(user)  # the user's files beside it: not a zoo modelseal wrote
    assert not (user / "manifest.json").exists()


@pytest.mark.slow
def test_zoo_build_beside_a_users_files_keeps_them_and_writes_nothing_outside(tmp_path, capsys):
    user = _users_folder(tmp_path / "mine")
    code, out, err = run_cli(["zoo", "build", "--preset", "micro", "--no-eval", "--overwrite", "--json", "--out",
                              str(user)], capsys)
    assert code == 0, err
    assert (user / "thesis.txt").read_text() == "five years of work\n"
    assert (user / "photos" / "cat.jpg").read_bytes() == b"not really a jpeg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    files = _manifest(user)["files"]
    assert "thesis.txt" not in files and "photos" not in files and {"clip", "t2i", "zoo.json"} <= set(files)
    assert (user / "results.json").is_file() and not (user / LOCK_FILE).exists()
    code, _, err = run_cli(["zoo", "build", "--preset", "micro", "--no-eval", "--out", str(user)], capsys)
    assert code == 0 and "already built, kept" in err


# --------------------------------------------------------------------------- files saved during a run

def test_a_file_saved_in_the_run_folder_while_the_run_works_is_never_listed_or_deleted(tmp_path):
    p = tmp_path / "run"

    def log(msg):  # the user saves a file there while the run works
        (p / "mine.txt").write_text("the user's\n")

    modelseal.watermark_prompts(out=p, n=4, log=log)
    assert (p / "mine.txt").read_text() == "the user's\n"
    files = _manifest(p)["files"]
    assert "mine.txt" not in files and "triggered.txt" in files
    modelseal.watermark_prompts(out=p, n=5, overwrite=True, log=lambda m: None)  # another config: replaces the run
    assert (p / "mine.txt").read_text() == "the user's\n"
    assert "mine.txt" not in _manifest(p)["files"]


def test_a_run_never_writes_over_a_file_saved_while_it_works(tmp_path):
    p = tmp_path / "run"
    run = RunFolder(p, "watermark prompts", {"n": 1}, 0, "cpu")
    try:
        (p / "surprise.txt").write_text("saved by the user meanwhile\n")
        with pytest.raises(InputError, match="surprise.txt"):
            atomic_write_text(p / "surprise.txt", "the run's")
        atomic_write_text(p / "triggered.txt", "a\n")  # what the run writes: its own
        run.finish({})
    finally:
        run.close()
    assert (p / "surprise.txt").read_text() == "saved by the user meanwhile\n"
    assert _manifest(p)["files"] == ["config.yaml", "manifest.json", "results.json", "triggered.txt"]


def test_an_older_manifest_that_listed_a_users_file_does_not_get_it_deleted(tmp_path):
    p = tmp_path / "run"
    run = RunFolder(p, "watermark prompts", {"n": 1}, 0, "cpu")
    atomic_write_text(p / "triggered.txt", "a\n")
    run.finish({})
    run.close()
    (p / "notes.txt").write_text("keep\n")
    m = _manifest(p)
    del m["manifest_version"]  # written before only what the run wrote was listed
    m["files"].append("notes.txt")
    (p / "manifest.json").write_text(json.dumps(m))
    RunFolder(p, "lock train", {}, 0, "cpu", overwrite=True).close()
    assert (p / "notes.txt").read_text() == "keep\n" and not (p / "triggered.txt").exists()


# --------------------------------------------------------------------------- name clashes

def test_overwrite_never_replaces_a_users_entry_of_an_output_name(tmp_path, capsys):
    out = tmp_path / "f"
    (out / "model").mkdir(parents=True)
    (out / "model" / "my_own_weights.txt").write_text("mine\n")
    before = _snapshot(out)
    code, _, err = run_cli(["finetune", "--method", "prune", "--out", str(out), "--overwrite"], capsys)
    one_line_error(code, err, "'model'")
    assert _snapshot(out) == before
    out = tmp_path / "p"
    out.mkdir()
    (out / "triggered.txt").write_text("my own prompts\n")
    code, _, err = run_cli(["watermark", "prompts", "--out", str(out), "--overwrite"], capsys)
    one_line_error(code, err, "'triggered.txt'")
    assert [f.name for f in out.iterdir()] == ["triggered.txt"]
    assert (out / "triggered.txt").read_text() == "my own prompts\n"


def test_a_write_into_an_entry_that_is_not_the_runs_is_refused(tmp_path):
    p = tmp_path / "r"
    p.mkdir()
    (p / "notes.txt").write_text("keep\n")
    run = RunFolder(p, "lock eval", {}, 0, "cpu", overwrite=True)  # written beside the user's file
    try:
        with pytest.raises(InputError, match="notes.txt"):
            atomic_write_text(p / "notes.txt", "the run's")
    finally:
        run.close()
    assert (p / "notes.txt").read_text() == "keep\n"


# --------------------------------------------------------------------------- the lock file

def test_the_lock_file_is_removed_when_a_run_ends(tmp_path):
    p = tmp_path / "done"
    modelseal.watermark_prompts(out=p, n=2, log=lambda m: None)
    assert not (p / LOCK_FILE).exists()
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        q = tmp_path / type(error).__name__

        def body(cfg, path, dev, log):
            raise error

        with pytest.raises(type(error)):
            modelseal.api.execute("watermark prompts", None, {}, body, out=q, device="cpu", log=lambda m: None)
        assert not (q / LOCK_FILE).exists() and _manifest(q)["status"] in ("failed", "interrupted")
    run = RunFolder(tmp_path / "held", "lock eval", {}, 0, "cpu")
    with pytest.raises(InputError, match="in use"):
        RunFolder(tmp_path / "held", "lock eval", {}, 0, "cpu")
    run.close()
    RunFolder(tmp_path / "held", "lock eval", {}, 0, "cpu").close()  # free again
    assert not (tmp_path / "held" / LOCK_FILE).exists()


# --------------------------------------------------------------------------- the API's types

@pytest.mark.parametrize("kwargs, words", [
    ({"out": None}, "out is required"), ({"out": 123}, "out must be a path"),
    ({"overwrite": "no"}, "overwrite must be True or False"), ({"overwrite": "false"}, "overwrite"),
    ({"device": 7}, "device must be a string"), ({"log": "stderr"}, "log must be a function"),
    ({"steps": True}, "--steps"), ({"steps": None}, "--steps cannot be None"),
    ({"seed": 2 ** 70}, "--seed"),
])
def test_the_api_answers_a_wrong_type_with_one_input_error(tmp_path, kwargs, words):
    kwargs = {"out": tmp_path / "run", **kwargs}
    with pytest.raises(InputError) as e:
        modelseal.lock_train(**kwargs)
    assert words in str(e.value) and "\n" not in str(e.value) and "fix:" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder


@pytest.mark.parametrize("config", [5, [1, 2], 2.5])
def test_the_api_refuses_a_config_of_the_wrong_type(tmp_path, config):
    with pytest.raises(InputError, match="config must be"):
        modelseal.lock_train(config, out=tmp_path / "run")


@pytest.mark.parametrize("key", [None, ["a.key"], 123])
def test_keygen_refuses_a_key_that_is_not_a_path(key):
    with pytest.raises(InputError, match="key"):
        modelseal.watermark_keygen(key)


def test_every_path_option_takes_str_and_pathlike_and_a_wrong_type_names_the_option(tmp_path):
    cfg = load_config(None, LockTrainConfig, {"authorized": tmp_path, "unauthorized": [tmp_path / "u"]})
    assert cfg.authorized == str(tmp_path) and cfg.unauthorized == [str(tmp_path / "u")]
    audit = load_config(None, CONFIGS["audit"], {"finetuned": tmp_path, "members": str(tmp_path)})
    assert audit.finetuned == str(tmp_path) and audit.members == tmp_path
    with pytest.raises(InputError) as e:
        load_config(None, CONFIGS["audit"], {"members": ["a.png", "b.png"]}, command="audit")
    assert "--members" in str(e.value) and "e.g." in str(e.value) and "pathlib" not in str(e.value)


def test_bools_are_not_numbers_and_none_is_refused_only_where_it_is_no_value():
    with pytest.raises(InputError, match="--bits"):
        load_config(None, CONFIGS["finetune"], {"bits": True})
    with pytest.raises(InputError, match="--images"):
        load_config(None, CONFIGS["watermark-adapt"], {"images": [True, 2, 3]})
    assert load_config(None, CONFIGS["finetune"], {"lr": None}, keep_none=True).lr is None  # None is its default
    assert load_config(None, CONFIGS["finetune"], {"steps": None}).steps == 500  # library use: None is unset


# --------------------------------------------------------------------------- seeds

def test_every_seed_is_bounded(capsys, tmp_path):
    assert all("seed" in model.model_fields for model in CONFIGS.values())
    for model in CONFIGS.values():
        for bad in (-1, 2 ** 32, 99999999999999999999):
            with pytest.raises(ValidationError) as e:
                model.model_validate({"seed": bad})
            assert any(err["loc"] == ("seed",) for err in e.value.errors()), model
    for args in (["lock", "train"], ["finetune"], ["watermark", "prompts"]):
        for seed in ("99999999999999999999", "-1"):
            code, _, err = run_cli([*args, "--seed", seed, "--out", str(tmp_path / "r")], capsys)
            one_line_error(code, err, "--seed")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- config files

def test_duplicate_keys_in_a_config_file_are_refused_naming_key_and_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 3\nlr: 0.1\nsteps: 4\n")
    code, _, err = run_cli(["lock", "train", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "'steps'", "line 3")
    with pytest.raises(InputError, match="'steps'"):
        modelseal.lock_train(str(cfg), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_run_arguments_in_a_config_file_say_where_they_belong(tmp_path, capsys):
    for key, value in (("out", "runs/x"), ("device", "cpu"), ("overwrite", "true")):
        cfg = tmp_path / f"{key}.yaml"
        cfg.write_text(f"{key}: {value}\nsteps: 3\n")
        code, _, err = run_cli(["lock", "train", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
        line = one_line_error(code, err, f"'{key}'")
        assert "did you mean" not in line and ("keyword" in line or "command line" in line)


def test_config_show_prints_only_modelseal_configs(tmp_path, capsys):
    code, out, err = run_cli(["config", "show", "/etc/passwd"], capsys)
    one_line_error(code, err)
    assert out == ""
    other = tmp_path / "other.yaml"
    other.write_text("password: hunter2\nhost: example.org\n")
    code, out, err = run_cli(["config", "show", str(other)], capsys)
    one_line_error(code, err, "not a modelseal config")
    assert "hunter2" not in out + err
    mine = tmp_path / "mine.yaml"
    mine.write_text("steps: 30\nmethod: supervised\n")
    code, out, _ = run_cli(["config", "show", str(mine)], capsys)
    assert code == 0 and out == "steps: 30\nmethod: supervised\n"
    code, out, _ = run_cli(["config", "show", "lock-train"], capsys)
    assert code == 0 and "method:" in out


# --------------------------------------------------------------------------- checked before heavy imports

def test_a_bad_option_is_answered_before_torch_or_diffusers_load(tmp_path):
    code = ("import sys\nfrom modelseal.cli import main\ntry:\n    main(['lock', 'train', '--out', sys.argv[1], "
            "'--steps', '0'])\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules, "
            "'diffusers' in sys.modules, 'transformers' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.stdout.split() == ["2", "False", "False", "False"], r.stdout + r.stderr
    assert r.stderr.startswith("error: --steps") and not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- a damaged zoo

def test_a_damaged_rebuilt_zoo_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    import shutil

    from modelseal.models.zoo import SHIPPED_ZOO

    home = tmp_path / "home"
    zoo = home / "zoo"
    zoo.mkdir(parents=True)
    shutil.copytree(SHIPPED_ZOO / "clip", zoo / "clip")
    shutil.copy2(SHIPPED_ZOO / "zoo.json", zoo / "zoo.json")
    monkeypatch.setenv("MODELSEAL_HOME", str(home))
    (zoo / "clip" / "config.json").write_text("{garbage")
    for args in (["zoo", "list"], ["lock", "train", "--out", str(tmp_path / "r"), "--steps", "1",
                                   "--unauthorized", "builtin:digits/mnist-m"]):
        code, _, err = run_cli(args, capsys)
        one_line_error(code, err, str(zoo), "config.json", "zoo build")
    shutil.copy2(SHIPPED_ZOO / "clip" / "config.json", zoo / "clip" / "config.json")
    weights = next((zoo / "clip").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(["zoo", "list"], capsys)
    one_line_error(code, err, weights.name, "zoo build")


# --------------------------------------------------------------------------- resuming

def _loop(path, data, steps_done=0):
    import torch

    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    ck = TrainingCheckpoint(path, "t", inputs={"--data": data})
    ck.resume(5, [p], opt)
    return ck, p


def test_resume_refuses_changed_data_and_goes_on_with_the_same(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.png").write_bytes(b"x" * (i + 1))
    path = tmp_path / "resume" / "t.pt"
    ck, _ = _loop(path, data)
    for step in ck.steps():
        if step == 1:
            break
    ck.done = 2
    ck.save()
    ck, _ = _loop(path, data)
    assert ck.start == 2  # the same data: goes on
    for i in range(4, 7):
        (data / f"{i}.png").write_bytes(b"y")
    with pytest.raises(InputError) as e:
        _loop(path, data)
    assert "--data" in str(e.value) and "changed since the run was interrupted" in str(e.value)
    assert "--overwrite" in str(e.value)


def test_reading_a_checkpoint_prints_no_library_warning(tmp_path, monkeypatch):
    import torch

    def noisy_load(*a, **k):
        warnings.warn("torch.load is about to fail", UserWarning)
        raise RuntimeError("tampered")

    path = tmp_path / "t.pt"
    path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(torch, "load", noisy_load)
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck = TrainingCheckpoint(path, "t", log=lines.append)
        ck.resume(3, [torch.nn.Parameter(torch.zeros(1))])
    assert not caught and len(lines) == 1 and "cannot read" in lines[0]
