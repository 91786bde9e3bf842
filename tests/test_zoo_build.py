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
