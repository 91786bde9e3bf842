"""modelseal finetune: each method changes the model the way it should, and saves/loads."""
import json

import pytest
import torch

from modelseal.attacks.compress import prune_, quantize_
from modelseal.attacks.finetune import denoising_loss, finetune
from modelseal.config import FinetuneOptions
from modelseal.data.subjects import builtin_subject, write_split
from modelseal.models.diffusion import is_lora_folder, load_t2i
from test_cli import run_cli


def _images(n=6, subject="mnist/5"):
    return torch.from_numpy(builtin_subject(subject)[:n]).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("method", [pytest.param("full", marks=pytest.mark.slow), "lora"])  # full: CI's slow step
def test_finetuning_lowers_the_loss_on_its_images_only(method):
    x, other = _images(12)[:6], _images(12)[6:]
    m = load_t2i("tiny:t2i")
    z, zo = m.encode_images(x), m.encode_images(other)
    p = ["a sks digit"] * 6
    before, before_o = denoising_loss(m, z, p, 32), denoising_loss(m, zo, p, 32)
    info = finetune(m, x, p, FinetuneOptions(method=method, steps=150, batch_size=4), log=lambda s: None)
    after, after_o = denoising_loss(m, z, p, 32), denoising_loss(m, zo, p, 32)
    # LoRA (rank 8, attention only) moves less than the full UNet in the same steps
    assert info["steps"] == 150 and after.mean() < (0.85 if method == "full" else 0.95) * before.mean()
    # memorisation: its own images gain more than unseen images of the same digit
    assert (before - after).mean() > (before_o - after_o).mean()
    if method == "lora":
        base = load_t2i("tiny:t2i")
        assert torch.equal(base.unet.conv_in.weight, m.unet.conv_in.weight)  # base weights untouched
        with m.adapter(False):
            assert denoising_loss(m, z, p, 32) == pytest.approx(before, abs=1e-5)


def test_lora_folder_round_trip(tmp_path, capsys):
    f = write_split(builtin_subject("mnist/5"), tmp_path / "d", {"members": 4})
    code, out, err = run_cli(["finetune", "--method", "lora", "--data", str(f["members"]), "--prompt", "a sks digit",
                              "--steps", "40", "--rank", "4", "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    folder = tmp_path / "r" / "model"
    assert is_lora_folder(folder) and json.loads((folder / "modelseal_finetune.json").read_text())["prompt"] == "a sks digit"
    m = load_t2i(folder)
    assert m.has_adapter
    z = torch.randn(2, 4, 8, 8)
    ctx = m.encode_prompts(["a sks digit"] * 2)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        on = m.unet(z, t, encoder_hidden_states=ctx).sample
        with m.adapter(False):
            off = m.unet(z, t, encoder_hidden_states=ctx).sample
        base = load_t2i("tiny:t2i").unet(z, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(off, base, atol=1e-5) and not torch.allclose(on, base, atol=1e-4)


def test_text_encoder_lora_round_trips_and_switches_with_the_unets(tmp_path, capsys):
    """--train-text-encoder with LoRA: adapters on the text encoder too, saved under
    'text_encoder.' keys, loaded back; adapter(False) gives the base model's contexts and
    PIA, adapter(True) the suspect's."""
    from safetensors import safe_open

    from modelseal.audit.baselines import paired_losses, pia_scores
    from modelseal.models.diffusion import LORA_FILE

    f = write_split(builtin_subject("mnist/5"), tmp_path / "d", {"members": 4})
    code, out, err = run_cli(["finetune", "--method", "lora", "--train-text-encoder", "--data", str(f["members"]),
                              "--prompt", "a sks digit", "--steps", "40", "--rank", "4", "--out", str(tmp_path / "r"),
                              "--json"], capsys)
    assert code == 0, err
    folder = tmp_path / "r" / "model"
    with safe_open(str(folder / LORA_FILE), "pt") as fh:
        keys = list(fh.keys())
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    m, base = load_t2i(folder), load_t2i("tiny:t2i")
    p = ["a sks digit"] * 3
    want = base.encode_prompts(p)
    assert torch.allclose(m.encode_prompts_as(p, False), want, atol=1e-5)
    assert not torch.allclose(m.encode_prompts_as(p, True), want, atol=1e-4)
    assert torch.allclose(m.encode_prompts(p), m.encode_prompts_as(p, True))  # on as loaded
    x = _images(3)
    assert torch.allclose(pia_scores(m, x, p, suspect=False), pia_scores(base, x, p), atol=1e-5)
    l_pre, l_ft = paired_losses(m, m, x, p, samples=4)
    b_pre, _ = paired_losses(base, base, x, p, samples=4)
    assert torch.allclose(l_pre, b_pre, atol=1e-5) and not torch.allclose(l_pre, l_ft)


def test_dreambooth_with_prior_preservation_writes_a_full_model(tmp_path, capsys):
    f = write_split(builtin_subject("mnist-m/3"), tmp_path / "d", {"members": 4})
    code, out, err = run_cli(["finetune", "--method", "dreambooth", "--data", str(f["members"]), "--prompt",
                              "a sks digit", "--class-prompt", "a digit", "--class-images", "8", "--steps", "20",
                              "--out", str(tmp_path / "r"), "--json"], capsys)
    res = json.loads(out)
    assert code == 0 and res["prior_images"] == 8
    assert (tmp_path / "r" / "model" / "unet" / "config.json").is_file()
    assert load_t2i(tmp_path / "r" / "model").sample(["a sks digit"], steps=4).shape == (1, 3, 32, 32)


def test_prune_and_quantize():
    m = load_t2i("tiny:t2i")
    w0 = m.unet.conv_in.weight.clone()
    info = prune_(m.unet, 0.3)
    assert 0.28 <= info["pruned_fraction"] <= 0.32
    m8, m4 = load_t2i("tiny:t2i"), load_t2i("tiny:t2i")
    e8, e4 = quantize_(m8.unet, 8)["relative_weight_error"], quantize_(m4.unet, 4)["relative_weight_error"]
    assert e8 < 0.01 < e4 < 0.2
    assert len(torch.unique(m4.unet.conv_in.weight[0])) <= 15 and not torch.equal(m8.unet.conv_in.weight, w0)


@pytest.mark.parametrize("args", [["--method", "dreambooth", "--data", "{d}"],
                                  ["--method", "full"],
                                  ["--method", "lora", "--data", "{missing}"]])
def test_finetune_bad_input_exits_2(args, tmp_path, capsys):
    f = write_split(builtin_subject("mnist/5"), tmp_path / "d", {"members": 2})
    args = [a.format(d=f["members"], missing=tmp_path / "nope") for a in args]
    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "o"), "--steps", "2", *args], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:"), err
    assert not (tmp_path / "o" / "model").exists()


def test_random_resized_crops_stay_inside_the_image_and_are_seeded():
    from modelseal.attacks.finetune import random_resized_crops

    x = torch.rand(4, 3, 32, 32)
    a = random_resized_crops(x, 0.6, torch.Generator().manual_seed(0))
    b = random_resized_crops(x, 0.6, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    assert a.min() >= 0 and a.max() <= 1
    same = random_resized_crops(x, 0.9999, torch.Generator().manual_seed(1))  # side 1: the image itself
    assert torch.allclose(same, x, atol=1e-5)


@pytest.mark.slow
def test_crops_make_full_finetuning_memorise_less():
    """Random crops (as SD fine-tuning scripts use) still fit the images, but the exact
    images less than plain fine-tuning does: membership is harder to see (CopyMark)."""
    x = _images(12)[:6]
    p = ["a sks digit"] * 6
    gains = {}
    for crop in (0.0, 0.9):
        m = load_t2i("tiny:t2i")
        z = m.encode_images(x)
        before = denoising_loss(m, z, p, 32).mean()
        finetune(m, x, p, FinetuneOptions(method="full", steps=150, batch_size=4, crop=crop), log=lambda s: None)
        gains[crop] = float(1 - denoising_loss(m, z, p, 32).mean() / before)
    assert 0.05 < gains[0.9] < gains[0.0] - 0.1, gains
