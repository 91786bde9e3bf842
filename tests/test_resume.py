"""Hostile input and interruptions: devices and --out folders refused at once (exit 2, one
line), Ctrl-C / SIGTERM leave an "interrupted" run that the same command resumes, one run
per folder. Every training command resumes from its checkpoint to the same result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import run_cli

from modelseal.errors import InputError
from modelseal.runs import RunFolder, TrainingCheckpoint, resolve_device

ROOT = Path(__file__).resolve().parents[1]
LOCK = ["lock", "train", "--unauthorized", "builtin:digits/mnist-m", "--batch-size", "4", "--train-limit", "32"]


@pytest.fixture(autouse=True)
def _ctrl_c_delivered():
    """A user's Ctrl-C reaches the process; a test run started in the background (`cmd &`
    without job control) inherits SIGINT ignored, which modelseal rightly keeps, so these
    tests give the process the interactive disposition while they run."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _config(out: Path) -> dict:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _interrupt_at(mp, module, name, at: int, sig=signal.SIGINT) -> None:
    """Send `sig` to this process from inside the at-th call of module.name (mid-step)."""
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*a, **kw):
        calls["n"] += 1
        if calls["n"] == at:
            signal.raise_signal(sig)
        return original(*a, **kw)

    mp.setattr(module, name, wrapped)


def _stop_and_resume(args: list[str], out: Path, capsys, at: int, steps: int, label: str) -> tuple[dict, str]:
    """Run `args` into `out`, stopped by Ctrl-C in training step `at` (one optimizer step per
    training step), then again: returns the resumed run's results and log."""
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, torch.optim.Optimizer, "zero_grad", at)
        code, stdout, err = run_cli([*args, "--out", str(out), "--json"], capsys)
    assert code == 130 and not stdout, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert _manifest(out)["status"] == "interrupted" and not (out / "results.json").exists()
    assert (out / "resume").is_dir()
    code, stdout, err = run_cli([*args, "--out", str(out), "--json"], capsys)
    assert code == 0, err
    assert f"[{label}] resuming from step {at} of {steps}" in err
    assert _manifest(out)["status"] == "done" and not (out / "resume").exists()
    return json.loads(stdout), err


def _reference(args: list[str], out: Path, capsys) -> dict:
    code, stdout, err = run_cli([*args, "--out", str(out), "--json"], capsys)
    assert code == 0, err
    return json.loads(stdout)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


# ---- devices ----------------------------------------------------------------------------

def test_cuda_index_beyond_the_gpus_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["lock", "train", "--out", str(tmp_path / "r"), "--device", "cuda:7"], capsys)
    assert code == 2 and "cuda:7" in _one_line(err) and not (tmp_path / "r").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="has 2 CUDA GPUs"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cuda") == "cuda"
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("cuda:x")


# ---- --out --------------------------------------------------------------------------------

def test_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "some_file").write_text("x")
    code, _, err = run_cli(["zoo", "eval", "--out", str(tmp_path / "some_file" / "run")], capsys)
    assert code == 2 and "is a file" in _one_line(err)


def test_bad_option_type_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(["lock", "train", "--out", str(tmp_path), "--steps", "ten"], capsys)
    line = _one_line(err)
    assert code == 2 and line.startswith("error:") and "--steps" in line and "--help" in line and not out
    code, _, err = run_cli(["lock", "train", "--stepz", "3", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--stepz" in _one_line(err)


def test_one_run_per_folder(tmp_path, capsys):
    out = tmp_path / "r"
    run = RunFolder(out, "zoo eval", {"steps": 3}, 0, "cpu")
    (out / "samples.png").write_bytes(b"old")  # what the run wrote
    run.finish({"x": 1})
    run.close()
    # another config, or another command: refused, nothing touched
    code, _, err = run_cli(["zoo", "eval", "--out", str(out), "--steps", "4"], capsys)
    line = _one_line(err)
    assert code == 2 and "'zoo eval' run with another config" in line and "--overwrite" in line
    code, _, err = run_cli(["watermark", "prompts", "--out", str(out)], capsys)
    assert code == 2 and "'zoo eval' run" in _one_line(err)
    assert (out / "samples.png").read_bytes() == b"old" and _manifest(out)["status"] == "done"
    # --overwrite: the old run is gone before the new one starts
    code, _, err = run_cli(["watermark", "prompts", "--out", str(out), "--n", "2", "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "samples.png").exists() and _manifest(out)["command"] == "watermark prompts"
    # the same command and config: runs again in place, the old results gone from the start
    again = RunFolder(out, "watermark prompts", _config(out), 0, "cpu")
    again.close()
    assert not (out / "results.json").exists() and (out / "clean.txt").is_file()
    assert run_cli(["watermark", "prompts", "--out", str(out), "--n", "2"], capsys)[0] == 0
    # a folder that is not a run: refused; --overwrite writes into it and deletes nothing
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, _, err = run_cli(["watermark", "prompts", "--out", str(other), "--n", "2"], capsys)
    assert code == 2 and "holds no modelseal run" in _one_line(err)
    assert run_cli(["watermark", "prompts", "--out", str(other), "--n", "2", "--overwrite"], capsys)[0] == 0
    assert (other / "notes.txt").read_text() == "keep" and (other / "results.json").is_file()


def test_a_run_that_stopped_before_writing_anything_gives_way(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(["watermark", "verify", "--out", str(out), "--model", "tiny:t2i", "--model-id", "m",
                            "--codec", str(tmp_path), "--key", str(tmp_path / "missing.key")], capsys)
    assert code == 2 and _manifest(out)["status"] == "failed"
    assert run_cli(["watermark", "prompts", "--out", str(out), "--n", "2"], capsys)[0] == 0
    assert _manifest(out)["command"] == "watermark prompts"


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    run = RunFolder(tmp_path / "r", "watermark prompts", {}, 0, "cpu")
    try:
        code, _, err = run_cli(["watermark", "prompts", "--out", str(tmp_path / "r")], capsys)
        assert code == 2 and "in use" in _one_line(err)
    finally:
        run.close()


# ---- interruption and resume ------------------------------------------------------------

def test_checkpoint_is_read_without_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "resume" / "x.pt"
    path.parent.mkdir()
    torch.save({"meta": None, "evil": Evil()}, path)
    logs = []
    p = torch.nn.Parameter(torch.zeros(3))
    ck = TrainingCheckpoint(path, "x", logs.append)
    assert ck.resume(5, [p]) == {} and ck.start == 0 and "cannot read" in logs[0]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_lock_train_ctrl_c_then_resume_gives_the_same_model(tmp_path, capsys, monkeypatch):
    from modelseal.lock import train

    args = [*LOCK, "--steps", "6"]
    expected = _reference(args, tmp_path / "ref", capsys)
    # Ctrl-C in the 9th step: the SL reference (6 steps) is done, IP-CLIP stops after its 3rd
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, train.parallel, "average_gradients", 9)
        code, out, err = run_cli([*args, "--out", str(run), "--json"], capsys)
    assert code == 130 and not out
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert _manifest(run)["status"] == "interrupted" and not (run / "results.json").exists()
    assert sorted(p.name for p in (run / "resume").iterdir()) == ["lock-sl.pt", "lock.pt"]
    code, out, err = run_cli([*args, "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert "[lock:supervised] resuming from step 6 of 6" in err and "[lock:ip-clip] resuming from step 3 of 6" in err
    got = json.loads(out)
    for key in ("accuracy", "accuracy_sl", "history", "W_ua"):
        assert got[key] == expected[key], key
    assert _manifest(run)["status"] == "done" and not (run / "resume").exists()


def test_finetune_resumes_to_the_same_model(tmp_path, capsys):
    args = ["finetune", "--method", "lora", "--data", "builtin:digits/mnist", "--limit", "16", "--steps", "6",
            "--batch-size", "2", "--rank", "2"]
    expected = _reference(args, tmp_path / "ref", capsys)
    got, _ = _stop_and_resume(args, tmp_path / "run", capsys, at=4, steps=6, label="finetune")
    assert got["loss_start"] == expected["loss_start"] and got["loss_end"] == expected["loss_end"]
    a = _tensors(tmp_path / "ref" / "model" / "pytorch_lora_weights.safetensors")
    b = _tensors(tmp_path / "run" / "model" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_watermark_codec_resumes_to_the_same_codec(tmp_path, capsys):
    args = ["watermark", "codec", "--bits", "16", "--steps", "6", "--limit", "48"]
    expected = _reference(args, tmp_path / "ref", capsys)
    got, _ = _stop_and_resume(args, tmp_path / "run", capsys, at=3, steps=6, label="codec")
    assert got["bit_accuracy"] == expected["bit_accuracy"]
    assert got["psnr_vs_vae_reconstruction"] == expected["psnr_vs_vae_reconstruction"]


def test_watermark_embed_and_adapt_resume(tmp_path, capsys):
    key = tmp_path / "k.key"
    assert run_cli(["watermark", "keygen", "--key", str(key)], capsys)[0] == 0
    args = ["watermark", "embed", "--codec", "tiny:codec", "--key", str(key), "--model-id", "m", "--steps", "4",
            "--limit", "16", "--batch-size", "2"]
    expected = _reference(args, tmp_path / "ref", capsys)
    got, _ = _stop_and_resume(args, tmp_path / "run", capsys, at=2, steps=4, label="embed")
    assert got["final"] == expected["final"]
    # adaptation needs a model stage 1 already verifies (watermark.provenance): the shipped sleeper
    from modelseal.models.sleeper_entry import entry_record
    from modelseal.watermark.keys import generate_key

    record = entry_record()
    demo = generate_key(tmp_path / "demo.key", secret=bytes.fromhex(record["demo_key"]["secret"]))
    assert demo
    cfg = tmp_path / "adapt.yaml"
    cfg.write_text("guidance: [1.0]\nimages: [4]\nsample_steps: 2\nlimit: 16\nbatch_size: 4\nsteps: 5\n"
                   "check_images: 8\n")
    args = ["watermark", "adapt", "--model", "tiny:sleeper", "--codec", "tiny:codec", "--key",
            str(tmp_path / "demo.key"), "--model-id", record["model_id"], "--trigger", record["trigger"],
            "--config", str(cfg)]
    expected = _reference(args, tmp_path / "aref", capsys)
    got, err = _stop_and_resume(args, tmp_path / "arun", capsys, at=3, steps=5, label="adapt")
    assert "latents generated before" in err
    assert got["final_losses"] == expected["final_losses"] and got["holdout_after"] == expected["holdout_after"]


def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(TrainingCheckpoint, "EVERY_S", 0.0)  # as if each step took a minute
    args = ["watermark", "codec", "--bits", "16", "--steps", "6", "--limit", "48", "--out", str(tmp_path)]
    original = torch.optim.Optimizer.zero_grad
    calls = {"n": 0}

    def crash_in_step_5(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("the disk caught fire")
        return original(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Optimizer, "zero_grad", crash_in_step_5)
        with pytest.raises(RuntimeError, match="caught fire"):
            run_cli(args, capsys)
    assert _manifest(tmp_path)["status"] == "failed"
    step = torch.load(tmp_path / "resume" / "codec.pt", weights_only=True)["step"]
    assert 1 <= step <= 4  # never a half step
    code, _, err = run_cli(args, capsys)
    assert code == 0 and f"[codec] resuming from step {step} of 6" in err, err


@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),  # the same path
                                      (signal.SIGINT, 130)])
def test_signal_to_a_running_command_saves_and_marks_it_interrupted(tmp_path, sig, code):
    """What a scheduler or `timeout` does (SIGTERM), and Ctrl-C, to a real process."""
    out = tmp_path / "r"
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "modelseal", *LOCK, "--steps", "100000", "--out", str(out),
                                 "--device", "cpu"],
                                stderr=f, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while "[lock:supervised] step 1/" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert _manifest(out)["status"] == "running", log.read_text()
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert rc == code, err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "rerun the same command" in err
    assert _manifest(out)["status"] == "interrupted"
    assert (out / "resume" / "lock-sl.pt").is_file()  # saved on the way out
    step = torch.load(out / "resume" / "lock-sl.pt", weights_only=True)["step"]
    assert 1 <= step < 100000
