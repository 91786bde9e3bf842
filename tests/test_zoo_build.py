"""The zoo build pipeline on its micro preset (a few steps per stage), end to end through
the CLI, into $MODELSEAL_HOME/zoo, which then wins over the shipped zoo."""
import json

import pytest
import torch

from modelseal.cli import main
from modelseal.models.clip import load_clip
from modelseal.models.diffusion import load_t2i
from modelseal.models.zoo import modelseal_home, zoo_dir


@pytest.mark.slow
def test_micro_build_produces_a_loadable_zoo_that_wins_over_the_shipped_one(capsys):
    try:
        main(["zoo", "build", "--preset", "micro", "--json"])
    except SystemExit as e:
        assert not e.code
    res = json.loads(capsys.readouterr().out)
    home_zoo = modelseal_home() / "zoo"
    assert res["zoo"] == str(home_zoo)
    assert set(res["stages"]) == {"clip", "judge", "vae", "unet", "codec"}
    assert 0 <= res["t2i_prompt_accuracy"] <= 100
    folder, origin = zoo_dir()
    assert (folder, origin) == (home_zoo, "rebuilt")
    clip = load_clip("tiny:clip")
    assert clip.text_features(["a digit one"]).shape == (1, 128)
    t2i = load_t2i("tiny:t2i")
    img = t2i.sample(["a handwritten digit one"], seeds=[0], steps=2)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    from modelseal.watermark.codec import Codec

    codec = Codec.from_pretrained("tiny:codec")
    assert codec.k == 32 and tuple(codec.latent_shape) == (4, 8, 8)
    # a second run resumes: every stage is kept, nothing retrained
    main(["zoo", "build", "--preset", "micro", "--no-eval"])
    assert "already built, kept" in capsys.readouterr().err


def test_unet_init_starts_a_larger_t2i_from_the_shipped_unet_and_refuses_one_that_does_not_fit():
    """Growing the zoo to a larger t2i_image_size: the new UNet (16x16 latents) starts from the
    shipped one's weights, so on the shipped size's inputs it gives the shipped UNet's outputs."""
    from diffusers import UNet2DConditionModel

    from modelseal.errors import InputError
    from modelseal.models.tiny import unet_config
    from modelseal.zoobuild.build import _stage_keys
    from modelseal.zoobuild.stages import init_unet

    shipped = load_t2i("tiny:t2i").unet.float()
    cfg = shipped.config
    grown = UNet2DConditionModel(**unet_config(16, list(cfg.block_out_channels), cfg.layers_per_block,
                                               cfg.cross_attention_dim))
    z, ctx = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randn(2, 77, cfg.cross_attention_dim)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        before = grown(z, t, encoder_hidden_states=ctx).sample
        init_unet(grown, "tiny:t2i")
        after, want = grown(z, t, encoder_hidden_states=ctx).sample, shipped(z, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(after, want, atol=1e-5) and not torch.allclose(before, want, atol=1e-2)
    assert grown.config.sample_size == 16
    narrow = UNet2DConditionModel(**unet_config(16, [32, 64], 1, cfg.cross_attention_dim))
    with pytest.raises(InputError, match="does not fit this UNet"):
        init_unet(narrow, "tiny:t2i")
    with pytest.raises(InputError, match="does not exist"):
        init_unet(narrow, "/nonexistent/t2i")
    # a changed working size rebuilds the UNet and the codec, not the CLIP or the VAE
    keys = {s: _stage_keys(s, {"t2i_image_size": 64, "unet_init": None}) for s in ("clip", "vae", "unet", "codec")}
    assert "t2i_image_size" in keys["unet"] and "t2i_image_size" in keys["codec"] and "unet_init" in keys["unet"]
    assert "t2i_image_size" not in keys["clip"] and "t2i_image_size" not in keys["vae"]
