"""The real-checkpoint loading path, with no network: tiny random models are saved with
save_pretrained into a folder and loaded by path, exactly as a real checkpoint folder."""
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel

from modelseal.errors import InputError
from modelseal.models.clip import load_clip
from modelseal.models.diffusion import T2IModel, load_t2i
from modelseal.models.tiny import clip_config, scheduler_config, unet_config, vae_config
from modelseal.models.tokenizer import build_tokenizer
from modelseal.zoobuild.stages import _fold_latent_normalisation


@pytest.fixture(scope="module")
def clip_dir(random_clip_dir):
    return random_clip_dir


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = build_tokenizer(max_length=20)
    clip = CLIPModel(clip_config(len(tok), tok.bos_token_id, tok.eos_token_id, 32))
    te = CLIPTextModel(clip.config.text_config)
    vae = AutoencoderKL(**vae_config(32))
    unet = UNet2DConditionModel(**unet_config(8, (32, 64), 1, 128))
    folder = tmp_path_factory.mktemp("t2i")
    T2IModel(unet, vae, te, tok, DDPMScheduler(**scheduler_config())).save_pretrained(folder)
    return folder


def test_clip_loads_by_path_and_prompt_embeddings_match_token_path(clip_dir):
    clip = load_clip(str(clip_dir))
    assert clip.image_size == 32
    assert not any(p.requires_grad for p in clip.model.parameters())
    texts = ["a digit seven", "a handwritten digit two on a photo"]
    ids = clip.tokenize(texts)
    ref = clip.text_features(texts)
    eos = (ids == clip.tokenizer.eos_token_id).int().argmax(-1)
    got = clip.text_features_from_embeddings(clip.token_embeddings(ids), eos)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # causal mask: truncating after the last end token changes nothing
    cut = int(eos.max()) + 1
    got_cut = clip.text_features_from_embeddings(clip.token_embeddings(ids[:, :cut]), eos)
    torch.testing.assert_close(got_cut, ref, atol=1e-5, rtol=1e-5)


def test_clip_per_block_states(clip_dir):
    clip = load_clip(str(clip_dir))
    blocks, feat = clip.vision_block_states(torch.rand(3, 3, 40, 40))
    assert len(blocks) == clip.model.config.vision_config.num_hidden_layers
    assert blocks[0].shape == (3, (32 // 8) ** 2 + 1, 128)
    torch.testing.assert_close(feat.norm(dim=-1), torch.ones(3))


def test_t2i_loads_by_path_round_trips_and_samples_reproducibly(t2i_dir):
    m = load_t2i(str(t2i_dir))
    assert (m.image_size, m.latent_size, m.vae_scale) == (32, 8, 4)
    x = torch.rand(2, 3, 32, 32)
    z = m.encode_images(x)
    assert z.shape == (2, 4, 8, 8)
    assert m.decode_latents(z).shape == (2, 3, 32, 32)
    a = m.sample(["a digit one", "a digit two"], seeds=[5, 6], steps=3, guidance=3.0)
    b = m.sample(["a digit one", "a digit two"], seeds=[5, 6], steps=3, guidance=3.0)
    c = m.sample(["a digit one", "a digit two"], seeds=[7, 6], steps=3, guidance=3.0)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


def test_missing_checkpoint_is_one_clear_input_error(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        load_clip(str(tmp_path / "nope" / "clip"))
    with pytest.raises(InputError, match="cannot load a text-to-image model"):
        load_t2i(str(tmp_path))  # an empty folder is not a checkpoint
    with pytest.raises(InputError, match="not a clip model"):
        load_clip("tiny:t2i")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)  # 'runs/wm' under an existing local runs/: a missing folder, no hub look-up
    with pytest.raises(InputError, match="does not exist"):
        load_t2i("runs/wm")


def test_latent_normalisation_folding_is_exact():
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config(32)).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        ref = vae.decode(z).sample
        mu, sd = z.mean((0, 2, 3)), z.std((0, 2, 3))
        _fold_latent_normalisation(vae, mu, sd)
        z2 = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(z2, (z - mu.view(1, -1, 1, 1)) / sd.view(1, -1, 1, 1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.decode(z2).sample, ref, atol=1e-4, rtol=1e-4)
