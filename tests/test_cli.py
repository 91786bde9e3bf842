import json
import os

import pytest
import torch

from modelseal.cli import app, main
from modelseal.demo import section_groups


def run_cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("cmd", list(_commands(app)), ids=" ".join)
def test_every_command_has_help(cmd, capsys):
    code, out, _ = run_cli([*cmd, "--help"], capsys)
    assert code == 0 and "Usage" in out


def test_data_list_json(capsys):
    code, out, _ = run_cli(["data", "list", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["source"] for r in rows][0] == "builtin:digits/mnist"


def test_bad_yaml_and_bad_values_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\nguidance: 3\n")
    code, out, err = run_cli(["zoo", "eval", "--out", str(tmp_path / "r"), "--config", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("stepz: 3\n")
    code, _, err = run_cli(["zoo", "eval", "--out", str(tmp_path / "r"), "--config", str(unknown)], capsys)
    assert code == 2 and "stepz" in err
    code, _, err = run_cli(["zoo", "eval", "--out", str(tmp_path / "r"), "--steps", "0"], capsys)
    assert code == 2 and "steps" in err
    assert not (tmp_path / "r" / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_exits_2(tmp_path, capsys):
    code, _, err = run_cli(["zoo", "eval", "--out", str(tmp_path), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err


def test_zoo_list_shows_the_shipped_zoo(capsys):
    code, out, _ = run_cli(["zoo", "list", "--json"], capsys)
    rows = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"tiny:clip", "tiny:t2i", "tiny:judge", "tiny:codec", "tiny:sleeper"}
    assert all(r["origin"].startswith("shipped") and len(r["sha256"]) == 64 for r in rows.values())
    assert sum(r["size_mb"] for r in rows.values()) <= 25.0
    assert rows["tiny:sleeper"]["params_m"] < 0.1 * rows["tiny:t2i"]["params_m"]  # only stage 2's weights ship


def test_zoo_eval_meets_the_zoo_targets(tmp_path, capsys):
    """The shipped zoo: CLIP zero-shot >= 80% on every domain's full test split; >= 70% of
    T2I samples read as the prompted digit by the independent judge (80 samples here)."""
    code, out, err = run_cli(["zoo", "eval", "--out", str(tmp_path), "--per-prompt", "2", "--steps", "20", "--json"],
                             capsys)
    assert code == 0, err
    res = json.loads(out)
    assert json.loads((tmp_path / "results.json").read_text()) == res
    assert set(res["clip_zero_shot"]) == {"mnist", "uci", "mnist-m", "syn"}
    assert min(res["clip_zero_shot"].values()) >= 80.0, res["clip_zero_shot"]
    assert res["t2i_prompt_accuracy"] >= 70.0, res["t2i_prompt_accuracy_by_domain"]
    assert (tmp_path / "samples.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["seed"] == 0 and manifest["device"] == "cpu"
    assert {"torch", "transformers", "diffusers"} <= set(manifest["packages"])
    assert (tmp_path / "config.yaml").read_text().startswith("per_prompt: 2")


@pytest.mark.slow
def test_demo_quick_writes_a_self_contained_report(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and "src='http" not in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    # the quick zoo section samples as `zoo eval --per-prompt 1 --steps 20`: the zoo targets hold
    zoo = summary["zoo"]
    assert zoo["t2i_prompt_accuracy"] >= 70.0 and min(zoo["clip_zero_shot"].values()) >= 80.0, zoo
    assert set(summary["section_seconds"]) == {"zoo", "lock", "audit", "watermark"}
    assert summary["processes"] == min(2, os.cpu_count())  # on a CPU: two single-threaded workers
    wm = summary["watermark"]  # the shipped sleeper, its adapted extractor, the published demo key
    assert wm["verify"]["watermarked"] and wm["verify"]["tpr_at_fpr"]["1e-6"] >= 0.9
    assert wm["verify"]["bit_accuracy"] >= wm["verify"]["clean_bit_accuracy"] + 0.3  # the trigger, not the model
    assert wm["verify"]["bit_accuracy"] > wm["stage1_extractor"]["bit_accuracy"]
    assert wm["wrong_key"]["watermarked"] is False   # a stranger's key (fails at rate alpha = 1e-3)
    assert wm["unmarked"]["watermarked"] is False    # the never-watermarked tiny:t2i, read with the demo key
    first = wm["finetune"][0]
    assert first["step"] == 0 and first["verdict"] == "watermarked" and first["judged accuracy kept"] > 0.8
    assert wm["embed"]["steps"] == 60 and "keep_clean" in wm["embed"]["final"]
    assert "key test p" in html and "not verified" in html and "judged accuracy kept" in html
    # what the mark costs stands beside the verdicts: triggered against clean images of the same seeds
    tf = wm["verify"]["trigger_fidelity"]
    assert 0 < tf["psnr"] < 100 and 0 <= tf["judged_triggered"] <= 1 and tf["judged_clean"] >= 0.5
    assert "PSNR vs clean (dB)" in html and "judged digit, triggered / clean" in html
    assert all("psnr" in a for a in wm["attacks"].values())


def test_demo_sections_are_split_between_processes_by_weight():
    assert section_groups(["zoo", "lock", "audit", "watermark"], 2) == [["zoo", "watermark"], ["lock", "audit"]]
    assert section_groups(["zoo", "lock", "audit", "watermark"], 1) == [["zoo", "lock", "audit", "watermark"]]
    assert section_groups(["lock"], 2) == [["lock"]]  # never an idle worker


def test_a_failed_run_is_marked_failed_with_its_error(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["watermark", "adapt", "--model", str(tmp_path / "no-such-model"), "--codec", "tiny:codec",
                            "--key", str(tmp_path / "k"), "--model-id", "x", "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "InputError" in manifest["error"]
    assert not (out / "results.json").exists()
