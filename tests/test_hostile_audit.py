"""A careless or hostile user of `audit`, of the data readers and of LoRA loading (issue 38):
every case exits 2 with one line on stderr (or raises InputError through the API), before
any work, and writes no results."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from test_cli import run_cli
from test_hostile import _pickle_bomb, _pngs, one_line_error

from modelseal.errors import InputError


def _no_results(out):
    assert not (out / "results.json").exists() and not (out / "cache").exists() and not (out / "evidence").exists()


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """A LoRA of tiny:t2i whose up-projections are not zero (a trained adapter changes the model)."""
    from modelseal.attacks.finetune import add_lora
    from modelseal.models.diffusion import load_t2i

    folder = tmp_path_factory.mktemp("lora") / "lora"
    m = load_t2i("tiny:t2i")
    add_lora(m, 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in m.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 1e-2)
    m.save_lora(folder, base="tiny:t2i")
    (folder / "modelseal_finetune.json").write_text(json.dumps({"method": "lora", "base": "tiny:t2i",
                                                                "prompt": "a sks digit"}))
    return folder


@pytest.fixture
def sets(tmp_path):
    return _pngs(tmp_path / "members", 3, seed=1), _pngs(tmp_path / "holdout", 3, seed=2)


def _forbid_work(monkeypatch):
    import modelseal.audit.run as audit_run

    def no_work(*a, **k):
        raise AssertionError("the audit began its work before checking its options")

    monkeypatch.setattr(audit_run, "score_set", no_work)
    monkeypatch.setattr(audit_run, "read_sets", no_work)


# --------------------------------------------------------------------------- 1. --generated without images

@pytest.mark.parametrize("content", ["empty", "text-only"])
def test_a_generated_folder_without_images_is_one_line(content, tmp_path, capsys, sets):
    gen = tmp_path / "generated"
    gen.mkdir()
    if content == "text-only":
        (gen / "a.txt").write_text("not an image")
        (gen / "b.txt").write_text("nor this")
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--generated", str(gen), "--members", str(sets[0]), "--holdout", str(sets[1]),
                            "--out", str(out)], capsys)
    one_line_error(code, err, "--generated", "no images", str(gen))
    _no_results(out)


# --------------------------------------------------------------------------- 2. + 3. options against the model

@pytest.mark.parametrize("args, words", [
    (["--t-min", "5000"], ["--t-min 5000", "1000 diffusion steps", "--t-min from 0 to 999"]),
    (["--t-min", "1000"], ["--t-min 1000", "--t-min from 0 to 999"]),
    (["--block", "64"], ["--block 64", "8 x 8 latent", "--block 4 or less"]),
    (["--block", "8", "--mask", "random"], ["--block 8", "8 x 8 latent"]),
])
def test_timestep_and_block_options_are_bounded_by_the_model(args, words, tmp_path, capsys, sets, trained_lora,
                                                             monkeypatch):
    _forbid_work(monkeypatch)
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--finetuned", str(trained_lora), "--members", str(sets[0]), "--holdout",
                            str(sets[1]), "--out", str(out), *args], capsys)
    one_line_error(code, err, *words)
    _no_results(out)


def test_the_largest_block_and_timestep_that_fit_are_accepted(trained_lora):
    from modelseal.audit.run import check_loaded, load_pair
    from modelseal.config import AuditConfig

    pre, ft = load_pair("tiny:t2i", str(trained_lora), "cpu")
    check_loaded(AuditConfig(finetuned=str(trained_lora), block=7, t_min=999), pre, ft)
    with pytest.raises(InputError, match="--block 8"):
        check_loaded(AuditConfig(finetuned=str(trained_lora), block=8), pre, ft)


# --------------------------------------------------------------------------- 4. the suspect is the base

def test_a_suspect_that_is_the_pretrained_model_is_refused_before_loading(tmp_path, capsys, sets, monkeypatch):
    import modelseal.audit.run as audit_run
    from modelseal.models.zoo import resolve_model

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(audit_run, "load_pair", no_load)
    zoo_t2i = resolve_model("tiny:t2i", "t2i")
    for i, (pre, ft) in enumerate([(None, "tiny:t2i"), ("tiny:t2i", f"{zoo_t2i}/"), (zoo_t2i, "tiny:t2i")]):
        out = tmp_path / f"o{i}"
        code, _, err = run_cli(["audit", "--finetuned", ft, *(["--pretrained", pre] if pre else []), "--prompt", "a",
                                "--members", str(sets[0]), "--holdout", str(sets[1]), "--out", str(out)], capsys)
        one_line_error(code, err, "pretrained model", "itself", "contrast is zero", "--finetuned")
        _no_results(out)


def test_a_copy_of_the_base_or_an_untrained_lora_is_refused_before_the_work(tmp_path, capsys, sets, monkeypatch):
    from modelseal.attacks.finetune import add_lora
    from modelseal.models.diffusion import load_t2i
    from modelseal.models.zoo import resolve_model

    _forbid_work(monkeypatch)
    copy = shutil.copytree(resolve_model("tiny:t2i", "t2i"), tmp_path / "copy")
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--finetuned", str(copy), "--prompt", "a", "--members", str(sets[0]),
                            "--holdout", str(sets[1]), "--out", str(out)], capsys)
    one_line_error(code, err, "same weights", "contrast is zero")
    _no_results(out)
    m = load_t2i("tiny:t2i")
    add_lora(m, 2)  # peft's init: the up-projections are zero, the adapter changes nothing
    m.save_lora(tmp_path / "zero", base="tiny:t2i")
    code, _, err = run_cli(["audit", "--finetuned", str(tmp_path / "zero"), "--prompt", "a", "--members",
                            str(sets[0]), "--holdout", str(sets[1]), "--out", str(out)], capsys)
    one_line_error(code, err, "changes nothing", "lora_B")
    _no_results(out)


# --------------------------------------------------------------------------- 5. presets and the recorded base

def test_the_audit_presets_set_no_base_model():
    import yaml

    from modelseal.config import CONFIG_DIR

    ref = yaml.safe_load((CONFIG_DIR / "audit.yaml").read_text())
    fast = yaml.safe_load((CONFIG_DIR / "audit.fast.yaml").read_text())
    assert "pretrained" not in ref and "pretrained" not in fast
    assert {k: v for k, v in fast.items() if k != "steps"} == {k: v for k, v in ref.items() if k != "steps"}


def test_a_loras_recorded_base_wins_over_presets_and_the_default(tmp_path, trained_lora, capsys, sets):
    from modelseal.audit.run import resolve_pretrained
    from modelseal.config import AuditConfig, load_config
    from modelseal.models.zoo import resolve_model

    lora = shutil.copytree(trained_lora, tmp_path / "lora")
    base = resolve_model("tiny:t2i", "t2i")  # tiny:t2i under its folder's name
    (lora / "lora_base.json").write_text(json.dumps({"base": base}))
    for config in (None, "audit", "audit.fast"):
        cfg = load_config(config, AuditConfig, {"finetuned": str(lora)}, command="audit")
        assert resolve_pretrained(cfg) == (base, "lora_base.json")
    # the same model under another name is accepted; another model is refused
    cfg = load_config("audit.fast", AuditConfig, {"finetuned": str(lora), "pretrained": "tiny:t2i"})
    assert resolve_pretrained(cfg) == ("tiny:t2i", "--pretrained")
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--config", "audit.fast", "--finetuned", str(lora), "--pretrained",
                            "CompVis/stable-diffusion-v1-4", "--members", str(sets[0]), "--holdout", str(sets[1]),
                            "--out", str(out)], capsys)
    one_line_error(code, err, "--pretrained 'CompVis/stable-diffusion-v1-4'", "lora_base.json",
                   "leave --pretrained out")
    _no_results(out)
    # a full model: modelseal finetune's record names the base; without one, the fallback
    full = tmp_path / "full"
    full.mkdir()
    assert resolve_pretrained(AuditConfig(finetuned=str(full))) == ("tiny:t2i", "default")
    (full / "modelseal_finetune.json").write_text(json.dumps({"base": base}))
    assert resolve_pretrained(AuditConfig(finetuned=str(full))) == (base, "modelseal_finetune.json")
    lines = []
    assert resolve_pretrained(AuditConfig(finetuned=str(full), pretrained="org/other"), lines.append) == \
        ("org/other", "--pretrained")
    assert len(lines) == 1 and "note" in lines[0]


# --------------------------------------------------------------------------- 6. small samples told honestly

def test_an_audit_too_small_for_an_auroc_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import modelseal.audit.run as audit_run

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(audit_run, "load_pair", no_load)
    gen = _pngs(tmp_path / "generated", 4, seed=3)
    for i, (m, h) in enumerate([(1, 2), (2, 1), (1, 30)]):
        members, holdout = _pngs(tmp_path / f"m{i}", m, seed=10 + i), _pngs(tmp_path / f"h{i}", h, seed=20 + i)
        for suspect in (["--generated", str(gen)], ["--finetuned", "tiny:sleeper", "--prompt", "a"]):
            out = tmp_path / f"o{i}"
            code, _, err = run_cli(["audit", *suspect, "--members", str(members), "--holdout", str(holdout),
                                    "--out", str(out)], capsys)
            one_line_error(code, err, "too few for an AUROC", "chance", "at least 2 images in --members")
            _no_results(out)


def test_small_samples_get_an_honest_interval_no_unsupported_tpr_and_a_caveat():
    from modelseal.audit.decision import evaluation_summary, score_interval

    labels = np.array([1, 1, 1, 0, 0, 0])
    res = evaluation_summary(np.array([3.0, 2.0, 1.5, 1.0, 0.0, -1.0]), labels)
    assert res["auroc"] == 1.0 and res["auroc_ci_bootstrap"] == [1.0, 1.0]  # the bootstrap collapses ...
    assert res["auroc_ci"][0] < 0.75 and res["auroc_ci"][1] == 1.0  # ... the reported interval does not
    assert res["auroc_p_value"] == pytest.approx(0.05)  # 1 / C(6, 3)
    assert res["tpr_at_fpr"] == {"0.01": None, "0.05": None}
    assert res["tpr_at_fpr_notes"]["0.01"] == "needs >= 100 hold-out images for FPR 0.01 (3 given)"
    assert res["small_sample"] and any("small sample" in n for n in res["notes"])
    assert not any("5 % level" in n for n in res["notes"])  # 3 + 3: a perfect separation has p = 0.05
    res = evaluation_summary(np.array([2.0, 1.0, 0.5, 0.0]), np.array([1, 1, 0, 0]))
    assert res["auroc_ci"][0] < 0.5 and any("cannot" in n or "5 % level" in n for n in res["notes"])
    # enough hold-out images: TPR at 5 % is reported, at 1 % not yet; no caveat at 30 / 30
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 30)]
    res = evaluation_summary(s, np.r_[np.ones(30), np.zeros(30)])
    assert res["tpr_at_fpr"]["0.05"] is not None and res["tpr_at_fpr"]["0.01"] is None and not res["small_sample"]
    lo, hi = res["auroc_ci"]
    assert lo <= res["auroc_ci_bootstrap"][0] and hi >= res["auroc_ci_bootstrap"][1] and hi - lo < 0.4
    # the score interval: symmetric about 0.5 at chance, shrinking with n
    a, b = score_interval(0.5, 100, 100)
    assert a == pytest.approx(1 - b) and b - a < score_interval(0.5, 10, 10)[1] - score_interval(0.5, 10, 10)[0]


def test_a_small_blackbox_audit_says_so_in_results_and_log(tmp_path, capsys):
    members, holdout = _pngs(tmp_path / "m", 3, seed=1), _pngs(tmp_path / "h", 3, seed=2)
    gen = _pngs(tmp_path / "g", 3, seed=3)
    code, out, err = run_cli(["audit", "--generated", str(gen), "--members", str(members), "--holdout", str(holdout),
                              "--similarity", "pixels", "--no-evidence", "--out", str(tmp_path / "o"), "--json"],
                             capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["small_sample"] and res["tpr_at_fpr"] == {"0.01": None, "0.05": None}
    assert {"auroc", "auroc_ci", "tpr_at_fpr", "scores"} <= set(res)
    assert "note: small sample" in err and "TPR at 1% FPR n/a" in err
    assert all(v["tpr_at_fpr"]["0.01"] is None for v in res["decision_scores"].values())
    assert "n/a" in (tmp_path / "o" / "report.html").read_text()


# --------------------------------------------------------------------------- 7. captions

@pytest.mark.parametrize("row, key", [({"file_name": "a.png", "text": 5}, "text"),
                                      ({"file_name": 7, "text": "a digit"}, "file_name"),
                                      ({"file_name": "a.png", "text": ["a", "b"]}, "text")])
def test_a_caption_or_file_name_that_is_not_a_string_is_refused(row, key, tmp_path, capsys):
    from modelseal.data.folders import read_captioned_folder

    folder = _pngs(tmp_path / "cap", 1)
    (folder / "0-0.png").rename(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "fine"}) + "\n\n"
                                           + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=rf"metadata.jsonl' line 3: '{key}' is .*not a string"):
        read_captioned_folder(folder)
    out = tmp_path / "o"
    code, _, err = run_cli(["finetune", "--data", str(folder), "--method", "lora", "--steps", "1", "--out", str(out)],
                           capsys)
    one_line_error(code, err, "metadata.jsonl", "line 3", key, "not a string", "e.g.")
    assert not (out / "results.json").exists() and not (out / "model").exists()


# --------------------------------------------------------------------------- 8. links out of a folder

def test_links_out_of_a_data_folder_are_refused_by_every_reader(tmp_path, capsys):
    from modelseal.data.folders import (read_class_folders, read_domain_tree, read_image_folder,
                                        read_membership)

    secret = _pngs(tmp_path / "elsewhere", 2, seed=9)
    plain = _pngs(tmp_path / "plain", 2)
    os.symlink("0-0.png", plain / "inside.png")  # a link inside the folder is followed
    assert read_image_folder(plain).names == ["0-0.png", "0-1.png", "inside.png"]
    os.symlink(secret / "9-0.png", plain / "zz.png")
    with pytest.raises(InputError, match="zz.png.*outside the folder"):
        read_image_folder(plain)
    tree = tmp_path / "tree"
    _pngs(tree / "cat", 2), _pngs(tree / "dog", 2)
    os.symlink(secret, tree / "bird")
    with pytest.raises(InputError, match="bird.*outside"):
        read_class_folders(tree)
    (tree / "bird").unlink()
    os.symlink(secret / "9-1.png", tree / "cat" / "x.png")
    with pytest.raises(InputError, match="x.png.*outside"):
        read_class_folders(tree)
    domains = tmp_path / "domains"
    (domains / "a").mkdir(parents=True)
    os.symlink(tree, domains / "b")
    with pytest.raises(InputError, match="outside"):
        read_domain_tree(domains)
    audit = tmp_path / "audit"
    _pngs(audit / "members", 2)
    os.symlink(secret, audit / "holdout")
    with pytest.raises(InputError, match="outside"):
        read_membership(audit)
    out = tmp_path / "o"
    code, _, err = run_cli(["finetune", "--data", str(plain), "--prompt", "a sks digit", "--steps", "1", "--out",
                            str(out)], capsys)
    one_line_error(code, err, "zz.png", "outside the folder", "copy the file")
    assert not (out / "model").exists()


# --------------------------------------------------------------------------- 9. LoRA files

def _lora_variant(src, dst, change):
    from safetensors.torch import load_file, save_file

    from modelseal.models.diffusion import LORA_FILE

    shutil.copytree(src, dst)
    state = change(load_file(str(src / LORA_FILE)))
    save_file(state, str(dst / LORA_FILE))
    return dst


def test_a_lora_with_keys_on_missing_modules_is_refused(tmp_path, trained_lora):
    from modelseal.models.diffusion import load_t2i

    def quarter_elsewhere(state):
        keys = sorted(state)
        moved = keys[:len(keys) // 4]
        return {(k.replace("down_blocks.0", "down_blocks.7") if k in moved else k): v for k, v in state.items()}

    bad = _lora_variant(trained_lora, tmp_path / "q", quarter_elsewhere)
    with pytest.raises(InputError) as e:
        load_t2i(bad)
    msg = str(e.value)
    assert "16 of 64 weights" in msg and "down_blocks.7" in msg and "does not have" in msg and "\n" not in msg


@pytest.mark.parametrize("case, words", [
    ("nan", ["non-finite", "NaN", "retrain"]),
    ("a-only", ["lora_A weights but no lora_B", "32 layers"]),
    ("b-only", ["lora_B weights but no lora_A"]),
])
def test_a_lora_with_nan_or_half_layers_is_one_line(case, words, tmp_path, capsys, trained_lora, sets, monkeypatch):
    import modelseal.models.diffusion as diffusion

    def change(state):
        if case == "nan":
            k = sorted(state)[1]
            return {**state, k: torch.full_like(state[k], float("nan"))}
        keep = "lora_A" if case == "a-only" else "lora_B"
        return {k: v for k, v in state.items() if keep in k}

    bad = _lora_variant(trained_lora, tmp_path / case, change)

    def no_base(*a, **k):
        raise AssertionError("the base model was loaded before the LoRA file was checked")

    monkeypatch.setattr(diffusion, "_load_pipeline", no_base)
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--finetuned", str(bad), "--members", str(sets[0]), "--holdout", str(sets[1]),
                            "--out", str(out)], capsys)
    one_line_error(code, err, "pytorch_lora_weights.safetensors", *words)
    _no_results(out)
    with pytest.raises(InputError, match=words[0]):
        diffusion.load_t2i(bad)


def test_a_pickled_lora_folder_is_refused_unopened(tmp_path, capsys, sets, monkeypatch):
    import modelseal.audit.run as audit_run

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(audit_run, "load_pair", no_load)
    folder = tmp_path / "lora-bin"
    folder.mkdir()
    marker = tmp_path / "UNPICKLED"
    _pickle_bomb(folder / "pytorch_lora_weights.bin", marker)
    (folder / "lora_base.json").write_text(json.dumps({"base": "tiny:t2i"}))
    out = tmp_path / "o"
    code, _, err = run_cli(["audit", "--finetuned", str(folder), "--prompt", "a", "--members", str(sets[0]),
                            "--holdout", str(sets[1]), "--out", str(out)], capsys)
    line = one_line_error(code, err, "pickle", "pytorch_lora_weights.bin", "never opens", "safetensors")
    assert "config.json" not in line
    from modelseal.models.diffusion import load_t2i

    with pytest.raises(InputError, match="pickle"):
        load_t2i(folder)
    assert not marker.exists()
    _no_results(out)


# --------------------------------------------------------------------------- 10. str or Path

def test_the_audits_own_code_takes_str_or_path(tmp_path, trained_lora):
    from pathlib import Path

    from modelseal.audit.run import _fingerprint, check_not_itself, default_prompt, resolve_pretrained
    from modelseal.config import AuditConfig

    cfg = AuditConfig.model_construct(**{**AuditConfig().model_dump(), "finetuned": Path(trained_lora),
                                         "pretrained": Path("tiny:t2i")})
    assert resolve_pretrained(cfg) == ("tiny:t2i", "--pretrained")
    check_not_itself("tiny:t2i", Path(trained_lora))
    assert default_prompt(Path(trained_lora)) == "a sks digit"
    assert _fingerprint(Path(trained_lora))[0] == str(trained_lora)
    # through the API with Path objects: the audit runs its checks as for strings (and refuses here)
    import modelseal

    m, h = _pngs(tmp_path / "m", 2, seed=1), _pngs(tmp_path / "h", 2, seed=2)
    with pytest.raises(InputError, match="--t-min 5000"):
        modelseal.run_audit(out=tmp_path / "o", finetuned=Path(trained_lora), members=m, holdout=h, t_min=5000,
                            log=lambda line: None)
    _no_results(tmp_path / "o")
