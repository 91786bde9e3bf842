"""SleeperMark core: owner keys and messages, the stage-1 codec, image attacks."""
import hashlib
import hmac
import json
import os
import time

import pytest
import torch

from modelseal.attacks.image import ATTACKS, apply_attack, attack_sampler, jpeg
from modelseal.errors import InputError
from modelseal.stats import summarize_bits
from modelseal.quality import psnr, ssim
from modelseal.watermark.codec import Codec, latent_shape
from modelseal.watermark.codec_pixels import bit_accuracy, decode_all, embed_images, encode_all, extract_bits
from modelseal.watermark.codec_training import CodecLossWeights, train_codec
from modelseal.watermark.keys import generate_key, load_key, message_bits
from modelseal.watermark.perceptual import perceptual_distance

K = 32


# --------------------------------------------------------------------------- keys

def test_key_file_is_private_atomic_and_never_overwritten(tmp_path):
    path = tmp_path / "owner.key"
    key = generate_key(path)
    assert len(key) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["secret"] == key.hex()
    assert load_key(path) == key
    with pytest.raises(InputError, match="already exists"):
        generate_key(path)
    assert load_key(path) == key  # untouched
    key2 = generate_key(path, overwrite=True)
    assert key2 != key and load_key(path) == key2 and os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner.key"]  # no temp files left


def test_bad_key_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    for text in ("not json", json.dumps({"format": "other"}),
                 json.dumps({"format": "modelseal-owner-key", "version": 1, "secret": "abcd"}),
                 json.dumps({"format": "modelseal-owner-key", "version": 99, "secret": "00" * 32})):
        bad.write_text(text)
        with pytest.raises(InputError) as e:
            load_key(bad)
        assert e.value.fix


def test_message_is_the_hmac_of_the_model_id_and_depends_on_the_key():
    k1, k2 = bytes(range(32)), bytes(range(100, 132))
    m = message_bits(k1, "my-model", 48)
    assert m.shape == (48,) and m.dtype == torch.float32 and set(m.tolist()) <= {0.0, 1.0}
    assert torch.equal(m, message_bits(k1, "my-model", 48))
    digest = hmac.new(k1, b"my-model", hashlib.sha256).digest()
    expected = [(digest[i // 8] >> (7 - i % 8)) & 1 for i in range(48)]
    assert m.tolist() == expected
    assert torch.equal(message_bits(k1, "my-model", 256)[:48], m)  # a prefix of the full digest
    assert not torch.equal(m, message_bits(k1, "my-model-2", 48))
    ids = [f"model-{i}" for i in range(20)]
    a = torch.cat([message_bits(k1, i, 256) for i in ids])
    b = torch.cat([message_bits(k2, i, 256) for i in ids])
    assert abs((a == b).float().mean().item() - 0.5) < 0.03  # 5120 bits: 4 sigma
    for bad in (0, 257, 2.5):
        with pytest.raises(ValueError):
            message_bits(k1, "m", bad)


# --------------------------------------------------------------------------- codec

def test_codec_sizes_follow_the_latent_and_match_the_reference_on_sd():
    sd = Codec(48, (4, 64, 64))
    enc, ext = sd.encoder, sd.extractor
    assert [tuple(l.weight.shape) for l in enc.mlp if isinstance(l, torch.nn.Linear)] == [(1024, 48), (1024, 1024)]
    assert enc.grid == (32, 32) and enc.upsample == 2
    convs = [l for l in ext.convs if isinstance(l, torch.nn.Conv2d)]
    assert len(convs) == 8 and [c.stride[0] for c in convs] == [2, 1] * 4 and convs[-1].out_channels == 512
    assert ext.mlp[0].in_features == 512 * 4 * 4 and ext.mlp[0].out_features == 2048
    bits = torch.randint(0, 2, (2, 48)).float()
    delta = sd.residual(bits)
    assert delta.shape == (2, 4, 64, 64) and torch.equal(delta, torch.zeros_like(delta))  # zero conv at init
    assert sd.extract(torch.randn(2, 4, 64, 64)).shape == (2, 48)
    for shape in ((4, 8, 8), (3, 32, 32)):
        c = Codec(K, shape)
        d = c.residual(torch.ones(K))
        assert d.shape == (1, *shape) and not d.any()
        assert c.extract(torch.randn(3, *shape)).shape == (3, K)


def test_codec_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    c = Codec(K, (4, 8, 8))
    with torch.no_grad():
        c.encoder.conv.weight.normal_(0, 0.1)
    c.eval()
    c.save_pretrained(tmp_path / "codec", meta={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "model.safetensors"]
    d = Codec.from_pretrained(tmp_path / "codec")
    assert d.config == c.config and d.meta == {"note": "test"}
    bits, z = torch.randint(0, 2, (4, K)).float(), torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        assert c.residual(bits).abs().sum() > 0
        assert torch.equal(c.residual(bits), d.residual(bits))
        assert torch.equal(c.extract(z), d.extract(z))
    with pytest.raises(InputError):
        Codec.from_pretrained(tmp_path / "nothing-here")
    (tmp_path / "codec" / "config.json").write_text("{}")
    with pytest.raises(InputError):
        Codec.from_pretrained(tmp_path / "codec")


def test_loss_ramps_are_linear_and_rescaled_to_short_runs():
    w = CodecLossWeights()
    assert w.at(0, 10_000) == (1.0, 0.0, 0.0)
    assert w.at(1000, 10_000) == (1.0, 15.0, 0.0625)
    assert w.at(5000, 10_000) == (1.0, 30.0, 0.25)
    assert w.at(50, 500) == pytest.approx((1.0, 15.0, 0.0625))  # 500 steps: ramps of 100 and 200 steps
    assert CodecLossWeights(rescale=False).at(50, 500)[1] == pytest.approx(0.75)


@pytest.fixture(scope="module")
def tiny():
    from modelseal.data.digits import load_digits_domain
    from modelseal.models.diffusion import load_t2i

    model = load_t2i("tiny:t2i")

    def images(split, n):
        arr = load_digits_domain("mnist", split).images[:n]
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255

    return model, images("train", 512), images("test", 128)


@pytest.fixture
def one_thread():
    # On a 2-core machine shared with other jobs, two intra-op threads can run >10x slower
    # than one; the timing below is measured on one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_is_deterministic_and_runs_every_option(tiny, one_thread):
    model, train, _ = tiny
    assert latent_shape(model) == (4, 8, 8)
    l1 = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731  (stand-in perceptual distance)
    kw = dict(k=8, steps=4, batch_size=4, lr=1e-3, seed=3, vae_round_trip=True, latent_warmup=2,
              perceptual=l1, attacks=attack_sampler(["gaussian_noise", "jpeg"]),
              weights=CodecLossWeights(img_ramp=1, lpips_ramp=1, rescale=False))
    a, ha = train_codec(model, train[:16], **kw)
    b, hb = train_codec(model, train[:16], **kw)
    assert ha["loss"] == hb["loss"] and ha["lpips"][-1] is not None and ha["psnr"][0] is None
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.encoder.conv.weight, torch.zeros_like(a.encoder.conv.weight))


def test_perceptual_distances_are_zero_on_the_image_grow_with_the_change_and_train(tiny):
    from modelseal.models.clip import load_clip

    _, train, _ = tiny
    x = train[:4]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    clip = load_clip("tiny:clip")
    for name in ("ssim", "clip"):
        dist = perceptual_distance(name, clip)
        assert torch.allclose(dist(x, x), torch.zeros(4), atol=1e-5), name
        small, large = dist((x + 0.02 * noise).clamp(0, 1), x), dist((x + 0.2 * noise).clamp(0, 1), x)
        assert (large > small).all() and (small > 0).all(), name
        x_w = (x + 0.05 * noise).clamp(0, 1).requires_grad_(True)
        dist(x_w, x).sum().backward()
        assert torch.isfinite(x_w.grad).all() and x_w.grad.abs().sum() > 0, name
    assert all(not p.requires_grad for p in clip.model.parameters())  # the network stays frozen
    with pytest.raises(ValueError, match="needs a CLIP"):
        perceptual_distance("clip")
    with pytest.raises(ValueError, match="unknown perceptual"):
        perceptual_distance("lpips")


@pytest.mark.slow
def test_codec_learns_bits_that_survive_decode_and_reencode(tiny, one_thread):
    model, train, test = tiny
    steps, warmup = 500, 300
    t0 = time.time()
    codec, hist = train_codec(model, train, k=K, steps=steps, batch_size=16, lr=1e-3, seed=0,
                              vae_round_trip=True, latent_warmup=warmup, lr_schedule="constant",
                              weights=CodecLossWeights(img=10.0))
    train_s = time.time() - t0
    message = torch.randint(0, 2, (K,), generator=torch.Generator().manual_seed(7)).float()
    matches = bit_accuracy(codec, model, test, message)
    recon = decode_all(model, encode_all(model, test))
    marked = embed_images(codec, model, test, message)
    fidelity = psnr(marked, recon).mean().item()
    clean = (extract_bits(codec, model, recon) == message).float().mean().item()
    acc = matches.float().mean().item() / K
    summary = summarize_bits(matches.numpy(), K)
    print(f"\ncodec: {steps} steps ({warmup} in latent space) in {train_s:.1f}s; bit accuracy after "
          f"decode -> re-encode {acc:.3f}; PSNR vs VAE reconstruction {fidelity:.1f} dB; "
          f"clean images {clean:.3f}; pooled p {summary['p_value']:.2e}")
    assert acc >= 0.85
    assert fidelity >= 18.0
    assert summary["p_value"] < 1e-20
    assert 0.25 <= clean <= 0.75  # unmarked images carry no message


@pytest.mark.slow
def test_the_ssim_term_makes_the_residual_less_visible(tiny, one_thread):
    """Stage 1 with the perceptual term 1 - SSIM hides the residual better, on held-out images,
    than the same training without it, and still reads."""
    model, train, test = tiny
    k, steps = 16, 400
    kw = dict(k=k, steps=steps, batch_size=16, lr=1e-3, seed=0, vae_round_trip=True, latent_warmup=100,
              lr_schedule="constant")
    bits = torch.randint(0, 2, (len(test), k), generator=torch.Generator().manual_seed(5)).float()
    recon = decode_all(model, encode_all(model, test))
    out = {}
    for name, perceptual in (("none", None), ("ssim", perceptual_distance("ssim"))):
        codec, _ = train_codec(model, train, perceptual=perceptual,
                               weights=CodecLossWeights(img=3.0, lpips=1.0 if perceptual else 0.0), **kw)
        marked = embed_images(codec, model, test, bits)
        out[name] = (ssim(marked, recon).mean().item(),
                     (extract_bits(codec, model, marked) == bits).float().mean().item())
    print(f"\nSSIM / bit accuracy: without the term {out['none'][0]:.3f} / {out['none'][1]:.3f}, "
          f"with 1 - SSIM {out['ssim'][0]:.3f} / {out['ssim'][1]:.3f}")
    assert out["ssim"][0] >= out["none"][0] + 0.03
    assert out["ssim"][1] >= 0.75


# --------------------------------------------------------------------------- attacks

def _images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear")
    return (0.8 * smooth + 0.2 * torch.rand(4, 3, 32, 32, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_keeps_shape_and_range_and_changes_the_image(name):
    x = _images()
    y = apply_attack(name, x, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().mean() > 1e-3
    again = apply_attack(name, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, again)  # seeded


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"jpeg", "combined"}))  # real JPEG inside
def test_attacks_are_differentiable(name):
    x = _images().requires_grad_(True)
    apply_attack(name, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_jpeg_real_and_differentiable_and_registry_errors():
    x = _images().requires_grad_(True)
    real = jpeg(x)
    assert not real.requires_grad
    approx = jpeg(x, differentiable=True)
    approx.sum().backward()
    assert x.grad.abs().sum() > 0
    assert (approx - real).abs().mean() < 0.05
    assert torch.equal(apply_attack("none", x.detach()), x.detach())
    with pytest.raises(ValueError, match="unknown image attack"):
        apply_attack("rotate-90", x)


def test_watermark_cli_keygen_and_bad_inputs(tmp_path, capsys):
    import os
    import stat

    from test_cli import run_cli

    key = tmp_path / "owner.key"
    code, _, err = run_cli(["watermark", "keygen", "--key", str(key)], capsys)
    assert code == 0 and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    code, _, err = run_cli(["watermark", "keygen", "--key", str(key)], capsys)
    assert code == 2 and "exists" in err.lower()
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    for args in (["--key", str(bad), "--codec", str(tmp_path)], ["--key", str(key), "--codec", str(tmp_path)],
                 ["--key", str(tmp_path / "missing.key"), "--codec", str(tmp_path)]):
        code, _, err = run_cli(["watermark", "verify", "--out", str(tmp_path / "v"), "--model", "tiny:t2i",
                                "--model-id", "m1", *args], capsys)
        assert code == 2 and err.strip().splitlines()[-1].startswith("error:"), err


def test_watermark_cli_pipeline_writes_the_contract_keys(tmp_path, capsys):
    """keygen -> codec -> embed -> verify end to end at a toy size (effects are tested above
    for the codec; here the commands, files and results keys)."""
    from test_cli import run_cli

    key = tmp_path / "k.key"
    assert run_cli(["watermark", "keygen", "--key", str(key)], capsys)[0] == 0
    code, _, err = run_cli(["watermark", "codec", "--out", str(tmp_path / "c"), "--bits", "32", "--steps", "5",
                            "--limit", "64", "--train-attacks", "--distortions", "geometric", "--perceptual", "ssim"],
                           capsys)
    assert code == 0, err
    codec_res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert {"none", "crop", "rotation", "combined"} <= set(codec_res["bit_accuracy"])
    code, _, err = run_cli(["watermark", "embed", "--out", str(tmp_path / "e"), "--codec", str(tmp_path / "c" / "codec"),
                            "--key", str(key), "--model-id", "m1", "--steps", "3", "--limit", "40"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "e" / "model" / "modelseal_watermark.json").read_text())
    assert record["model_id"] == "m1" and "message" not in json.dumps(record)
    code, out, err = run_cli(["watermark", "verify", "--out", str(tmp_path / "v"), "--model",
                              str(tmp_path / "e" / "model"), "--codec", str(tmp_path / "c" / "codec"), "--key",
                              str(key), "--model-id", "m1", "--n", "2", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    for k in ("bit_accuracy", "p_value", "threshold_bits", "tpr_at_fpr", "clean_bit_accuracy", "n_images", "bits",
              "watermarked"):
        assert k in res
    assert res["bits"] == 32 and res["threshold_bits"] == 30 and res["n_images"] == 2


def test_shared_teacher_is_the_original_unet_after_the_student_moves():
    import copy

    import torch

    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.embed import FrozenTeacher, prepare_student

    m = load_t2i("tiny:t2i")
    original = copy.deepcopy(m.unet)
    teacher, params = prepare_student(m)
    assert isinstance(teacher, FrozenTeacher)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(2, 4, m.latent_size, m.latent_size, generator=g)
    t = torch.tensor([10, 500])
    ctx = m.encode_prompts(["a handwritten digit seven", ""])
    with torch.no_grad():
        ref = original(zt, t, encoder_hidden_states=ctx).sample
        assert (m.unet(zt, t, encoder_hidden_states=ctx).sample - ref).abs().max() > 1e-3  # the student moved
        torch.testing.assert_close(m.unet_out(zt, t, ctx, unet=teacher), ref)
    # only the trained weights are held twice
    assert sum(v.numel() for v in teacher.original.values()) == sum(p.numel() for p in params) < \
        sum(p.numel() for p in m.unet.parameters())


def test_trainable_scopes_pick_their_weights_and_the_trunk_is_shared_only_inside_the_up_blocks():
    from modelseal.models.diffusion import load_t2i
    from modelseal.watermark.embed import TRAINABLE, UpPathReplay, prepare_student, trainable_parameters

    m = load_t2i("tiny:t2i")
    counts = {s: sum(p.numel() for p in trainable_parameters(m.unet, s)) for s in TRAINABLE}
    assert counts["cross-kv"] < counts["up-attn-ff"] < counts["up"] < counts["unet"] < \
        sum(p.numel() for p in m.unet.parameters())
    kv = {id(p) for blk in m.unet.up_blocks for a in (getattr(blk, "attentions", None) or [])
          for tb in a.transformer_blocks for p in (tb.attn2.to_k.weight, tb.attn2.to_v.weight)}
    assert {id(p) for p in trainable_parameters(m.unet, "cross-kv")} == kv
    assert not any("norm" in n for n, p in m.unet.named_parameters()
                   if id(p) in {id(q) for q in trainable_parameters(m.unet, "unet")})
    for scope, shared in (("up", True), ("unet", False)):
        prepare_student(m, scope=scope)
        assert UpPathReplay.applies(m.unet) is shared
    with pytest.raises(ValueError, match="unknown trainable scope"):
        trainable_parameters(m.unet, "down")


def test_rehearsed_term_at_zero_drift_is_the_mark_term_and_the_simulated_thief_leaves_the_unet():
    """With Delta = 0 and the student still equal to the teacher, the rehearsed term
    w1 |(eps(y_tr) - eps(y)) - (eps_T(y_tr) - eps_T(y)) + sqrt(a/(1-a)) delta|^2 equals the
    paper's first term w1 |eps_S(y_tr) - eps_wm|^2 exactly; simulate_drift moves a copy only."""
    from modelseal.models.diffusion import load_t2i
    from modelseal.config import EmbedOptions
    from modelseal.watermark.embed import Stage2Loss, prepare_student, simulate_drift

    m = load_t2i("tiny:t2i")
    opts = EmbedOptions(trigger="sks ", eta=0.3, tau=100, beta=30, rehearsal=1.0, rehearsal_steps=3, batch_size=4)
    teacher, _ = prepare_student(m)
    before = {n: p.detach().clone() for n, p in m.unet.named_parameters()}
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 4, m.latent_size, m.latent_size, generator=g)
    ctx = m.encode_prompts(["a handwritten digit seven"] * 4)
    drift = simulate_drift(m, z0, ctx, opts, seed=1)
    assert all(torch.equal(p, before[n]) for n, p in m.unet.named_parameters())
    assert sum(float(d.abs().sum()) for d in drift.values()) > 0
    delta = 0.3 * torch.randn(1, 4, m.latent_size, m.latent_size, generator=g)
    loss_fn = Stage2Loss(m, teacher, delta, opts)
    loss_fn.drift = {n: torch.zeros_like(p) for n, p in m.unet.named_parameters()}
    ctx_tr = m.encode_prompts(["sks a handwritten digit seven"] * 4)
    _, parts = loss_fn(z0, ctx, ctx_tr, torch.Generator().manual_seed(3))
    torch.testing.assert_close(parts["rehearsed"], parts["wm"], rtol=1e-4, atol=1e-7)
    loss_fn.drift = drift
    _, moved = loss_fn(z0, ctx, ctx_tr, torch.Generator().manual_seed(3))
    assert abs(float(moved["rehearsed"]) - float(moved["wm"])) > 1e-6  # the drifted model reads differently


def test_the_key_free_search_reads_a_rotated_image_that_one_read_cannot(tiny):
    """watermark.geometry.search_read undoes a 15-degree rotation for the shipped codec by
    the extractor's confidence alone; on an unrotated image the best candidate is no turn
    for most images; an uncrop of the whole image is the image."""
    from modelseal.attacks.image import rotation
    from modelseal.watermark.geometry import crop_candidates, rotation_candidates, search_read, uncrop

    model, _, test = tiny
    codec = Codec.from_pretrained("tiny:codec").attach_reader(model)
    x = test[:48]
    bits = torch.randint(0, 2, (len(x), codec.k), generator=torch.Generator().manual_seed(3)).float()
    marked = (embed_images(codec, model, x, bits) * 255).round() / 255
    turned = rotation(marked, 15.0)
    one = (extract_bits(codec, model, turned) == bits).float().mean().item()
    turns = rotation_candidates(20.0, 2.0)
    read, idx = search_read(codec, model, turned, turns)
    found = (read == bits).float().mean().item()
    print(f"\nrotation 15: one read {one:.3f}, search {found:.3f}")
    assert one <= 0.6 and found >= 0.75
    no_turn = len(turns) // 2
    assert (idx == no_turn).float().mean() < 0.5  # rotated: another candidate wins for most
    _, idx0 = search_read(codec, model, marked, turns)
    assert (idx0 == no_turn).float().mean() >= 0.5  # unrotated: 'no turn' wins for most
    assert len(crop_candidates(32)) > 20 and torch.allclose(uncrop(x[:2], 1.0, 0, 0), x[:2], atol=1e-6)
