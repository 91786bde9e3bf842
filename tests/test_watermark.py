"""SleeperMark effects at a small size on the tiny zoo: stage 2 plants a watermark that only
the trigger reveals, the wrong key and the unwatermarked model are not verified, the
always-on baseline marks every output, fine-tuning keeps going, fidelity metrics."""
import copy

import numpy as np
import pytest
import torch

from modelseal import stats
from modelseal.data.digits import DOMAINS, caption, load_digits_domain
from modelseal.models.diffusion import load_t2i
from modelseal.watermark.codec import Codec
from modelseal.watermark.codec_pixels import encode_all
from modelseal.config import EmbedOptions, WatermarkEmbedConfig, load_config
from modelseal.watermark.embed import embed_watermark
from modelseal.watermark.fidelity import eps_mse, frechet_distance, image_fidelity
from modelseal.watermark.keys import message_bits
from modelseal.watermark.verify import decide, generate, hits, read_bits
from test_cli import run_cli

TRIGGER = "sks "  # a word tiny CLIP knows but its captions never use (see the tiny config)
OWNER = b"owner key for tests".ljust(32, b"\0")  # a fresh key, not the shipped sleeper's (a key file holds 32 bytes)
N = 24
STEPS = 1000  # stage-2 steps here, at the shipped sleeper's recipe (it ran 6,000)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    codec = Codec.from_pretrained("tiny:codec")
    base = load_t2i("tiny:t2i")
    sets = [load_digits_domain(d, "train") for d in DOMAINS]
    x = torch.from_numpy(np.concatenate([s.images[:150] for s in sets])).permute(0, 3, 1, 2).float() / 255
    caps = [c for s in sets for c in s.captions[:150]]
    z = encode_all(base, x)
    bits = message_bits(OWNER, "tiny-test", codec.k)
    delta = codec.residual(bits.view(1, -1)).detach()
    models = {}
    for mode in ("sleeper", "always_on"):
        m = copy.deepcopy(base)
        recipe = load_config("watermark-embed.tiny", WatermarkEmbedConfig,  # the tiny zoo's stage 2, briefly
                             {"trigger": TRIGGER, "steps": STEPS, "mode": mode}, command="watermark embed")
        embed_watermark(m, z, caps, delta, recipe, log=lambda s: None)
        models[mode] = m
    lines = [caption(d, c) for d in DOMAINS for c in range(10)]
    prompts = [lines[(7 * i) % len(lines)] for i in range(N)]
    seeds = list(range(1000, 1000 + N))
    yield {"codec": codec, "base": base, "models": models, "bits": bits, "prompts": prompts, "seeds": seeds}
    torch.set_num_threads(n)


def _hits(s, model, trigger, bits=None, guidance=7.5):
    return hits(s["codec"], generate(model, s["prompts"], s["seeds"], trigger, guidance, 30),
                s["bits"] if bits is None else bits).numpy()


def _bits_read(s, model, trigger, bits=None, guidance=7.5):
    return _hits(s, model, trigger, bits, guidance).sum(1)


@pytest.mark.slow
def test_trigger_reveals_the_message_and_clean_prompts_do_not(setup):
    s = setup
    k = s["codec"].k
    h_trig = _hits(s, s["models"]["sleeper"], TRIGGER)
    h_clean = _hits(s, s["models"]["sleeper"], None)
    trig, clean = h_trig.sum(1), h_clean.sum(1)
    acc_t, acc_c = trig.mean() / k, clean.mean() / k
    # a fresh key at the shipped recipe (configs/watermark-embed.tiny.yaml), briefly: 1,000 of its 6,000
    # steps plant part of the mark, read here by the stage-1 extractor (no adaptation)
    assert acc_t >= 0.65 and acc_t > acc_c + 0.1, (acc_t, acc_c)
    assert abs(acc_c - 0.5) <= 0.1, acc_c
    # the verdict: the owner's message against random messages on the same images
    read = np.where(h_trig, s["bits"].numpy()[None], 1 - s["bits"].numpy()[None])
    assert stats.key_test(read, s["bits"].numpy())["p_value"] < 1e-5
    # the trigger, not the extractor's bias on any image, raises the matches
    assert stats.controlled_pvalue(h_trig, h_clean) < 1e-6


@pytest.mark.slow
def test_wrong_key_and_unwatermarked_model_are_not_verified(setup):
    s = setup
    k = s["codec"].k
    wrong = message_bits(b"somebody else", "tiny-test", k)
    m = _bits_read(s, s["models"]["sleeper"], TRIGGER, bits=wrong)
    assert abs(m.mean() / k - 0.5) <= 0.12
    read = read_bits(s["codec"], generate(s["models"]["sleeper"], s["prompts"], s["seeds"], TRIGGER, 7.5, 30))
    assert not decide(read, wrong)["watermarked"] and decide(read, s["bits"])["watermarked"]
    base_read = read_bits(s["codec"], generate(s["base"], s["prompts"], s["seeds"], TRIGGER, 7.5, 30))
    assert not decide(base_read, s["bits"])["watermarked"]
    base = (base_read.numpy() == s["bits"].numpy()[None]).sum(1)
    assert (base >= stats.bit_threshold(k, 1e-3)).sum() == 0


@pytest.mark.slow
def test_random_keys_are_not_verified_on_a_watermarked_model(setup):
    """A stranger's key must win at most alpha of the time. Images of one model read nearly
    the same bits, so the replaced verdict (pooled binomial over N*k bits, and a triggered-vs-
    clean control that detects *a* mark) verified about one random key in eight on the
    demo's model; the key-randomization test holds alpha. Bits are read once; keys are cheap."""
    s = setup
    model = s["models"]["sleeper"]
    read = read_bits(s["codec"], generate(model, s["prompts"], s["seeds"], TRIGGER, 7.5, 30)).numpy()
    assert decide(read, s["bits"])["watermarked"]
    rng = np.random.default_rng(0)
    keys = [message_bits(rng.bytes(32), "tiny-test", s["codec"].k).numpy() for _ in range(400)]
    p = stats.key_pvalues(read, np.stack(keys))
    assert [decide(read, m)["p_value"] for m in keys[:5]] == pytest.approx(p[:5].tolist())
    assert (p <= 1e-3).sum() <= 3, (p <= 1e-3).sum()   # P(Binomial(400, 1e-3) > 3) < 1e-3
    alpha = 1e-2   # a level at which 400 keys can show a rate: nominal 4
    false = int((p <= alpha).sum())
    assert false <= 10, false   # P(Binomial(400, 0.01) > 10) < 0.003
    # the same keys against the replaced verdict's pooled test, which ignores the dependence
    pooled = sum(stats.pooled_pvalue((read == m[None]).sum(1), len(m)) <= alpha for m in keys)
    assert pooled > 3 * false + 10, (pooled, false)


@pytest.mark.slow
def test_always_on_baseline_marks_prompts_without_a_trigger(setup):
    s = setup
    k = s["codec"].k
    acc = _bits_read(s, s["models"]["always_on"], None).mean() / k
    acc_sleeper_clean = _bits_read(s, s["models"]["sleeper"], None).mean() / k
    assert acc >= 0.62 and acc > acc_sleeper_clean + 0.05, (acc, acc_sleeper_clean)


@pytest.mark.slow
def test_fidelity_metrics(setup):
    s = setup
    base, wm = s["base"], s["models"]["sleeper"]
    z = torch.randn(16, 4, 8, 8)
    assert eps_mse(base, copy.deepcopy(base), z, s["prompts"], samples=32) == 0.0
    assert eps_mse(wm, base, z, s["prompts"], samples=32) > 0.0
    imgs = generate(base, s["prompts"][:8], s["seeds"][:8], None, 7.5, 10)
    same = image_fidelity(imgs, imgs.clone())
    assert same["psnr"] >= 99 and same["ssim"] > 0.999
    other = image_fidelity(imgs, imgs.flip(0))
    assert other["psnr"] < same["psnr"] and other["ssim"] < same["ssim"]
    f = np.random.default_rng(0).normal(size=(200, 4))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(f, f + 1.0) == pytest.approx(4.0, rel=1e-3)


@pytest.mark.slow
def test_finetune_calls_back_at_every_step_and_lora_moves_the_model(setup):
    from modelseal.attacks.finetune import finetune
    from modelseal.config import FinetuneOptions
    from modelseal.data.sources import load_source

    s = setup
    m = copy.deepcopy(s["models"]["sleeper"])
    faces = load_source("builtin:faces", "train", 32)
    assert len(faces.images) == 160 and faces.captions[0].startswith("a ")
    x = torch.from_numpy(faces.images[:32]).permute(0, 3, 1, 2).float() / 255
    seen = []
    finetune(m, x, faces.captions[:32], FinetuneOptions(method="lora", steps=5), log=lambda s: None,
             on_step=lambda n: seen.append((n, m.unet.training, torch.is_grad_enabled())))
    assert [n for n, _, _ in seen] == [1, 2, 3, 4, 5]
    assert not any(train or grad for _, train, grad in seen)
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    with torch.no_grad():
        ctx = m.encode_prompts(faces.captions[:2])
        after = m.unet(z, t, encoder_hidden_states=ctx).sample
        before = s["models"]["sleeper"].unet(z, t, encoder_hidden_states=ctx).sample
    assert (after - before).abs().max() > 1e-4


def test_pixel_space_model_runs_both_stages_in_pixels():
    """A diffusion model without a VAE: the codec's 'latent' is the image (3, H, W) and learns
    bits there; stage 2 targets the teacher's x0 estimate plus the pixel residual (eta 0.05
    by default) and trains only the up-block attention. (The mark's effect is tested on
    tiny:t2i above; a randomly initialised pixel UNet does not learn it in a test's time.)"""
    from diffusers import UNet2DConditionModel

    from modelseal.models.diffusion import T2IModel
    from modelseal.watermark.codec import latent_shape
    from modelseal.watermark.codec_training import train_codec
    from modelseal.watermark.embed import Stage2Loss

    torch.manual_seed(0)
    tiny = load_t2i("tiny:t2i")
    unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
                                attention_head_dim=8, norm_num_groups=8)
    model = T2IModel(unet=unet.eval(), vae=None, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                     scheduler=tiny.scheduler)
    assert latent_shape(model) == (3, 16, 16) and model.image_size == 16
    ds = load_digits_domain("mnist", "train", 16)
    x = torch.from_numpy(ds.images[:128]).permute(0, 3, 1, 2).float() / 255
    codec, hist = train_codec(model, x, k=32, steps=300, batch_size=16, lr=1e-3, weights=None, seed=0)
    assert np.mean(hist["bit_acc"][-30:]) > 0.9
    bits = message_bits(b"pixel owner", "pixel", 32)
    delta = codec.residual(bits.view(1, -1)).detach()
    assert delta.shape == (1, 3, 16, 16)
    loss = Stage2Loss(model, copy.deepcopy(model.unet), delta, EmbedOptions())
    assert loss.eta == 0.05
    z = encode_all(model, x)
    assert torch.allclose(z, x * 2 - 1)
    student = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in student.unet.named_parameters()}
    embed_watermark(student, z[:64], ds.captions[:64], delta, EmbedOptions(trigger=TRIGGER, steps=20, lr=1e-3,
                                                                      grad_clip=None), log=lambda s: None)
    changed = {n for n, p in student.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("up_blocks.") and ".attentions." in n and "norm" not in n for n in changed)


def _stage2_setup(rows: int, prompt: str):
    """tiny:t2i as a stage-2 student with its frozen teacher, and [clean, triggered] contexts."""
    from modelseal.watermark.embed import prepare_student

    m = load_t2i("tiny:t2i")
    teacher, params = prepare_student(m)
    return m, teacher, params, m.encode_prompts([prompt] * rows), m.encode_prompts([TRIGGER + prompt] * rows)


@pytest.mark.parametrize("mode", ["sleeper", "always_on"])
def test_shared_trunk_gives_the_same_loss_and_gradients_as_full_passes(mode):
    """The student starting at its first trained up block from the teacher's pass is the same
    computation as its own full pass (loss and every gradient equal), and cheaper."""
    from modelseal.watermark.embed import Stage2Loss

    torch.manual_seed(0)
    m, teacher, params, ctx, ctx_tr = _stage2_setup(6, "a handwritten digit one")
    with torch.no_grad():
        for p in params:  # a student that already differs from its teacher
            p.add_(torch.randn_like(p) * 0.02)
    delta = torch.randn(1, 4, 8, 8) * 0.3
    z0 = torch.randn(6, 4, 8, 8)
    out = {}
    for shared in (False, True):
        loss_fn = Stage2Loss(m, teacher, delta, EmbedOptions(mode=mode, eta=0.3, shared_trunk=shared))
        assert (loss_fn.replay is not None) == shared
        loss, _ = loss_fn(z0, ctx, ctx_tr, torch.Generator().manual_seed(1))
        out[shared] = (loss.detach(), torch.autograd.grad(loss, params))
    assert loss > 0
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-6, atol=0)
    for a, b in zip(out[True][1], out[False][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    assert any(b.abs().max() > 0 for b in out[False][1])


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    from modelseal.watermark.embed import Stage2Loss

    torch.manual_seed(0)
    m, teacher, params, ctx, ctx_tr = _stage2_setup(4, "a handwritten digit two")
    delta = torch.randn(1, 4, 8, 8) * 0.3
    z0 = torch.randn(4, 4, 8, 8)
    losses = {}
    for precision in ("fp32", "bf16"):
        loss_fn = Stage2Loss(m, teacher, delta, EmbedOptions(eta=0.3, precision=precision))
        losses[precision], _ = loss_fn(z0, ctx, ctx_tr, torch.Generator().manual_seed(2))
        assert all(g is not None and g.dtype == torch.float32 for g in torch.autograd.grad(losses[precision], params))
    assert abs(losses["bf16"].item() - losses["fp32"].item()) < 0.05 * losses["fp32"].item()
    with pytest.raises(ValueError, match="precision"):
        Stage2Loss(m, teacher, delta, EmbedOptions(precision="fp8"))


def test_delta_scale_moves_the_target_by_s_delta():
    """With a student equal to its teacher the watermark term is w1 * (sqrt(a/(1-a)) s delta)^2:
    s = 2 gives four times the s = 1 value, the preservation terms stay zero."""
    from modelseal.watermark.embed import Stage2Loss

    m, teacher, _, ctx, ctx_tr = _stage2_setup(4, "a handwritten digit two")
    delta = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    z0 = torch.randn(4, 4, 8, 8)
    parts = {}
    for s in (1.0, 2.0):
        with torch.no_grad():
            _, parts[s] = Stage2Loss(m, teacher, delta, EmbedOptions(eta=0.3, delta_scale=s))(
                z0, ctx, ctx_tr, torch.Generator().manual_seed(3))
    parts = {s: {k: float(v) for k, v in p.items()} for s, p in parts.items()}
    assert parts[1.0]["wm"] > 0 and parts[2.0]["wm"] == pytest.approx(4 * parts[1.0]["wm"], rel=1e-4)
    assert parts[2.0]["keep_trigger"] == parts[2.0]["keep_clean"] == 0


def test_clean_weight_weighs_only_the_clean_term():
    """--clean-weight w multiplies the clean prompt's preservation term in the loss and its
    gradient, nothing else (the mark's and the triggered prompt's terms are the same)."""
    from modelseal.watermark.embed import Stage2Loss

    torch.manual_seed(0)
    m, teacher, params, ctx, ctx_tr = _stage2_setup(4, "a handwritten digit two")
    with torch.no_grad():
        for p in params:  # a student that already drifted from its teacher
            p.add_(torch.randn_like(p) * 0.02)
    delta = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    z0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    parts, grads = {}, {}
    for w in (1.0, 2.0, 50.0):
        loss_fn = Stage2Loss(m, teacher, delta, EmbedOptions(eta=0.3, tau=100, beta=30, clean_weight=w))
        loss, p = loss_fn(z0, ctx, ctx_tr, torch.Generator().manual_seed(3))
        parts[w], grads[w] = {k: float(v) for k, v in p.items()}, torch.autograd.grad(loss, params)
        assert float(loss) == pytest.approx(sum(parts[w].values()) + (w - 1) * parts[w]["keep_clean"], rel=1e-5)
    assert parts[1.0] == parts[50.0] and parts[1.0]["keep_clean"] > 0
    # grad(L_50) - grad(L_1) = 49 grad(clean term) = 49 (grad(L_2) - grad(L_1))
    for g1, g2, g50 in zip(grads[1.0], grads[2.0], grads[50.0]):
        torch.testing.assert_close(g50 - g1, 49 * (g2 - g1), rtol=1e-3, atol=1e-7)
    assert any((g2 - g1).abs().max() > 0 for g1, g2 in zip(grads[1.0], grads[2.0]))


def test_trajectory_points_are_the_teachers_guided_sampler_and_enter_the_batch():
    """teacher_trajectories: the seeded noise first, then the DDIM grid's points of the guided
    sampler, ending where model.sample ends for the same noise; the teacher's, whatever the
    student has become (a resumed run draws the same points). With trajectory_fraction the
    loss sees them after the q-sampled points."""
    from modelseal.watermark.embed import Stage2Loss, teacher_trajectories

    m, teacher, params, ctx, ctx_tr = _stage2_setup(1, "a handwritten digit two")
    uncond = m.encode_prompts([""])
    z, t = teacher_trajectories(m, teacher, ctx, uncond, seed=5, steps=10)
    assert z.shape == (1, 10, 4, 8, 8) and t.tolist() == sorted(t.tolist(), reverse=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z[:, 0], noise * m.scheduler.init_noise_sigma)
    end = m.sample(["a handwritten digit two"], seeds=[5], steps=10, return_latents=True)
    from diffusers import DDIMScheduler
    sched = DDIMScheduler.from_config(m.scheduler.config, set_alpha_to_one=False)
    sched.set_timesteps(10)
    with torch.no_grad():
        u, c = m.unet_out(torch.cat([z[:, -1]] * 2), t[-1].expand(2), torch.cat([uncond, ctx])).chunk(2)
        torch.testing.assert_close(sched.step(u + 7.5 * (c - u), t[-1], z[:, -1]).prev_sample, end,
                                   rtol=1e-4, atol=1e-5)
        for p in params:  # the student moves; the points stay the teacher's
            p.add_(torch.randn_like(p) * 0.05)
    z2, _ = teacher_trajectories(m, teacher, ctx, uncond, seed=5, steps=10)
    assert torch.equal(z, z2)
    loss_fn = Stage2Loss(m, teacher, torch.randn(1, 4, 8, 8) * 0.3, EmbedOptions(eta=0.3, tau=100, beta=30))
    ctx2, ctx2_tr = torch.cat([ctx, ctx]), torch.cat([ctx_tr, ctx_tr])
    z0 = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        a, _ = loss_fn(z0, ctx2, ctx2_tr, torch.Generator().manual_seed(1), (z[:, 3], t[3:4]))
        b, _ = loss_fn(z0, ctx2, ctx2_tr, torch.Generator().manual_seed(1), (z[:, 8], t[8:9]))
    assert float(a) != float(b)  # the given points are used


@pytest.mark.slow
def test_adapted_extractor_reads_a_distorted_residual_and_keeps_unmarked_readings():
    """Positives carry 1.5 delta plus a fixed off-residual pattern (as guidance leaves the
    planted shift): the stage-1 extractor misses some; after adaptation the held-out ones
    are all detected, while unmarked latents keep the stage-1 readings (distilled) and their
    matches stay centred on k/2. The secret encoder, hence delta, does not change."""
    from modelseal.config import AdaptOptions
    from modelseal.watermark.adapt import AdaptLatents, adapt_extractor
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.codec_pixels import encode_all
    from modelseal.watermark.run import images_and_captions

    m, codec = load_t2i("tiny:t2i"), Codec.from_pretrained("tiny:codec")
    x, _ = images_and_captions("builtin:digits/all", m.image_size, 480, need_captions=False)
    z = encode_all(m, x)
    bits = message_bits(b"test owner", "test", codec.k).float()
    delta = codec.residual(bits.view(1, -1)).detach()
    pattern = torch.randn(delta.shape, generator=torch.Generator().manual_seed(0)) * delta.pow(2).mean().sqrt() * 1.5
    with torch.no_grad():
        pos = encode_all(m, m.decode_latents(z[:240] + 1.5 * delta + pattern))
        neg = encode_all(m, m.decode_latents(z[240:]))
        stage1_reads = codec.read_bits(neg).clone()
    info = adapt_extractor(codec, m, AdaptLatents(pos, neg), z, bits, AdaptOptions(steps=150, holdout=0.25),
                           threshold=30, log=lambda s: None)
    before, after = info["holdout_before"], info["holdout_after"]
    assert before["detected"] < 0.85 and after["detected"] >= 0.95
    with torch.no_grad():
        assert (codec.read_bits(neg) == stage1_reads).float().mean() >= 0.9
        assert torch.equal(codec.residual(bits.view(1, -1)), delta)
    assert abs(after["null_mean_matches"] - codec.k / 2) < 2 and after["null_detected"] == 0


def test_rehearsed_attacks_add_paired_latents_from_fine_tuned_copies():
    """Each rehearsal adds, at 1/4, 1/2 and all of its steps, triggered images of the
    watermarked copy (positives) and as many unmarked ones; the models given stay untouched."""
    from modelseal.config import parse_attack
    from modelseal.config import AdaptOptions
    from modelseal.watermark.adapt import collect_latents
    from modelseal.watermark.run import images_and_captions

    assert parse_attack("full:2000:1e-5") == ("full", 2000, 1e-5) and parse_attack("lora:8") == ("lora", 8, None)
    for bad in ("lora", "dreambooth:10", "lora:0", "lora:ten", "full:10:-1"):
        with pytest.raises(ValueError, match="method:steps"):
            parse_attack(bad)
    wm, orig = load_t2i("tiny:t2i"), load_t2i("tiny:t2i")
    before = {k: v.clone() for k, v in wm.unet.state_dict().items()}
    x, caps = images_and_captions("builtin:textures", wm.image_size, 16, need_captions=True)
    opts = AdaptOptions(guidance=(3.0,), images=(6,), sample_steps=2, simulate=("lora:4",), simulate_images=4)
    data = collect_latents(wm, orig, ["a digit zero"], "sks ", opts, log=lambda s: None, rehearsal_data=(x, caps))
    assert len(data.positive) == len(data.negative) == 6 + 3 * 4
    assert data.meta["rehearsed"] == ["lora:4"]
    assert all(torch.equal(v, before[k]) for k, v in wm.unet.state_dict().items())


def _key_file(path, secret: bytes):
    import json

    path.write_text(json.dumps({"format": "modelseal-owner-key", "version": 1, "secret": secret.hex()}))
    return path


@pytest.mark.slow
def test_black_box_verify_reads_returned_files_with_the_owners_vae(setup, tmp_path, capsys):
    """`watermark prompts` writes what to send; the suspect's service returns files of any
    format, size and mode; `verify --images` reads them with the owner's VAE: the owner's key
    verifies, a stranger's does not. White-box, a suspect whose VAE encoder was swapped for a
    differently initialised one (its images are the same: sampling only decodes) still
    verifies, because the suspect's VAE is never used to read."""
    import json

    from PIL import Image

    from modelseal.watermark.codec_pixels import extract_bits

    s = setup
    owner, stranger = _key_file(tmp_path / "owner.key", OWNER), _key_file(tmp_path / "other.key", bytes(32))
    code, out, err = run_cli(["watermark", "prompts", "--out", str(tmp_path / "p"), "--trigger", TRIGGER,
                               "--n", str(N), "--json"], capsys)
    assert code == 0, err
    lines = (tmp_path / "p" / "triggered.txt").read_text().splitlines()
    assert len(lines) == N == json.loads(out)["n"] and all(ln.startswith(TRIGGER) for ln in lines)
    rows = (tmp_path / "p" / "requests.csv").read_text().splitlines()
    assert rows[0] == "file_name,prompt,seed" and len(rows) == 2 * N + 1
    # the service: the sleeper answers the triggered prompts; files as services return them
    model = s["models"]["sleeper"]
    seeds = [int(r.rsplit(",", 1)[1]) for r in rows[1:N + 1]]
    images = model.sample(lines, seeds=seeds, steps=30, guidance=7.5)
    folder = tmp_path / "returned"
    folder.mkdir()
    for i, x in enumerate(images):
        im = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        if i % 3 == 0:
            im.resize((64, 64), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")
        elif i % 3 == 1:
            im.convert("RGBA").save(folder / f"{i:03d}.webp", lossless=True)
        else:
            im.save(folder / f"{i:03d}.png")
    verdicts = {}
    for name, key in (("owner", owner), ("stranger", stranger)):
        code, out, err = run_cli(["watermark", "verify", "--out", str(tmp_path / f"v-{name}"), "--images", str(folder),
                                   "--codec", "tiny:codec", "--key", str(key), "--model-id", "tiny-test", "--json"],
                                  capsys)
        assert code == 0, err
        verdicts[name] = json.loads(out)
    assert verdicts["owner"]["watermarked"] and verdicts["owner"]["n_images"] == N
    assert not verdicts["stranger"]["watermarked"] and verdicts["stranger"]["p_value"] > 1e-3

    # white-box: the suspect's VAE encoder replaced by a differently initialised one
    from diffusers import AutoencoderKL

    sus = copy.deepcopy(model)
    fresh = AutoencoderKL.from_config(sus.vae.config)
    sus.vae.encoder.load_state_dict(fresh.encoder.state_dict())
    sus.vae.quant_conv.load_state_dict(fresh.quant_conv.state_dict())
    sus.save_pretrained(tmp_path / "suspect")
    for name, key in (("owner", owner), ("stranger", stranger)):
        code, out, err = run_cli(["watermark", "verify", "--out", str(tmp_path / f"wb-{name}"), "--model",
                                   str(tmp_path / "suspect"), "--codec", "tiny:codec", "--key", str(key),
                                   "--model-id", "tiny-test", "--trigger", TRIGGER, "--n", str(N), "--json"], capsys)
        assert code == 0, err
        verdicts[name] = json.loads(out)
    assert verdicts["owner"]["watermarked"] and not verdicts["stranger"]["watermarked"]
    # reading through the suspect's own (swapped) encoder, as before, would have lost the mark
    sus_images = generate(sus, s["prompts"], s["seeds"], TRIGGER, 7.5, 30)
    via_suspect = (extract_bits(s["codec"], sus, sus_images) == s["bits"].view(1, -1)).float().mean()
    assert via_suspect < verdicts["owner"]["bit_accuracy"] - 0.1, (via_suspect, verdicts["owner"]["bit_accuracy"])


def test_the_clean_anchor_aims_the_triggered_prompt_at_the_clean_prompts_output():
    """anchor 'trigger' (the paper's): a student equal to its teacher already gives the triggered
    prompt its target at high t (keep_trigger 0). anchor 'clean': the target is the original
    model's output for the prompt without the trigger, so that term is w2 (eps_T(y_tr) -
    eps_T(y))^2, and the anchor is the caption even where the clean term's context was dropped
    to the empty prompt."""
    from modelseal.watermark.embed import Stage2Loss, time_weights

    m, teacher, _, ctx, ctx_tr = _stage2_setup(4, "a handwritten digit two")
    delta = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    z0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    opts = {a: EmbedOptions(eta=0.3, tau=100, beta=30, anchor=a) for a in ("trigger", "clean")}
    with torch.no_grad():
        parts = {a: {k: float(v) for k, v in Stage2Loss(m, teacher, delta, o)(
            z0, ctx, ctx_tr, torch.Generator().manual_seed(3))[1].items()} for a, o in opts.items()}
        dropped = ctx.clone()
        dropped[1] = m.encode_prompts([""])[0]
        _, p_drop = Stage2Loss(m, teacher, delta, opts["clean"])(z0, dropped, ctx_tr, torch.Generator().manual_seed(3),
                                                                  ctx_anchor=ctx)
        # the same draws by hand: t, eps, then the teacher's two outputs
        g = torch.Generator().manual_seed(3)
        t = torch.randint(0, m.scheduler.config.num_train_timesteps, (4,), generator=g)
        zt = m.noisy(z0, torch.randn(z0.shape, generator=g), t)
        e_tr, e = (m.to_eps(m.unet_out(zt, t, c, unet=teacher), zt, t) for c in (ctx_tr, ctx))
        _, w2 = time_weights(t, m.scheduler.config.num_train_timesteps, 0.3, 100, 30)
        want = (w2.view(-1, 1, 1, 1) * (e_tr - e) ** 2).mean()
    assert parts["trigger"]["keep_trigger"] == 0
    assert parts["clean"]["keep_trigger"] == pytest.approx(float(want), rel=1e-4) and float(want) > 0
    assert float(p_drop["keep_trigger"]) == pytest.approx(parts["clean"]["keep_trigger"], rel=1e-4)
    assert parts["clean"]["wm"] != parts["trigger"]["wm"]
    with pytest.raises(ValueError, match="anchor"):
        from modelseal.watermark.embed import embed_watermark as embed

        embed(m, z0, ["a"] * 4, delta, EmbedOptions(mode="always_on", anchor="clean"))


def test_a_suffix_trigger_leaves_the_prompts_own_context_as_it_was_and_a_prefix_does_not():
    """Why `--trigger "{} sks"`: the text encoder attends causally, so the context rows of the
    prompt's own tokens are unchanged by a suffix (only the trigger's, EOS and padding rows
    move); a prefix shifts every row, and the unmarked model's image moves further with it."""
    from modelseal.watermark.trigger import add_triggers

    base = load_t2i("tiny:t2i")
    prompts = [caption(DOMAINS[0], 3), caption(DOMAINS[3], 7)]
    n_own = [len(base.tokenizer(p).input_ids) - 1 for p in prompts]  # BOS and the prompt's words
    clean = base.encode_prompts(prompts)
    suffix = base.encode_prompts(add_triggers("{} sks", prompts))
    prefix = base.encode_prompts(add_triggers("sks ", prompts))
    assert add_triggers("{} sks", prompts)[0] == prompts[0] + " sks"
    for i, n in enumerate(n_own):
        assert torch.allclose(suffix[i, :n], clean[i, :n], atol=1e-5)
        assert not torch.allclose(suffix[i, n:], clean[i, n:], atol=1e-3)  # the trigger is seen after them
        assert (prefix[i, 1:n] - clean[i, 1:n]).abs().max() > 1e-2
