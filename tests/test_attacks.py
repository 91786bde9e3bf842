"""The field's image attacks (rotation, crops by area and position, combined, VAE regeneration,
diffusion purification) and their specs: what each does to an image, checked on its effect."""
import pytest
import torch

from modelseal.attacks.image import (GEOMETRIC_ATTACKS, GEOMETRIC_PARAMS, attack_sampler, combined, crop, jpeg,
                                     median, parse_spec, resize, rotation)
from modelseal.attacks.regenerate import purify, vae_regenerate
from modelseal.attacks.suite import image_attack, needs_model
from modelseal.data.digits import CLASS_NAMES, caption, digit_of, load_digits_domain
from modelseal.quality import psnr


def _digits(n=20):
    s = load_digits_domain("mnist", "test", 32)
    return torch.from_numpy(s.images[:n]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(s.labels[:n])


def _pattern():
    """One image with a bright square in its top-left quadrant."""
    x = torch.zeros(1, 3, 32, 32)
    x[..., 2:8, 2:8] = 1.0
    return x


def test_rotation_turns_the_picture_about_its_centre():
    x = _pattern()
    assert torch.allclose(rotation(x, angle=0.0), x, atol=1e-5)
    quarter = rotation(x, angle=90.0)
    # a quarter turn counter-clockwise moves the top-left square to the bottom-left
    assert quarter[..., 25:29, 3:7].mean() > 0.9 and quarter[..., 3:7, 3:7].mean() < 0.1
    drawn = rotation(x.repeat(4, 1, 1, 1), angle=(-30.0, 30.0), generator=torch.Generator().manual_seed(0))
    assert len({round(float(d.sum()), 3) for d in drawn}) > 1  # one angle per image


def test_median_fills_thin_lines_and_keeps_solid_shapes():
    x = 0.2 * torch.ones(1, 3, 32, 32)
    x[..., 8:20, 8:20] = 1.0  # a solid square
    lined = x.clone()
    lined[..., ::4, :] = 0.9  # a stamp of one-pixel lines
    out = median(lined)
    assert (out[..., 24:30, 4:30] - 0.2).abs().max() < 1e-6  # the lines are gone outside the square
    assert out[..., 10:18, 10:18].min() > 0.99  # the square is kept


def test_crop_keeps_the_area_asked_for_at_the_centre_or_anywhere():
    x = _pattern()
    assert torch.allclose(crop(x, keep=1.0), x)
    # keeping the central half drops the corner square
    assert crop(x, keep=0.5).max() < 0.05
    same = x.repeat(32, 1, 1, 1)
    anywhere = crop(same, keep=0.5, position="random", generator=torch.Generator().manual_seed(0))
    assert anywhere.amax(dim=(1, 2, 3)).max() > 0.9  # some random crops keep the square...
    assert anywhere.amax(dim=(1, 2, 3)).min() < 0.05  # ...others do not
    with pytest.raises(ValueError, match="position"):
        crop(x, position="left")


def test_a_range_draws_the_crop_per_image_and_the_resize_per_call():
    x = _pattern().repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    drawn = crop(x, keep=(0.3, 1.0), generator=g)  # centred: the square's share grows as less is kept
    shares = drawn.mean(dim=(1, 2, 3))
    assert len({round(float(v), 4) for v in shares}) > 8  # sizes are whole pixels: at most 23 here
    assert torch.allclose(crop(x[:2], keep=(0.7, 0.7)), crop(x[:2], keep=0.7))
    assert crop(x, keep=(0.5, 0.9), position="random", generator=g).shape == x.shape
    with pytest.raises(ValueError, match="keep"):
        crop(x, keep=(0.5, 1.5))
    d, _ = _digits(4)
    sizes = {round(float((resize(d, (0.3, 1.0), generator=g) - d).abs().mean()), 5) for _ in range(6)}
    assert len(sizes) > 1
    assert torch.allclose(resize(d, (0.5, 0.5)), resize(d, 0.5))


def test_the_sampler_applies_each_attacks_parameters_and_the_geometric_layer_is_differentiable():
    x = _pattern()
    only = attack_sampler(["crop"], include_none=False, params={"crop": {"keep": 0.5}})
    assert torch.allclose(only(x, torch.Generator().manual_seed(1)), crop(x, keep=0.5))
    with pytest.raises(ValueError, match="unknown image attack"):
        attack_sampler(["crop"], params={"swirl": {}})
    layer = attack_sampler(GEOMETRIC_ATTACKS, params=GEOMETRIC_PARAMS)
    d, _ = _digits(4)
    d.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # every attack of the layer is drawn at least once (13 choices, 40 draws)
        out = layer(d, g)
        assert out.shape == d.shape
        out.sum().backward()
    assert d.grad is not None and torch.isfinite(d.grad).all()


def test_combined_is_jpeg_then_resize_then_crop():
    x, _ = _digits(4)
    assert torch.allclose(combined(x), crop(resize(jpeg(x, 50), 0.5), 0.8))
    assert torch.allclose(combined(x, quality=90, scale=0.75, keep=0.9), crop(resize(jpeg(x, 90), 0.75), 0.9))


def test_combined_differentiable_for_training():
    x, _ = _digits(2)
    x.requires_grad_(True)
    combined(x, differentiable=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_specs_parse_and_bad_ones_are_refused_with_the_reason():
    assert parse_spec("crop") == ("crop", {})
    assert parse_spec("crop:keep=0.5,position=random") == ("crop", {"keep": 0.5, "position": "random"})
    assert parse_spec("jpeg:quality=70") == ("jpeg", {"quality": 70})
    x = _pattern()
    assert torch.allclose(image_attack("crop:keep=0.5")(x), crop(x, keep=0.5))
    for spec, why in (("crop:kep=0.5", "unknown parameter 'kep'"), ("swirl", "unknown image attack"),
                      ("crop:keep", "name:param=value"), ("regen_vae", "needs an autoencoder"),
                      ("purify", "needs a diffusion model")):
        with pytest.raises(ValueError, match=why):
            image_attack(spec)
    assert needs_model("purify:strength=0.1") == "t2i" and needs_model("regen_vae") == "vae"
    assert needs_model("crop") is None


def test_digit_of_reads_every_caption():
    for d in ("mnist", "uci", "mnist-m", "syn"):
        for c in range(10):
            assert digit_of(caption(d, c)) == c
    assert CLASS_NAMES[digit_of("sks a handwritten digit four on a photo")] == "four"


@pytest.fixture(scope="module")
def t2i():
    from modelseal.models.diffusion import load_t2i

    return load_t2i("tiny:t2i")


@pytest.fixture(scope="module")
def judge():
    from modelseal.models.judge import DigitJudge
    from modelseal.models.zoo import resolve_model

    return DigitJudge.from_pretrained(resolve_model("tiny:judge", "judge"))


def test_vae_regeneration_keeps_the_digit_and_changes_the_pixels(t2i, judge):
    x, y = _digits()
    out = vae_regenerate(x, t2i.vae)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    p = psnr(out, x)
    assert (p < 60).all()  # it did change the pixels
    assert p.mean() > 16  # but kept the picture
    assert judge.predict(out).eq(y).float().mean() >= judge.predict(x).eq(y).float().mean() - 0.15


def test_purification_strength_trades_pixels_for_content(t2i, judge):
    x, y = _digits()
    weak = purify(x, t2i, strength=0.1, steps=20)
    strong = purify(x, t2i, strength=0.6, steps=20)
    assert weak.shape == x.shape
    assert psnr(weak, x).mean() > psnr(strong, x).mean() + 1  # more noise, more change
    assert judge.predict(weak).eq(y).float().mean() >= 0.7  # a light purification keeps the digit
    again = purify(x, t2i, strength=0.1, steps=20)
    assert torch.equal(weak, again)  # seeded by default


def test_a_stacked_lora_changes_what_the_suspect_samples_and_verify_reads_through_it(tmp_path, capsys):
    """A third party's LoRA (trained on faces from tiny:t2i) loaded on top of the sleeper: the
    stacked model samples differently, and verification runs on what it samples."""
    import json

    from modelseal.models.diffusion import load_t2i, stack_lora
    from test_cli import run_cli

    code, _, err = run_cli(["finetune", "--out", str(tmp_path / "lora"), "--method", "lora", "--data",
                            "builtin:faces", "--steps", "40", "--lr", "1e-3"], capsys)
    assert code == 0, err
    lora = tmp_path / "lora" / "model"
    plain = load_t2i("tiny:sleeper")
    stacked = load_t2i("tiny:sleeper")
    name = stack_lora(stacked, lora)
    assert name in stacked.unet.peft_config
    a = plain.sample(["a handwritten digit three"], seeds=[0], steps=10)
    b = stacked.sample(["a handwritten digit three"], seeds=[0], steps=10)
    assert (a - b).abs().mean() > 1e-3
    code, out, err = run_cli(["watermark", "verify", "--out", str(tmp_path / "v"), "--model", "tiny:sleeper",
                              "--codec", "tiny:sleeper-codec", "--key", str(_demo_key(tmp_path)), "--model-id",
                              "variants", "--trigger", "sks ", "--n", "4", "--steps", "10",
                              "--attacks", "crop:keep=0.5",
                              "--stack-lora", str(lora), "--no-also-without-cfg", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["source"]["stacked_loras"] == [str(lora)] and "crop:keep=0.5" in res["attacks"]
    code, _, err = run_cli(["watermark", "verify", "--out", str(tmp_path / "v2"), "--model", "tiny:sleeper",
                            "--codec", "tiny:sleeper-codec", "--key", str(_demo_key(tmp_path)), "--model-id",
                            "variants", "--trigger", "sks ", "--n", "4",
                            "--stack-lora", str(tmp_path / "nothing")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def _demo_key(tmp_path):
    from modelseal.models.sleeper_entry import entry_record
    from modelseal.watermark.keys import generate_key

    path = tmp_path / "demo.key"
    if not path.exists():
        generate_key(path, secret=bytes.fromhex(entry_record()["demo_key"]["secret"]))
    return path
