"""A forger cannot make modelseal say "watermarked" about a model nobody marked: adaptation
needs stage 1's verification first, an adapted codec carries its provenance and stage-1
extractor, and verification reads both, at alpha together (watermark.provenance)."""
import json
import shutil

import numpy as np
import pytest
import torch

from test_cli import run_cli
from test_hostile import one_line_error


def _demo_key(tmp_path):
    from modelseal.models.sleeper_entry import entry_record
    from modelseal.watermark.keys import generate_key

    record = entry_record()
    path = tmp_path / "demo.key"
    if not path.exists():
        generate_key(path, secret=bytes.fromhex(record["demo_key"]["secret"]))
    return path, record


def test_adapt_refuses_a_model_stage_one_does_not_verify(tmp_path, capsys):
    """The forgery of issue 38: a fresh key, adapt on the never-marked tiny:t2i."""
    key = tmp_path / "forger.key"
    assert run_cli(["watermark", "keygen", "--key", str(key)], capsys)[0] == 0
    out = tmp_path / "adapt"
    code, _, err = run_cli(["watermark", "adapt", "--model", "tiny:t2i", "--codec", "tiny:codec", "--key", str(key),
                            "--model-id", "test", "--steps", "300", "--check-images", "8", "--out", str(out)], capsys)
    line = one_line_error(code, err, "stage-1 extractor does not find", "tiny:t2i")
    assert "--key" in line
    assert not (out / "codec").exists() and not (out / "results.json").exists()


def test_adapt_refuses_an_adapted_codec_as_its_input(tmp_path, capsys):
    key, record = _demo_key(tmp_path)
    code, _, err = run_cli(["watermark", "adapt", "--model", "tiny:sleeper", "--codec", "tiny:sleeper-codec",
                            "--key", str(key), "--model-id", record["model_id"], "--out", str(tmp_path / "a")], capsys)
    one_line_error(code, err, "already adapted", "stage-1 codec")


def test_the_shipped_adapted_codec_carries_its_stage_one_extractor():
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.provenance import is_adapted, load_stage1

    adapted, stage1 = Codec.from_pretrained("tiny:sleeper-codec"), Codec.from_pretrained("tiny:codec")
    assert is_adapted(adapted) and not is_adapted(stage1)
    carried, prov = load_stage1(adapted)
    assert prov["stage1_evidence"]["watermarked"] and prov["fitted_model"] == "tiny:sleeper"
    for name, t in stage1.extractor.state_dict().items():
        assert torch.equal(carried.extractor.state_dict()[name], t), name
    assert any(not torch.equal(adapted.extractor.state_dict()[n], t) for n, t in stage1.extractor.state_dict().items())


def test_two_readings_keep_random_keys_at_alpha():
    """The verdict's union of two key tests over many random keys (here independent reads, the
    worst case for a union) passes at most alpha of them; min(p) alone would not."""
    from modelseal import stats
    from modelseal.watermark.verify import combine_readings, decide, union_p

    rng = np.random.default_rng(0)
    k, alpha, keys = 16, 0.05, 20_000
    read_a, read_b = rng.integers(0, 2, (12, k)), rng.integers(0, 2, (12, k))
    msgs = rng.integers(0, 2, (keys, k))
    for m in msgs[:50]:  # combine_readings is union_p on decide()'s p-values, with both readings kept
        a, b = decide(read_a, m, alpha), decide(read_b, m, alpha)
        r = combine_readings(a, b, alpha)
        assert set(r["readings"]) == {"stage1", "adapted"} and r["p_value"] == min(1.0, 2 * min(a["p_value"],
                                                                                              b["p_value"]))
        assert r["watermarked"] == (r["p_value"] <= alpha)
    pa, pb = stats.key_pvalues(read_a, msgs), stats.key_pvalues(read_b, msgs)
    sd = (alpha * (1 - alpha) / keys) ** 0.5
    assert (union_p(pb, pa) <= alpha).mean() <= alpha + 3 * sd
    assert (np.minimum(pa, pb) <= alpha).mean() > alpha + 3 * sd  # the correction is what holds the rate


@pytest.mark.slow
def test_adapt_records_provenance_and_verify_reports_both_readings(tmp_path, capsys):
    key, record = _demo_key(tmp_path)
    cfg = tmp_path / "adapt.yaml"
    cfg.write_text("guidance: [7.5]\nimages: [8]\nsample_steps: 10\nlimit: 32\nbatch_size: 8\nsteps: 3\n"
                   "check_images: 16\n")
    out = tmp_path / "adapt"
    code, _, err = run_cli(["watermark", "adapt", "--model", "tiny:sleeper", "--codec", "tiny:codec", "--key", str(key),
                            "--model-id", record["model_id"], "--trigger", record["trigger"], "--config", str(cfg),
                            "--out", str(out)], capsys)
    assert code == 0, err
    assert "[adapt] stage 1 on 'tiny:sleeper'" in err and "release hash" in err
    res = json.loads((out / "results.json").read_text())
    prov = json.loads((out / "codec" / "config.json").read_text())["meta"]["provenance"]
    assert prov == res["provenance"] and prov["stage1_evidence"]["watermarked"]
    assert prov["stage1_evidence"]["n_images"] == 16 and prov["fitted_model"] == "tiny:sleeper"
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.provenance import release_sha256, weights_sha256

    assert prov["fitted_model_sha256"] == weights_sha256(load_t2i("tiny:sleeper"))
    assert res["release_sha256"] == release_sha256(out / "codec")

    verify = ["watermark", "verify", "--model", "tiny:sleeper", "--codec", str(out / "codec"), "--key", str(key),
              "--model-id", record["model_id"], "--trigger", record["trigger"], "--n", "16", "--attacks", "jpeg",
              "--no-also-without-cfg"]
    code, _, err = run_cli([*verify, "--out", str(tmp_path / "v")], capsys)
    assert code == 0, err
    v = json.loads((tmp_path / "v" / "results.json").read_text())
    assert v["watermarked"] and set(v["readings"]) == {"stage1", "adapted"}
    assert v["p_value"] == min(1.0, 2 * min(r["p_value"] for r in v["readings"].values()))
    assert v["provenance"]["fitted_model_sha256"] == prov["fitted_model_sha256"]
    assert "fitted on 'tiny:sleeper'" in err and "readings: stage 1" in err

    # an adapted codec without its record, or without its stage-1 extractor, is no evidence
    bare = tmp_path / "bare"
    shutil.copytree(out / "codec", bare)
    c = json.loads((bare / "config.json").read_text())
    del c["meta"]["provenance"]
    (bare / "config.json").write_text(json.dumps(c))
    code, _, err = run_cli([*verify[:5], str(bare), *verify[6:], "--out", str(tmp_path / "v2")], capsys)
    one_line_error(code, err, "records no stage-1 provenance")
    (out / "codec" / "stage1_extractor.safetensors").unlink()
    code, _, err = run_cli([*verify, "--out", str(tmp_path / "v3")], capsys)
    one_line_error(code, err, "lacks its stage-1 extractor")
