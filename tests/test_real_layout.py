"""The real-layout checkpoints: published configs (checked by their parameter counts, on the
meta device) and, under `-m real`, the built folders loading and running as the hub's would."""
from __future__ import annotations

import json

import pytest
import torch

from modelseal.models import real_layout as rl

# Parameter counts of the published checkpoints.
PUBLISHED = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_unet_configs_have_the_published_parameter_counts(name):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**rl.UNETS[name])
    assert sum(p.numel() for p in unet.parameters()) == PUBLISHED[name]


def test_text_vae_and_clip_configs_have_the_published_parameter_counts():
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def n(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        assert n(AutoencoderKL(**rl.VAES["sd15"])) == 83_653_863
        assert n(CLIPTextModel(CLIPTextConfig(**rl.CLIP_L_TEXT))) == 123_060_480
        assert n(CLIPTextModel(CLIPTextConfig(**rl.OPENCLIP_H_TEXT))) == 340_387_840
        assert n(CLIPTextModelWithProjection(CLIPTextConfig(**rl.OPENCLIP_BIGG_TEXT))) == 694_659_840
        assert n(CLIPModel(CLIPConfig(**rl.CLIP_B16))) == 149_620_737


@pytest.mark.parametrize("name,kind", [("sd15", "epsilon"), ("sd21", "v_prediction"), ("sdxl", "epsilon")])
def test_published_scheduler_configs_load_with_their_prediction_type(name, kind, tmp_path):
    from diffusers import DDPMScheduler

    rl._write_scheduler(name, tmp_path)
    sched = DDPMScheduler.from_pretrained(tmp_path)
    assert sched.config.prediction_type == kind
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.num_train_timesteps == 1000
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == rl.SCHEDULERS[name][0]


@pytest.mark.real
@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_real_layout_t2i_loads_and_samples(real_layout, name):
    from modelseal.models.diffusion import load_t2i

    folder = real_layout(name)
    m = load_t2i(folder, dtype=torch.bfloat16 if name == "sdxl" else torch.float32, resolution=64)
    assert m.is_sdxl == (name == "sdxl")
    assert m.prediction_type == ("v_prediction" if name == "sd21" else "epsilon")
    ctx = m.encode_prompts(["a photo of a sks dog", ""])
    width = {"sd15": 768, "sd21": 1024, "sdxl": 2048}[name]
    assert ctx.shape == (2, 78 if name == "sdxl" else 77, width)
    img = m.sample(["a photo of a sks dog"], seeds=[0], steps=2, guidance=5.0)
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


@pytest.mark.real
def test_real_layout_clip_loads(real_layout):
    from modelseal.models.clip import load_clip

    clip = load_clip(real_layout("clip-b16"))
    assert clip.image_size == 224
    assert clip.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    feats = clip.image_features(torch.rand(2, 3, 224, 224))
    assert feats.shape == (2, 512)
