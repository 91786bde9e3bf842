"""CGI-DM audit: the contrast's exact-zero property, masks, and the effect at a small size."""
import json
import shutil

import numpy as np
import pytest
import torch

from modelseal.audit.inversion import Contrast, block_mask, invert, radius
from modelseal.config import InversionOptions
from modelseal.models.diffusion import load_t2i

from test_cli import run_cli


@pytest.fixture(scope="module")
def pair():
    return load_t2i("tiny:t2i"), load_t2i("tiny:t2i")


def _contrast_and_grad(pre, ft, noise, seed=0):
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    ctx = pre.encode_prompts(["a sks digit"] * 3)
    c = Contrast(pre, ft, noise=noise)
    t, e1, e2 = c.draws(3, z.shape[1:], 2, torch.Generator().manual_seed(seed + 1))
    j = c(z, ctx, ctx, t, e1, e2, 2)
    (g,) = torch.autograd.grad(j.sum(), z)
    return j, g


def test_shared_noise_contrast_and_gradient_are_exactly_zero_for_equal_models(pair):
    pre, same = pair  # two separately loaded copies of the same weights
    j, g = _contrast_and_grad(pre, same, "shared")
    assert torch.equal(j, torch.zeros_like(j)) and torch.equal(g, torch.zeros_like(g))
    j2, g2 = _contrast_and_grad(pre, pre, "shared")  # the very same object
    assert torch.equal(j2, torch.zeros_like(j2)) and torch.equal(g2, torch.zeros_like(g2))
    # The reference's separate noise does not have this property.
    j3, g3 = _contrast_and_grad(pre, same, "separate")
    assert j3.abs().max() > 1e-4 and g3.abs().max() > 1e-6


def test_block_masks():
    m = block_mask((8, 8), 2, "checker")
    assert m.shape == (8, 8) and m.mean() == 0.5
    assert torch.equal(m[:2, :2], torch.ones(2, 2)) and torch.equal(m[:2, 2:4], torch.zeros(2, 2))
    r = block_mask((64, 64), 4, "random", ratio=0.25, generator=torch.Generator().manual_seed(0))
    assert abs((1 - r.mean()).item() - 0.25) < 1e-6
    assert block_mask((7, 7), 2).shape == (7, 7)


def test_radius_matches_the_reference_on_sd_latents():
    z = torch.randn(2, 4, 64, 64)
    eps, step = radius(InversionOptions(), z, torch.ones(1, 1, 64, 64))
    assert torch.allclose(eps, torch.tensor([70.0, 70.0])) and torch.allclose(step, torch.tensor([2.0, 2.0]))
    eps8, _ = radius(InversionOptions(), torch.randn(1, 4, 8, 8), torch.ones(1, 1, 8, 8))
    assert abs(eps8.item() - 70 / 8) < 1e-5


def test_inversion_keeps_the_kept_region_and_stays_in_the_ball(pair):
    pre, _ = pair
    from modelseal.data.subjects import builtin_subject

    x = torch.from_numpy(builtin_subject("mnist/5")[:2]).permute(0, 3, 1, 2).float() / 255
    ft = load_t2i("tiny:t2i")
    with torch.no_grad():
        ft.unet.conv_out.bias.add_(0.05)  # any difference between the two models
    inv = invert(pre, ft, x, "a sks digit", InversionOptions(steps=5, mc_samples=1))
    assert inv.recovered.shape == x.shape and inv.keep.mean() == 0.5
    assert not torch.allclose(inv.recovered, inv.partial)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A DreamBooth suspect fine-tuned on 8 mnist-m '3's, and a null suspect on 8 others."""
    from modelseal.attacks.run import finetune_command
    from modelseal.config import FinetuneConfig
    from modelseal.data.subjects import builtin_subject, write_split

    root = tmp_path_factory.mktemp("subject")
    folders = write_split(builtin_subject("mnist-m/3"), root / "data", {"members": 8, "holdout": 8, "others": 8})
    for name, data in (("suspect", folders["members"]), ("null", folders["others"])):
        finetune_command(FinetuneConfig(method="dreambooth", data=str(data), prompt="a sks digit", steps=200,
                                        batch_size=4), root / name, "cpu", log=lambda m: None)
    return root, folders


@pytest.fixture(scope="module")
def quick_subject(tmp_path_factory):
    """The same folders and a suspect of 2 DreamBooth steps: a model with a finetune record,
    for the tests of bad input (none of them needs it to have learned anything)."""
    from modelseal.attacks.run import finetune_command
    from modelseal.config import FinetuneConfig
    from modelseal.data.subjects import builtin_subject, write_split

    root = tmp_path_factory.mktemp("quick-subject")
    folders = write_split(builtin_subject("mnist-m/3"), root / "data", {"members": 8, "holdout": 8, "others": 8})
    finetune_command(FinetuneConfig(method="dreambooth", data=str(folders["members"]), prompt="a sks digit", steps=2,
                                    batch_size=4), root / "suspect", "cpu", log=lambda m: None)
    return root, folders


@pytest.mark.slow
def test_cgi_dm_separates_members_and_the_null_suspect_does_not(subject, capsys):
    root, folders = subject
    out = root / "audit"
    code, stdout, err = run_cli(["audit", "--finetuned", str(root / "suspect" / "model"), "--members",
                                 str(folders["members"]), "--holdout", str(folders["holdout"]), "--null-finetuned",
                                 str(root / "null" / "model"), "--steps", "200", "--out", str(out), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["prompt"] == "a sks digit"  # read from the suspect's finetune record
    assert res["auroc"] >= 0.85, res["metrics"]
    assert abs(res["baselines"]["null_suspect"] - 0.5) <= 0.3
    # the published baselines on the same suspect (measured alone: PIA 1.00, CLiD_th 0.83)
    assert res["decision_scores"]["pia"]["auroc"] >= 0.8 and res["baselines"]["clid"] >= 0.6, res["baselines"]
    assert set(res["tpr_at_fpr"]) == {"0.01", "0.05"} and len(res["auroc_ci"]) == 2
    assert len(res["scores"]) == 16 and (out / res["scores"][0]["evidence"]).is_file()
    assert (out / "report.html").read_text().count("<img") >= 17 and (out / "roc.png").is_file()
    # every decision statistic beside the one that decides (calibrated by default)
    dec = res["decision_scores"]
    assert res["score"] == "calibrated" and res["auroc"] == pytest.approx(dec["calibrated"]["auroc"])
    assert dec["cgi-dm"]["auroc"] >= 0.85, dec
    assert dec["calibrated"]["auroc"] == pytest.approx(res["baselines"]["calibrated"])
    assert set(dec["combined"]["tpr_at_fpr"]) == {"0.01", "0.05"}


def test_decision_scores_are_label_free_and_symmetric():
    from modelseal.audit.decision import decision_scores, robust_z

    rng = np.random.default_rng(0)
    cgi, l_pre, l_ft = rng.random(20), rng.random(20) + 1, rng.random(20)
    d = decision_scores(cgi, l_pre, l_ft)
    assert d["calibrated"] == pytest.approx(l_pre - l_ft)
    assert d["combined"] == pytest.approx(robust_z(cgi) + robust_z(l_pre - l_ft))
    perm = rng.permutation(20)  # the scaler treats images alike: permuting them permutes the scores
    assert decision_scores(cgi[perm], l_pre[perm], l_ft[perm])["combined"] == pytest.approx(d["combined"][perm])
    # a monotone change of one statistic's units leaves the combination's ranking unchanged
    assert np.argsort(decision_scores(cgi * 7 + 3, l_pre, l_ft)["combined"]).tolist() == np.argsort(d["combined"]).tolist()


@pytest.mark.slow
def test_audit_mode_gives_p_values_and_verdicts(subject, capsys):
    root, folders = subject
    code, stdout, err = run_cli(["audit", "--finetuned", str(root / "suspect" / "model"), "--images",
                                 str(folders["members"]), "--calibration", str(folders["others"]),
                                 "--steps", "200", "--no-ablations", "--out", str(root / "real"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    tested = [r for r in res["scores"] if r["role"] == "test"]
    assert len(tested) == 8 and all(0 < r["p_value"] <= 1 for r in tested)
    # members score above most never-seen images of the same subject
    assert np.median([r["p_value"] for r in tested]) <= 0.25
    # the collection first, then the images under the default control (Benjamini-Hochberg)
    from modelseal import stats

    p = [r["p_value"] for r in tested]
    assert res["control"] == "bh" and res["set_verdict"] in ("used", "not shown to be used")
    assert res["set_p_value"] == pytest.approx(stats.rank_set_pvalue([r["score"] for r in tested], [
        r["score"] for r in res["scores"] if r["role"] == "calibration"]))
    assert res["set_verdict"] == "used" and res["set_p_value"] <= 0.05  # 8 members vs 8 never seen
    bh = stats.benjamini_hochberg(p, res["alpha"])
    assert [r["verdict"] == "member" for r in tested] == bh.tolist() and res["members_found"] == bh.sum()
    assert res["members_uncontrolled"] == sum(x <= res["alpha"] for x in p) >= res["members_found"]
    assert err.index("[audit] collection: used") < err.index("[audit] images:") and "0.00 " not in err
    page = (root / "real" / "report.html").read_text()
    assert page.index("Was this collection used? used") < page.index("evidence per image")
    assert f"<td>{stats.format_p(res['set_p_value'])}</td>" in page and f"<td>{stats.format_p(p[0])}</td>" in page

    # --control none: the same scores (from the cache, content-keyed, which --overwrite over an audit run keeps:
    # a copy of the first run's folder is overwritten), the old per-image verdicts, labelled uncontrolled
    shutil.copytree(root / "real", root / "real-none")
    code, stdout, err = run_cli(["audit", "--finetuned", str(root / "suspect" / "model"), "--images",
                                 str(folders["members"]), "--calibration", str(folders["others"]),
                                 "--steps", "200", "--control", "none", "--out", str(root / "real-none"),
                                 "--overwrite", "--json"], capsys)
    assert code == 0, err
    assert "were scored before" in err
    none = json.loads(stdout)
    assert none["control"] == "none" and "uncontrolled" in none["control_note"] and "uncontrolled" in err
    assert [r["p_value"] for r in none["scores"]] == [r["p_value"] for r in res["scores"]]
    assert [r["verdict"] == "member" for r in none["scores"] if r["role"] == "test"] == [x <= 0.05 for x in p]
    assert none["members_found"] == res["members_uncontrolled"] and none["set_p_value"] == res["set_p_value"]


def test_lora_suspect_runs_as_one_model(tmp_path, capsys):
    from modelseal.attacks.run import finetune_command
    from modelseal.audit.run import load_pair
    from modelseal.config import FinetuneConfig
    from modelseal.data.subjects import builtin_subject, write_split

    f = write_split(builtin_subject("mnist/5"), tmp_path / "d", {"members": 4, "holdout": 4})
    finetune_command(FinetuneConfig(method="lora", data=str(f["members"]), prompt="a sks digit", steps=30),
                     tmp_path / "lora", "cpu", log=lambda m: None)
    pre, ft = load_pair("tiny:t2i", str(tmp_path / "lora" / "model"), "cpu")
    assert pre is ft and pre.has_adapter
    j, g = _contrast_and_grad(pre, ft, "shared")
    assert j.abs().max() > 0  # the adapter is on for L_ft and off for L_pre
    # PIA of the pretrained model is the LoRA model with its adapter off: the base model's own, exactly
    from modelseal.audit.baselines import pia_scores

    x = torch.from_numpy(builtin_subject("mnist/5")[:3]).permute(0, 3, 1, 2).float() / 255
    base = load_t2i("tiny:t2i")
    off, on = pia_scores(pre, x, ["a sks digit"] * 3, suspect=False), pia_scores(pre, x, ["a sks digit"] * 3)
    assert torch.allclose(off, pia_scores(base, x, ["a sks digit"] * 3), atol=1e-5) and not torch.allclose(off, on)
    code, stdout, err = run_cli(["audit", "--finetuned", str(tmp_path / "lora" / "model"), "--members",
                                 str(f["members"]), "--holdout", str(f["holdout"]), "--steps", "3",
                                 "--out", str(tmp_path / "a"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["suspect_kind"] == "lora"
    assert all(r["score_pia_calibrated"] == pytest.approx(r["PIA_ft"] - r["PIA_pre"]) for r in res["scores"])


@pytest.mark.slow
def test_audit_resumes_from_its_cache(subject, capsys, tmp_path):
    root, folders = subject
    args = ["audit", "--finetuned", str(root / "suspect" / "model"), "--members", str(folders["members"]),
            "--holdout", str(folders["holdout"]), "--steps", "4", "--batch-size", "4", "--out", str(tmp_path / "r"),
            "--json"]
    code, first, _ = run_cli(args, capsys)
    cached = sorted((tmp_path / "r" / "cache").rglob("*.safetensors"))
    assert code == 0 and len(cached) == 4
    cached[0].unlink()  # as if interrupted during the first batch
    code, second, _ = run_cli(args, capsys)
    a, b = json.loads(first), json.loads(second)
    # the recoveries (CGI-DM's metric) and the deciding scores (the calibrated loss) both reproduced
    assert code == 0 and [s["ssim_removed"] for s in a["scores"]] == pytest.approx([s["ssim_removed"] for s in
                                                                                     b["scores"]])
    assert [s["score"] for s in a["scores"]] == pytest.approx([s["score"] for s in b["scores"]])
    assert [s["score"] for s in a["scores"]] == pytest.approx([s["L_pre"] - s["L_ft"] for s in a["scores"]])
    assert a["auroc"] == pytest.approx(a["baselines"]["calibrated"])
    # --score picks the statistic that decides; the inversion is reused from the cache
    code, third, _ = run_cli(args + ["--score", "cgi-dm", "--overwrite"], capsys)
    c = json.loads(third)
    assert code == 0 and c["score"] == "cgi-dm"
    assert [s["score"] for s in c["scores"]] == pytest.approx([s["ssim_removed"] for s in c["scores"]])
    assert c["auroc"] == pytest.approx(c["metrics"]["ssim_removed"])


@pytest.mark.parametrize("case", ["no-holdout", "both-modes", "mismatch", "corrupt", "no-prompt"])
def test_audit_bad_input_exits_2(case, quick_subject, tmp_path, capsys, random_clip_dir):
    root, folders = quick_subject
    ft = str(root / "suspect" / "model")
    base = ["audit", "--out", str(tmp_path / "o"), "--steps", "2"]
    if case == "no-holdout":
        args = base + ["--finetuned", ft, "--members", str(folders["members"])]
    elif case == "both-modes":
        args = base + ["--finetuned", ft, "--members", str(folders["members"]), "--holdout", str(folders["holdout"]),
                       "--images", str(folders["others"])]
    elif case == "mismatch":
        from diffusers import UNet2DConditionModel

        m = load_t2i("tiny:t2i")
        cfg = dict(m.unet.config)
        cfg["sample_size"] = 16
        m.unet = UNet2DConditionModel.from_config(cfg)
        m.save_pretrained(tmp_path / "other")
        args = base + ["--finetuned", str(tmp_path / "other"), "--members", str(folders["members"]),
                       "--holdout", str(folders["holdout"]), "--prompt", "a sks digit"]
    elif case == "corrupt":
        bad = tmp_path / "hold"
        bad.mkdir()
        (bad / "x.png").write_bytes(b"not a png")
        args = base + ["--finetuned", ft, "--members", str(folders["members"]), "--holdout", str(bad)]
    else:
        args = base + ["--finetuned", "tiny:sleeper", "--members", str(folders["members"]), "--holdout",
                       str(folders["holdout"])]  # a suspect with no finetune record (tiny:t2i is the base itself)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:"), err


def test_pia_and_clid_are_reproducible_and_follow_their_definitions(pair):
    """PIA needs no randomness and CLiD's draws are seeded (the same scores twice); CLiD's
    simple clipping gives the prompt's thirds and the empty prompt; the robust scaler centres
    on the median and divides by the interquartile range."""
    from modelseal.audit.baselines import clid_terms, clid_th, pia_scores, reduced_prompts, robust_scale

    pre, _ = pair
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = pia_scores(pre, x, ["a sks digit"] * 3), pia_scores(pre, x, ["a sks digit"] * 3)
    assert torch.equal(a, b) and (a < 0).all()
    assert reduced_prompts("a photo of sks dog on the beach") == ["a photo", "of sks dog", "on the beach", ""]
    d, l_cond = clid_terms(pre, x, ["a sks digit"] * 3)
    d2, l2 = clid_terms(pre, x, ["a sks digit"] * 3)
    assert torch.equal(d, d2) and torch.equal(l_cond, l2) and (l_cond < 0).all()
    s = robust_scale(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert s[2] == 0 and s[3] == 0.5
    assert clid_th(d, l_cond, alpha=1.0).allclose(robust_scale(d).float())


def test_loss_grid_is_paired_seeded_and_per_timestep(pair):
    """loss_grid's draws are shared by the two models (equal weights give equal losses, to the
    bit), fresh per draw and seeded; each timestep keeps its own column (the low and high
    timesteps' losses differ, where paired_losses mixes them in one average)."""
    from modelseal.audit.baselines import loss_grid

    pre, same = pair
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    l_pre, l_ft = loss_grid(pre, same, x, ["a sks digit"] * 3, [20, 500, 980], draws=2)
    assert l_pre.shape == (3, 3, 2) and torch.equal(l_pre, l_ft)
    assert not torch.equal(l_pre[:, :, 0], l_pre[:, :, 1])  # a fresh noise per draw
    again, _ = loss_grid(pre, pre, x, ["a sks digit"] * 3, [20, 500, 980], draws=2)
    assert torch.equal(again, l_pre)  # seeded
    assert (l_pre[:, 0].mean() - l_pre[:, 2].mean()).abs() > 0.01
