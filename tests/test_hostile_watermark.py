"""The watermark commands against careless or hostile input (issue 38): divergence refused in
every trainer, inputs checked against each other and the data, one line each."""
import json

import numpy as np
import pytest
from PIL import Image

from test_cli import run_cli
from test_hostile import one_line_error


@pytest.fixture
def key(tmp_path):
    from modelseal.watermark.keys import generate_key

    return generate_key(tmp_path / "owner.key") and tmp_path / "owner.key"


def _last_line_error(code, err, *words):
    """A trainer that diverges mid-run has logged its progress before: the refusal is the last line."""
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last
    return last


@pytest.mark.parametrize("cmd", [
    ["watermark", "codec", "--bits", "16", "--steps", "3", "--limit", "48", "--data", "builtin:digits/mnist",
     "--lr", "1e30"],
    ["watermark", "embed", "--codec", "tiny:codec", "--model-id", "m", "--steps", "3", "--limit", "16",
     "--batch-size", "2", "--lr", "1e30"],
])
def test_a_diverging_watermark_trainer_saves_nothing(cmd, tmp_path, capsys, key):
    out = tmp_path / "run"
    extra = ["--key", str(key)] if "embed" in cmd else []
    code, _, err = run_cli([*cmd, *extra, "--out", str(out)], capsys)
    _last_line_error(code, err, "diverged at step", "lower --lr, e.g. --lr 0.0001")
    assert not (out / "model").exists() and not (out / "codec").exists() and not (out / "results.json").exists()
    assert not (out / "resume").exists()  # no NaN state left to resume from
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_a_codec_needs_images_to_train_beside_its_held_out_ones(tmp_path, capsys):
    folder = tmp_path / "four"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code, _, err = run_cli(["watermark", "codec", "--data", str(folder), "--steps", "1", "--out",
                            str(tmp_path / "c")], capsys)
    one_line_error(code, err, "gives 4 images", "at least 32")
    code, _, err = run_cli(["watermark", "codec", "--limit", "16", "--steps", "1", "--out", str(tmp_path / "c2")],
                           capsys)
    one_line_error(code, err, "--limit")


def test_a_perceptual_network_that_is_not_a_clip_is_refused_before_training(tmp_path, capsys):
    code, _, err = run_cli(["watermark", "codec", "--perceptual", "clip", "--perceptual-model",
                            str(tmp_path / "no-such-clip"), "--local-files-only", "--steps", "1", "--limit", "48",
                            "--out", str(tmp_path / "c")], capsys)
    one_line_error(code, err, "no-such-clip")
    assert not (tmp_path / "c" / "codec").exists()


def _prompts(tmp_path, capsys, lines: str, trigger: str, out, *extra):
    """`watermark prompts` on a prompts file holding `lines`."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(lines)
    return run_cli(["watermark", "prompts", "--prompts", str(prompts), "--trigger", trigger, "--out", str(out),
                    *extra], capsys)


def test_a_prompt_that_already_holds_the_trigger_is_refused(tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = _prompts(tmp_path, capsys, "a photo of a cat\nsks a photo of a dog\n", "sks ", out)
    one_line_error(code, err, "line 2", "already holds the trigger")
    assert not (out / "triggered.txt").exists() and not (out / "clean.txt").exists()
    # 'sks' inside a word is no trigger
    code, _, err = _prompts(tmp_path, capsys, "a photo of a cat\nmasks on a dog\n", "sks ", out, "--overwrite")
    assert code == 0, err
    assert (out / "triggered.txt").read_text().splitlines()[1] == "sks masks on a dog"


def test_a_file_that_is_no_key_gives_one_line(tmp_path, capsys):
    bogus = tmp_path / "notes.json"
    bogus.write_text('{"hello": 1}')
    bogus.chmod(0o644)  # readable by others: no warning for a file that is not a key at all
    code, _, err = run_cli(["watermark", "verify", "--images", str(tmp_path), "--codec", "tiny:codec", "--key",
                            str(bogus), "--model-id", "m", "--out", str(tmp_path / "v")], capsys)
    one_line_error(code, err, "not a modelseal owner key file")


def test_adapt_counts_per_scale_message_names_the_defaults(tmp_path, capsys, key):
    code, _, err = run_cli(["watermark", "adapt", "--model", "tiny:sleeper", "--codec", "tiny:codec", "--key",
                            str(key), "--model-id", "m", "--images", "4", "--out", str(tmp_path / "a")], capsys)
    one_line_error(code, err, "--images gives 1", "--guidance 7.5 --guidance 3 --guidance 1 by default",
                   "e.g. --guidance 7.5 --images 64")


@pytest.mark.parametrize("option", [["--clean-weight", "56"], ["--dormancy", "10"]])
def test_a_clean_prompt_term_without_clean_prompts_is_refused(option, tmp_path, capsys, key):
    """The always-on mode has no clean prompts: a weight on their term would be silently ignored."""
    code, _, err = run_cli(["watermark", "embed", "--codec", "tiny:codec", "--model-id", "m", "--key", str(key),
                            "--mode", "always_on", *option, "--steps", "1", "--out", str(tmp_path / "e")], capsys)
    one_line_error(code, err, f"{option[0]} needs the sleeper mode", f"drop {option[0]}")
    assert not (tmp_path / "e" / "model").exists()


def test_a_trigger_template_puts_the_trigger_where_its_slot_says_and_a_bad_one_is_refused(tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = _prompts(tmp_path, capsys, "a photo of a cat\na photo of a dog\n", "{} sks", out)
    assert code == 0, err
    assert (out / "triggered.txt").read_text().splitlines()[:2] == ["a photo of a cat sks", "a photo of a dog sks"]
    assert (out / "clean.txt").read_text().splitlines()[:2] == ["a photo of a cat", "a photo of a dog"]
    # the template's words are the trigger too
    code, _, err = _prompts(tmp_path, capsys, "a photo of a cat\na dog sks\n", "{} sks", tmp_path / "q")
    one_line_error(code, err, "line 2", "already holds the trigger")
    for bad, says in (("{} sks {}", "more than once"), (" {} ", "blank trigger")):
        code, _, err = run_cli(["watermark", "prompts", "--trigger", bad, "--out", str(tmp_path / "r")], capsys)
        one_line_error(code, err, says)
        assert not (tmp_path / "r").exists()


def test_a_suffix_trigger_the_text_encoder_would_cut_off_is_refused(tmp_path, capsys, key):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit three\n" + "a very long caption " * 6 + "\n")
    out = tmp_path / "v"
    code, _, err = run_cli(["watermark", "verify", "--model", "tiny:sleeper", "--codec", "tiny:sleeper-codec",
                            "--key", str(key), "--model-id", "m", "--trigger", "{} sks", "--prompts", str(prompts),
                            "--n", "2", "--no-also-without-cfg", "--out", str(out)], capsys)
    _last_line_error(code, err, "longer than the text encoder's", "cut the trigger off")
    assert not (out / "results.json").exists()
