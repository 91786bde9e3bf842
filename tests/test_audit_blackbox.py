"""Black-box audit (--generated) and learned fidelity: nearest-neighbour similarity in a fixed
space; its effect on images a service reproduces, its level under the null, bad input."""
import json

import numpy as np
import pytest
import torch

from modelseal import stats
from modelseal.audit.decision import audit_decisions, decision_scores
from modelseal.audit.generated import Similarity, blackbox_scores, learned_fidelity, nearest
from modelseal.data.folders import write_image_folder
from modelseal.data.subjects import builtin_subject

from test_cli import run_cli


def _subject(spec: str) -> torch.Tensor:
    return torch.from_numpy(builtin_subject(spec)).permute(0, 3, 1, 2).float() / 255


def _reproduced(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """What a memorising service returns: the image, shifted by a pixel and noised."""
    g = torch.Generator().manual_seed(seed)
    return (torch.roll(x, 1, dims=-1) + 0.04 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def threes():
    return _subject("mnist-m/3")


def test_similarity_matrix_and_nearest(threes):
    x = threes[:6]
    for kind in ("ssim", "colour", "pixels"):
        m = Similarity(kind).matrix(x, x)
        assert m.shape == (6, 6) and torch.allclose(m.diagonal(), torch.ones(6), atol=1e-4)
        v, i = nearest(m)
        assert i.tolist() == list(range(6))
    # chunking does not change the values
    assert torch.allclose(Similarity("ssim", chunk=5).matrix(x, x[:4]), Similarity("ssim").matrix(x, x[:4]))
    with pytest.raises(ValueError):
        Similarity("features")


def test_reproduced_members_score_above_holdout_and_calibration_subtracts(threes):
    members, holdout, other = threes[:10], threes[10:20], threes[20:40]
    generated = torch.cat([_reproduced(members[:6]), other[:10]])  # the service reproduces 6 of the 10
    sc = blackbox_scores(torch.cat([members, holdout]), generated, None, Similarity("ssim"))
    labels = np.array([1] * 10 + [0] * 10)
    assert stats.auroc(sc["near"].numpy(), labels) >= 0.75
    assert (sc["nearest"][:6] == torch.arange(6)).all()  # each reproduced member finds its copy
    # a neutral set holding the same copies (a service that shows them under any prompt) cancels the evidence
    both = blackbox_scores(torch.cat([members, holdout]), generated, generated, Similarity("ssim"))
    assert torch.allclose(both["calibrated"], torch.zeros(20))


@pytest.mark.parametrize("kind", ["ssim", "colour", "pixels"])
def test_learned_fidelity_gain(threes, kind):
    members, other = threes[:10], _subject("mnist-m/8")[:10]
    sim = Similarity(kind)
    learned = learned_fidelity(members, _reproduced(members), other, sim)
    assert learned["gain"] > 0.2 and learned["suspect"] > learned["pretrained"]
    nothing = learned_fidelity(members, other, other, sim)
    assert nothing["gain"] == pytest.approx(0.0)


def test_specific_fidelity_ignores_a_move_toward_every_subject(threes):
    """A suspect whose samples became like every subject at once (here: the members of this and
    of another subject) gains in plain fidelity, not in the subject-specific one; reproducing
    this subject's members gains in both."""
    members, eights, sevens = threes[:10], _subject("mnist-m/8")[:10], _subject("mnist/7")[:10]
    sim = Similarity("pixels")
    blend = (0.5 * members + 0.5 * eights).clamp(0, 1)  # near this subject and the other alike
    plain = learned_fidelity(members, blend, sevens, sim)
    specific = learned_fidelity(members, blend, sevens, sim, others=[eights])
    assert plain["gain"] > 0.1 and abs(specific["gain"]) < 0.5 * plain["gain"]
    assert learned_fidelity(members, _reproduced(members), sevens, sim, others=[eights])["gain"] > 0.2


def test_colour_and_pixel_spaces_see_what_they_promise(threes):
    """colour: the palette where it sits (a pixel's shift keeps it, inverted colours do not);
    pixels: the picture up to brightness and contrast."""
    x = threes[:8]
    colour, pixels = Similarity("colour"), Similarity("pixels")
    shifted = torch.roll(x, 1, dims=-1)
    kept = colour.matrix(x, shifted).diagonal()
    assert (kept > 0.95).all() and (kept > colour.matrix(x, 1 - x).diagonal() + 0.1).all()
    dimmed = 0.5 * x + 0.2
    assert torch.allclose(pixels.matrix(x, dimmed).diagonal(), torch.ones(8), atol=1e-4)
    assert (colour.matrix(x, dimmed).diagonal() < kept).all()


def test_blackbox_set_test_keeps_its_level_under_the_null():
    """Generated images independent of the audited and calibration images (a service that never
    saw them): random splits of one subject into audited and calibration images are found 'used'
    at about alpha, not more."""
    x = _subject("mnist-m/3")
    generated = _subject("mnist/3")[:40]
    near = blackbox_scores(x, generated, None, Similarity("ssim"))["near"].numpy()
    rng = np.random.default_rng(0)
    used = 0
    draws = 400
    for _ in range(draws):
        idx = rng.permutation(len(near))
        used += audit_decisions(near[idx[:10]], near[idx[10:60]], 0.05, "bh")["set_used"]
    lo, hi = stats.clopper_pearson(int(used), draws)
    assert lo <= 0.05 and used / draws <= 0.09, used


def test_pia_decision_scores():
    rng = np.random.default_rng(0)
    cgi, l_pre, l_ft, p_pre, p_ft = (rng.random(12) for _ in range(5))
    d = decision_scores(cgi, l_pre, l_ft, p_pre, p_ft)
    assert d["pia"] == pytest.approx(p_ft) and d["pia-calibrated"] == pytest.approx(p_ft - p_pre)
    assert "pia" not in decision_scores(cgi, l_pre, l_ft)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, threes):
    root = tmp_path_factory.mktemp("bb")
    members, holdout, other = threes[:12], threes[12:24], threes[24:44]
    f = {"members": write_image_folder(root / "members", members),
         "holdout": write_image_folder(root / "holdout", holdout),
         "generated": write_image_folder(root / "generated", torch.cat([_reproduced(members[:8]), other[:8]])),
         "neutral": write_image_folder(root / "neutral", other[8:20])}
    return root, f


def test_blackbox_cli_evaluation_and_audit(folders, capsys):
    root, f = folders
    code, out, err = run_cli(["audit", "--generated", str(f["generated"]), "--neutral", str(f["neutral"]),
                              "--members", str(f["members"]), "--holdout", str(f["holdout"]),
                              "--out", str(root / "ev"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["access"] == "black-box" and res["score"] == "near-calibrated" and res["n_generated"] == 16
    assert res["auroc"] >= 0.8, res["decision_scores"]
    assert (root / "ev" / res["scores"][0]["evidence"]).is_file() and (root / "ev" / "report.html").is_file()
    code, out, err = run_cli(["audit", "--generated", str(f["generated"]), "--images", str(f["members"]),
                              "--calibration", str(f["holdout"]), "--out", str(root / "au"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["score"] == "near" and res["set_verdict"] == "used" and res["set_p_value"] < 0.01


@pytest.mark.parametrize("kind", ["colour", "pixels"])
def test_blackbox_cli_with_the_untrained_spaces(folders, capsys, kind):
    """The same service, judged in the colour and pixel spaces: the reproduced members still
    stand out."""
    root, f = folders
    code, out, err = run_cli(["audit", "--generated", str(f["generated"]), "--neutral", str(f["neutral"]),
                              "--members", str(f["members"]), "--holdout", str(f["holdout"]), "--similarity", kind,
                              "--no-evidence",
                              "--out", str(root / f"ev-{kind}"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["similarity"] == kind and res["auroc"] >= 0.75, res["decision_scores"]


@pytest.mark.parametrize("extra, says", [
    (["--finetuned", "x"], "both --finetuned and --generated"),
    (["--generated-is-members"], "--generated is one of the audited folders"),
])
def test_blackbox_bad_input_exits_2(folders, capsys, extra, says):
    root, f = folders
    gen = str(f["members"]) if extra == ["--generated-is-members"] else str(f["generated"])
    extra = [] if extra == ["--generated-is-members"] else extra
    code, out, err = run_cli(["audit", "--generated", gen, "--members", str(f["members"]), "--holdout",
                              str(f["holdout"]), "--out", str(root / "bad"), *extra], capsys)
    assert code == 2 and says in err, err
    assert not (root / "bad" / "results.json").exists()
