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
