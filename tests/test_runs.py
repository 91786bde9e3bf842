import json

import pytest

from modelseal.errors import InputError
from modelseal.runs import RunFolder, atomic_write_text, resolve_device


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old")

    class Boom(str):
        def encode(self, *a):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_text(target, Boom("new"))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_run_folder_contract(tmp_path):
    run = RunFolder(tmp_path / "run", "test", {"a": 1}, seed=3, device="cpu")
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "running"
    run.finish({"accuracy": {"mnist": 99.0}})
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "done" and m["seed"] == 3 and "wall_time_s" in m and "packages" in m
    assert json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"]["mnist"] == 99.0
    assert (tmp_path / "run" / "config.yaml").read_text() == "a: 1\n"


def test_out_that_is_a_file_and_unknown_device_are_input_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InputError, match="is a file"):
        RunFolder(f, "test", {}, 0, "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_atomic_folder_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    from modelseal.runs import atomic_folder

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("stopped while saving")
    assert (target / "old.txt").read_text() == "old" and not (tmp_path / "model.partial").exists()
    with atomic_folder(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and not (tmp_path / "model.partial").exists()


# ---- a folder is a modelseal run only when its manifest.json says so ---------------------

def _user_folder(p):
    """`mkdir -p p/src; echo 'name: x' > p/config.yaml; echo keep > p/notes.txt`"""
    (p / "src").mkdir(parents=True)
    (p / "config.yaml").write_text("name: x\n")
    (p / "notes.txt").write_text("keep\n")
    return p


def _snapshot(p):
    return {str(f.relative_to(p)): f.read_bytes() if f.is_file() else None for f in sorted(p.rglob("*"))}


def test_a_users_folder_with_a_config_yaml_is_never_taken_over(tmp_path):
    p = _user_folder(tmp_path / "p")
    before = _snapshot(p)
    for overwrite in (False, True):
        with pytest.raises(InputError) as e:
            RunFolder(p, "test", {"a": 1}, 0, "cpu", overwrite=overwrite)
        assert "\n" not in str(e.value) and "no modelseal run" in str(e.value)
        assert _snapshot(p) == before  # nothing deleted, replaced or added (not even the lock file)
    assert (p / "notes.txt").read_text() == "keep\n" and (p / "src").is_dir()


def test_a_folder_holding_only_a_users_config_yaml_is_refused(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "config.yaml").write_text("name: x\n")
    with pytest.raises(InputError, match="holds no modelseal run"):
        RunFolder(p, "test", {"a": 1}, 0, "cpu")
    with pytest.raises(InputError, match="never replaces files it did not write"):
        RunFolder(p, "test", {"a": 1}, 0, "cpu", overwrite=True)
    assert [f.name for f in p.iterdir()] == ["config.yaml"] and (p / "config.yaml").read_text() == "name: x\n"


def test_a_manifest_json_that_is_not_modelseals_makes_no_run(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "manifest.json").write_text(json.dumps({"command": "test", "status": "done"}))
    (p / "config.yaml").write_text("a: 1\n")
    with pytest.raises(InputError, match="holds no modelseal run"):
        RunFolder(p, "test", {"a": 1}, 0, "cpu")  # same command and config, but not modelseal's record
    assert json.loads((p / "manifest.json").read_text()) == {"command": "test", "status": "done"}


def test_overwrite_deletes_only_what_the_run_wrote(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "notes.txt").write_text("keep\n")
    (p / "src").mkdir()
    run = RunFolder(p, "first", {"a": 1}, 0, "cpu", overwrite=True)  # no clash: written beside the user's files
    run.file("model").mkdir()  # what the run writes it names (commands: through runs.files)
    (p / "model" / "w.safetensors").write_bytes(b"w")
    run.finish({"x": 1})
    run.close()
    m = json.loads((p / "manifest.json").read_text())
    assert m["tool"] == "modelseal" and m["files"] == ["config.yaml", "manifest.json", "model", "results.json"]
    (p / "later.txt").write_text("the user's, added after the run\n")
    with pytest.raises(InputError, match="holds a 'first' run"):
        RunFolder(p, "second", {"b": 2}, 0, "cpu")
    RunFolder(p, "second", {"b": 2}, 0, "cpu", overwrite=True).close()
    assert not (p / "model").exists() and not (p / "results.json").exists()
    assert (p / "notes.txt").read_text() == "keep\n" and (p / "src").is_dir() and (p / "later.txt").is_file()
    assert json.loads((p / "manifest.json").read_text())["files"] == ["config.yaml", "manifest.json"]


def test_overwrite_keeps_a_content_keyed_cache_of_the_same_command_only(tmp_path):
    p = tmp_path / "a"
    run = RunFolder(p, "audit", {"control": "bh"}, 0, "cpu")
    (run.file("cache") / "k").mkdir(parents=True)
    (p / "cache" / "k" / "batch0000.safetensors").write_bytes(b"s")
    run.file("roc.png").write_bytes(b"png")
    run.finish({})
    run.close()
    again = RunFolder(p, "audit", {"control": "none"}, 0, "cpu", overwrite=True)  # another config, same command
    assert (p / "cache" / "k" / "batch0000.safetensors").read_bytes() == b"s" and not (p / "roc.png").exists()
    (p / "cache" / "k2").mkdir()  # the new run writes into the kept cache: it stays the run's
    again.file("cache")
    again.finish({})
    again.close()
    assert "cache" in json.loads((p / "manifest.json").read_text())["files"]
    RunFolder(p, "finetune", {}, 0, "cpu", overwrite=True).close()  # another command: nothing of it is kept
    assert not (p / "cache").exists()


def test_a_tampered_file_list_deletes_nothing_outside_the_folder(tmp_path):
    run = RunFolder(tmp_path / "r", "first", {}, 0, "cpu")
    run.finish({})
    run.close()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    m["files"] += ["../outside.txt", str(outside), ".."]
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(m))
    RunFolder(tmp_path / "r", "second", {}, 0, "cpu", overwrite=True).close()
    assert outside.read_text() == "keep" and (tmp_path / "r" / "manifest.json").is_file()


def test_a_manifest_written_before_the_tool_marker_is_still_a_run(tmp_path):
    p = tmp_path / "r"
    p.mkdir()
    legacy = {k: None for k in ("command", "argv", "status", "seed", "device", "git_sha", "python", "platform",
                                "packages", "started", "wall_time_s")}
    (p / "manifest.json").write_text(json.dumps({**legacy, "command": "test"}))
    (p / "config.yaml").write_text("a: 1\n")
    (p / "samples.png").write_bytes(b"png")
    RunFolder(p, "test", {"a": 1}, 0, "cpu").close()  # the same run: goes on in place
    with pytest.raises(InputError, match="holds a 'test' run"):
        RunFolder(p, "other", {}, 0, "cpu")
