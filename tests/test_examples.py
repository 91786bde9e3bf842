"""Each script of examples/ runs in a fresh process at its tiny size and shows its effect.

They use only the public API (`import modelseal`), as a user would; the figures they print
are checked in the results.json of the runs they write."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, out: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), str(out), "--size", "tiny",
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, f"examples/{name}.py failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_lock_example_locks_mnist_m_and_tells_ours_from_not_ours(tmp_path):
    stdout = run_example("lock", tmp_path)
    assert "locked out" in stdout and "lock_verify" in stdout
    res = results(tmp_path / "lock")
    assert res["accuracy"]["mnist"] >= res["accuracy_sl"]["mnist"] - 5, res
    assert res["accuracy"]["mnist-m"] <= res["chance"] + 20, res  # SL reads it at about 80 %
    assert results(tmp_path / "eval")["accuracy"]["mnist-m"] == res["accuracy"]["mnist-m"]
    assert results(tmp_path / "verify-checkpoint")["verdict"] == "ours"
    assert results(tmp_path / "verify-checkpoint-sl")["verdict"] == "not ours"


def test_watermark_example_verifies_the_shipped_sleeper_only_with_its_key(tmp_path):
    stdout = run_example("watermark", tmp_path)
    assert "tiny:sleeper, owner's key: watermarked=True" in stdout, stdout
    owner = results(tmp_path / "verify")
    assert owner["watermarked"] and owner["p_value"] < 1e-6, owner
    assert not results(tmp_path / "verify-wrong-key")["watermarked"]
    assert not results(tmp_path / "verify-unmarked")["watermarked"]
    assert (tmp_path / "embed" / "model").is_dir() and (tmp_path / "prompts" / "triggered.txt").is_file()


@pytest.mark.slow
def test_audit_example_finds_the_members_and_the_collection(tmp_path):
    stdout = run_example("audit", tmp_path)
    assert "members vs hold-out: AUROC" in stdout, stdout
    assert results(tmp_path / "evaluation")["auroc"] >= 0.75
    case = results(tmp_path / "case")
    assert case["set_verdict"] == "used", case
    assert any((tmp_path / "evaluation" / "evidence").iterdir())


def test_finetune_example_moves_the_model_and_compresses_it(tmp_path):
    stdout = run_example("finetune", tmp_path)
    assert "mean pixel change" in stdout, stdout
    lora = results(tmp_path / "lora")
    assert lora["loss_end"] < lora["loss_start"], lora
    assert abs(results(tmp_path / "prune")["pruned_fraction"] - 0.3) < 0.01
    assert results(tmp_path / "quantize")["bits"] == 4
    assert (tmp_path / "samples.png").stat().st_size > 0
