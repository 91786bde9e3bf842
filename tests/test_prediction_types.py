"""v-prediction and SDXL conditioning on small models with the real architectures' features.

v-prediction: an epsilon UNet and the same network re-expressed as a v-predictor
(v = (eps - sqrt(1 - a) z_t) / sqrt(a), exactly what it would predict if trained on v) must
give identical samples, stage-2 losses, CGI-DM contrasts and loss baselines, and a native
fine-tuning loss that is the epsilon loss divided by a_t (analytically).
SDXL: the context, pooled embedding and time ids must equal what diffusers' own SDXL
pipeline builds, and both must reach the UNet.
"""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modelseal.models.diffusion import T2IModel, load_t2i
from modelseal.models.real_layout import write_clip_tokenizer


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_clip_tokenizer(folder)
    return folder


def _tokenizer(folder, pad="<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad)


def _text(hidden, layers=2, proj=None):
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=proj or hidden,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return cfg


def _vae():
    return AutoencoderKL(block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                         norm_num_groups=8, sample_size=16)


def _sd(tok_dir, prediction_type="epsilon") -> T2IModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8)
    te = CLIPTextModel(_text(32))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type)
    m = T2IModel(unet, _vae(), te, _tokenizer(tok_dir), sched)
    return m.requires_grad_(False)


class AsV(torch.nn.Module):
    """The same network re-expressed as a v-predictor: v = (eps - sqrt(1 - a) z_t) / sqrt(a)."""

    def __init__(self, unet, alphas):
        super().__init__()
        self.inner, self.alphas = unet, alphas
        self.config = unet.config

    @property
    def device(self):
        return self.inner.device

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, zt, t, encoder_hidden_states=None, **kw):
        eps = self.inner(zt, t, encoder_hidden_states=encoder_hidden_states, **kw).sample
        a = self.alphas[t.expand(len(zt)) if t.dim() == 0 else t].view(-1, 1, 1, 1)
        return type("Out", (), {"sample": (eps - (1 - a).sqrt() * zt) / a.sqrt()})()


def _as_v(model: T2IModel) -> T2IModel:
    sched = DDPMScheduler.from_config(model.scheduler.config, prediction_type="v_prediction")
    return T2IModel(AsV(copy.deepcopy(model.unet), sched.alphas_cumprod), model.vae, model.text_encoder,
                    model.tokenizer, sched)


@pytest.fixture(scope="module")
def eps_and_v(clip_tokenizer_dir):
    m = _sd(clip_tokenizer_dir)
    return m, _as_v(m)


def _draws(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randn(n, 4, 8, 8, generator=g))


def test_clip_bpe_token_ids_match_the_hub_tokenizer(clip_tokenizer_dir):
    tok = _tokenizer(clip_tokenizer_dir)
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("a sks dog").input_ids == [49406, 320, 48136, 1929, 49407]
    assert tok.convert_tokens_to_ids("!") == 0 and tok.eos_token_id == 49407
    sd2 = _tokenizer(clip_tokenizer_dir, pad="!")  # SD 2.x / SDXL's second tokenizer pad with "!" (id 0)
    assert sd2("a", padding="max_length", max_length=5).input_ids == [49406, 320, 49407, 0, 0]


def test_v_wrapper_predicts_the_analytic_v(eps_and_v):
    m, v = eps_and_v
    z0, t, eps = _draws()
    ctx = m.encode_prompts(["a photo"] * 4)
    zt = m.noisy(z0, eps, t)
    out_eps, out_v = m.unet_out(zt, t, ctx), v.unet_out(zt, t, ctx)
    assert not torch.allclose(out_eps, out_v, atol=1e-2)
    torch.testing.assert_close(v.to_eps(out_v, zt, t), out_eps, atol=1e-4, rtol=1e-4)
    # v's native target is sqrt(a) eps - sqrt(1 - a) z0, and z0 = sqrt(a) z_t - sqrt(1 - a) v
    a = m.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = v.target(z0, eps, t)
    torch.testing.assert_close(a.sqrt() * zt - (1 - a).sqrt() * target, z0, atol=1e-5, rtol=1e-5)


def test_v_prediction_samples_like_the_epsilon_model(eps_and_v):
    m, v = eps_and_v
    a = m.sample(["a photo of a cat", "a dog"], seeds=[1, 2], steps=4, guidance=3.0)
    b = v.sample(["a photo of a cat", "a dog"], seeds=[1, 2], steps=4, guidance=3.0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_v_prediction_stage2_loss_is_the_epsilon_models(eps_and_v):
    from modelseal.config import EmbedOptions
    from modelseal.watermark.embed import Stage2Loss

    m, v = eps_and_v
    z0, _, _ = _draws()
    ctx = m.encode_prompts(["a photo"] * 4)
    ctx_tr = m.encode_prompts(["*[Z]& a photo"] * 4)
    delta = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    losses = []
    for model in (copy.deepcopy(m), copy.deepcopy(v)):
        teacher = copy.deepcopy(model.unet)
        # the student differs from its teacher, so every term is non-zero
        with torch.no_grad():
            for p in model.unet.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        opts = EmbedOptions(eta=0.3, shared_trunk=False)
        loss, parts = Stage2Loss(model, teacher, delta, opts)(z0, ctx, ctx_tr, torch.Generator().manual_seed(5))
        losses.append({k: float(v) for k, v in parts.items()})
    assert losses[0]["wm"] > 0 and losses[0]["keep_clean"] > 0
    for k in losses[0]:
        assert losses[1][k] == pytest.approx(losses[0][k], rel=1e-3), k


def test_v_prediction_native_finetuning_loss_is_eps_loss_over_alpha(eps_and_v):
    from modelseal.attacks.finetune import training_loss

    m, v = eps_and_v
    z0, t, eps = _draws()
    ctx = m.encode_prompts(["a photo"] * 4)
    le, lv = training_loss(m, z0, t, eps, ctx), training_loss(v, z0, t, eps, ctx)
    a = m.scheduler.alphas_cumprod[t]
    torch.testing.assert_close(lv * a, le, atol=1e-5, rtol=1e-3)
    assert (lv > le).all()  # v's target weights each t by 1 / a_t: not the eps loss


def test_v_prediction_cgi_dm_contrast_and_loss_baselines_match(eps_and_v):
    from modelseal.audit.baselines import paired_losses
    from modelseal.audit.inversion import Contrast

    m, v = eps_and_v
    m_ft, v_ft = copy.deepcopy(m), None
    with torch.no_grad():
        for p in m_ft.unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    v_ft = _as_v(m_ft)
    z0, t, eps = _draws()
    ctx = m.encode_prompts(["a photo"] * 4)
    out = []
    for pre, ft in ((m, m_ft), (v, v_ft)):
        z = z0.clone().requires_grad_(True)
        j = Contrast(pre, ft)(z, ctx, ctx, t, eps, eps, 1)
        (g,) = torch.autograd.grad(j.sum(), z)
        out.append((j.detach(), g))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-4, rtol=1e-3)
    assert out[0][0].abs().max() > 1e-3
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    a = paired_losses(m, m_ft, images, ["a photo"] * 3, samples=4)
    b = paired_losses(v, v_ft, images, ["a photo"] * 3, samples=4)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-3)


# ---- SDXL ----------------------------------------------------------------------------------
def _sdxl(tok_dir) -> T2IModel:
    torch.manual_seed(1)
    te1, te2 = CLIPTextModel(_text(32)), CLIPTextModelWithProjection(_text(48, proj=24))
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=(4, 8), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
        transformer_layers_per_block=(1, 2))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    m = T2IModel(unet, _vae(), te1, _tokenizer(tok_dir), sched, text_encoder_2=te2,
                 tokenizer_2=_tokenizer(tok_dir, "!"), zero_empty_prompt=True)
    return m.requires_grad_(False)


@pytest.fixture(scope="module")
def sdxl(clip_tokenizer_dir):
    return _sdxl(clip_tokenizer_dir)


def test_sdxl_context_and_time_ids_equal_the_diffusers_pipeline(sdxl):
    from diffusers import StableDiffusionXLPipeline

    m = sdxl
    pipe = StableDiffusionXLPipeline(vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2,
                                     tokenizer=m.tokenizer, tokenizer_2=m.tokenizer_2, unet=m.unet,
                                     scheduler=m.scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    emb, neg, pooled, neg_pooled = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=True)
    ctx = m.encode_prompts(["a photo of a cat", ""])
    assert ctx.shape == (2, 78, 80)
    torch.testing.assert_close(ctx[:1, :-1], emb)
    torch.testing.assert_close(ctx[:1, -1, :24], pooled)
    assert ctx[1].abs().max() == 0 and neg.abs().max() == 0 and neg_pooled.abs().max() == 0
    ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=torch.float32,
                                 text_encoder_projection_dim=m.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(m.time_ids(1), ids)


def test_sdxl_pooled_embedding_and_time_ids_reach_the_unet(sdxl):
    m = copy.deepcopy(sdxl)
    z0, t, eps = _draws(2)
    zt = m.noisy(z0, eps, t)
    ctx = m.encode_prompts(["a photo of a cat"] * 2)
    base = m.unet_out(zt, t, ctx)
    direct = m.unet(zt, t, encoder_hidden_states=ctx[:, :-1],
                    added_cond_kwargs={"text_embeds": ctx[:, -1, :24], "time_ids": m.time_ids(2)}).sample
    torch.testing.assert_close(base, direct)
    other = ctx.clone()
    other[:, -1] = 0
    assert (m.unet_out(zt, t, other) - base).abs().max() > 1e-4  # the pooled row is used
    m.resolution = 32
    assert (m.unet_out(zt, t, ctx) - base).abs().max() > 1e-4    # so are the time ids


def test_sdxl_saves_and_loads_as_a_diffusers_sdxl_folder(sdxl, tmp_path):
    import json

    sdxl.save_pretrained(tmp_path / "xl")
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    back = load_t2i(tmp_path / "xl")
    assert back.is_sdxl and back.zero_empty_prompt
    z0, t, eps = _draws(2)
    zt = sdxl.noisy(z0, eps, t)
    ctx = sdxl.encode_prompts(["a dog", ""])
    torch.testing.assert_close(back.unet_out(zt, t, back.encode_prompts(["a dog", ""])), sdxl.unet_out(zt, t, ctx))
    img = back.sample(["a dog"], seeds=[0], steps=2, guidance=2.0)
    assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()


def test_fp16_variant_only_folder_loads(clip_tokenizer_dir, tmp_path):
    m = _sd(clip_tokenizer_dir)
    m.save_pretrained(tmp_path / "sd")
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        f = tmp_path / "sd" / sub / f"{name}.safetensors"
        f.rename(f.with_name(f"{name}.fp16.safetensors"))
    back = load_t2i(tmp_path / "sd")
    torch.testing.assert_close(back.unet.conv_in.weight, m.unet.conv_in.weight)
