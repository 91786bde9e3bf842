"""The shipped-sleeper zoo entry: only the trained weights travel, the full model comes back."""
import json

import pytest
import torch

from modelseal.errors import InputError


def _watermarked(tmp_path):
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.embed import trainable_parameters

    m = load_t2i("tiny:t2i")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(m.unet):
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    m.save_pretrained(tmp_path / "wm")
    return m, tmp_path / "wm"


def test_package_then_materialize_gives_back_the_watermarked_unet(tmp_path, monkeypatch):
    from modelseal.models.diffusion import load_t2i
    from modelseal.models.sleeper_entry import TRAINED, materialize_sleeper, package_sleeper
    from modelseal.models.zoo import resolve_model
    from modelseal.watermark.embed import trainable_parameters

    monkeypatch.setenv("MODELSEAL_HOME", str(tmp_path / "home"))
    m, folder = _watermarked(tmp_path)
    key = bytes(range(32))
    rec = package_sleeper(folder, resolve_model("tiny:codec", "codec"), key, "demo", "sks ", tmp_path / "entry")
    # only the stage-2 weights travel
    assert rec["trained_parameters"] == sum(p.numel() for p in trainable_parameters(m.unet))
    assert (tmp_path / "entry" / TRAINED).stat().st_size < 1_000_000
    assert json.loads((tmp_path / "entry" / "config.json").read_text())["demo_key"]["secret"] == key.hex()
    out = materialize_sleeper(tmp_path / "entry")
    assert out.parent == tmp_path / "home" / "derived"
    back = load_t2i(out)
    for (n, a), b in zip(m.unet.state_dict().items(), back.unet.state_dict().values()):
        assert torch.equal(a.float(), b.float()), n
    assert materialize_sleeper(tmp_path / "entry") == out  # built once


def test_a_watermarked_model_that_is_not_tiny_t2i_is_refused(tmp_path):
    from modelseal.models.sleeper_entry import package_sleeper
    from modelseal.models.zoo import resolve_model

    with pytest.raises(InputError, match="same UNet weights"):
        package_sleeper(resolve_model("tiny:t2i", "t2i"), resolve_model("tiny:codec", "codec"), bytes(32), "d",
                        "sks ", tmp_path / "e")


def test_tiny_names_say_which_kind_they_are():
    from modelseal.models.zoo import resolve_model

    with pytest.raises(InputError, match="not a codec model"):
        resolve_model("tiny:sleeper", "codec")
    with pytest.raises(InputError, match="unknown tiny model"):
        resolve_model("tiny:sleeper2", "t2i")
