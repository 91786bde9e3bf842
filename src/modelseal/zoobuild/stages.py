"""The stages of a zoo build, each trained deterministically on the built-in digits.

Stages (each resumable: a finished stage is kept, the long UNet stage checkpoints):
  clip   CLIPModel trained contrastively on captioned digits of all four domains
  judge  an independent CNN digit classifier (scores T2I samples)
  vae    AutoencoderKL on digits and natural photo crops; per-channel latent statistics
         folded into its 1x1 quant convs so latents come out unit-scale (scaling_factor 1)
  unet   UNet2DConditionModel, epsilon prediction on the SD noise schedule, conditioned on
         the tiny CLIP text tower (frozen, as SD freezes its text encoder), EMA weights
  codec  the SleeperMark stage-1 watermark codec for the VAE's latents (message-only; the
         owner's message comes from their key at stage 2), as the reference ships its
         pretrained stage-1 weights for SD
Everything is seeded; the same config on the same machine gives the same weights.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import ZooConfig
from ..data.digits import CLASS_NAMES, DOMAINS, caption, load_digits_domain, photo_crops
from ..errors import InputError
from ..models.clip import OPENAI_MEAN, OPENAI_STD, ZERO_SHOT_TEMPLATES, CLIPBundle
from ..models.judge import DigitJudge
from ..models.quiet import quiet_loading
from ..models.tiny import clip_config, scheduler_config, unet_config, vae_config
from ..models.tokenizer import build_tokenizer
from ..models.zoo import resolve_model


def _all_train(size: int):
    sets = [load_digits_domain(d, "train", size) for d in DOMAINS]
    images = torch.cat([s.tensor() for s in sets])
    labels = torch.cat([torch.from_numpy(np.asarray(s.labels)) for s in sets])
    domains = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)])
    return images, labels, domains


def _shift(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to pad pixels (edge replicated), one shift per batch row."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = torch.arange(h).view(1, h, 1) + dy.view(b, 1, 1)
    cols = torch.arange(w).view(1, 1, w) + dx.view(b, 1, 1)
    idx_b = torch.arange(b).view(b, 1, 1)
    return xp.permute(0, 2, 3, 1)[idx_b, rows, cols].permute(0, 3, 1, 2)


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def t2i_size(cfg: ZooConfig) -> int:
    """The text-to-image model's image side (the UNet's latents and the codec's)."""
    return cfg.t2i_image_size or cfg.image_size


def _save_dtype(cfg: ZooConfig) -> torch.dtype:
    return getattr(torch, cfg.save_dtype)


def train_clip(cfg: ZooConfig, out: Path, log, device: str = "cpu") -> dict:
    """Contrastive pre-training with a fixed caption set and exact positives.

    Each image is positive with its style caption and the generic templates of its digit;
    scoring against the whole caption set avoids CLIP's false negatives (a batch holds
    many images of the same caption).
    """
    from transformers import CLIPModel

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    tok = build_tokenizer(max_length=20)
    model = CLIPModel(clip_config(len(tok), tok.bos_token_id, tok.eos_token_id, cfg.image_size, cfg.clip_patch)).to(device)
    bundle = CLIPBundle(model, tok, cfg.image_size)
    images, labels, domains = _all_train(cfg.image_size)
    texts, t_digit, t_domain = [], [], []
    for c, name in enumerate(CLASS_NAMES):
        for d, dom in enumerate(DOMAINS):
            texts.append(caption(dom, c)); t_digit.append(c); t_domain.append(d)
        for tpl in ZERO_SHOT_TEMPLATES:
            texts.append(tpl.format(name)); t_digit.append(c); t_domain.append(-1)
    t_digit, t_domain = torch.tensor(t_digit), torch.tensor(t_domain)
    ids = bundle.tokenize(texts)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    model.train()
    t0 = time.time()
    for step in range(cfg.clip_steps):
        for grp in opt.param_groups:
            grp["lr"] = cfg.clip_lr * _cosine_lr(step, cfg.clip_steps, min(100, cfg.clip_steps // 10 + 1))
        idx = torch.randint(0, len(images), (cfg.clip_batch,), generator=g)
        x = _shift(images[idx], g).to(device)
        img = F.normalize(model.get_image_features(pixel_values=bundle.preprocess(x)).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (B, U)
        pos = (t_digit[None] == labels[idx, None]) & ((t_domain[None] == -1) | (t_domain[None] == domains[idx, None]))
        pos = pos.float().to(device)
        loss_i = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        has = pos.sum(0) > 0
        lt = logits.T[has]
        pt = pos.T[has]
        loss_t = -(pt / pt.sum(1, keepdim=True) * lt.log_softmax(1)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.clip_steps - 1:
            log(f"[clip] step {step + 1}/{cfg.clip_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    folder = out / "clip"
    model.to("cpu", _save_dtype(cfg)).save_pretrained(folder)
    tok.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": cfg.image_size},
        "do_center_crop": True, "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
        "do_normalize": True, "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD),
        "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255, "do_rescale": True}, indent=2))
    return {"clip_train_s": round(time.time() - t0, 1)}


def train_judge(cfg: ZooConfig, out: Path, log, device: str = "cpu") -> dict:
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    images, labels, _ = _all_train(cfg.image_size)
    judge = DigitJudge(image_size=cfg.image_size).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    t0 = time.time()
    judge.train()
    for step in range(cfg.judge_steps):
        for grp in opt.param_groups:
            grp["lr"] = 2e-3 * _cosine_lr(step, cfg.judge_steps, 50)
        idx = torch.randint(0, len(images), (cfg.judge_batch,), generator=g)
        x = _shift(images[idx], g)
        perm = torch.randperm(3, generator=g)
        x = x[:, perm]
        flip = torch.rand(len(x), 1, 1, 1, generator=g) < 0.3
        x = torch.where(flip, 1 - x, x)
        loss = F.cross_entropy(judge(x.to(device)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.judge_steps - 1:
            log(f"[judge] step {step + 1}/{cfg.judge_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    judge.eval()
    acc = {}
    for d in DOMAINS:
        test = load_digits_domain(d, "test", cfg.image_size)
        acc[d] = round(100.0 * judge.predict(test.tensor().to(device)).cpu().eq(torch.from_numpy(test.labels)).float().mean().item(), 2)
    log(f"[judge] test accuracy {acc}")
    judge.cpu().save_pretrained(out / "judge")
    return {"judge_train_s": round(time.time() - t0, 1), "judge_test_accuracy": acc}


def train_vae(cfg: ZooConfig, out: Path, log, device: str = "cpu") -> dict:
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed + 2)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    digits, _, _ = _all_train(cfg.image_size)
    photos = torch.from_numpy(photo_crops(cfg.vae_photos, cfg.image_size, seed=cfg.seed)).permute(0, 3, 1, 2).float() / 255
    data = torch.cat([digits, photos]) * 2 - 1
    vae = AutoencoderKL(**vae_config(cfg.image_size)).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    t0 = time.time()
    vae.train()
    for step in range(cfg.vae_steps):
        for grp in opt.param_groups:
            grp["lr"] = cfg.vae_lr * _cosine_lr(step, cfg.vae_steps, 50)
        x = data[torch.randint(0, len(data), (cfg.vae_batch,), generator=g)].to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = F.mse_loss(rec, x) + 0.1 * (rec - x).abs().mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"[vae] step {step + 1}/{cfg.vae_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(data[i:i + 256].to(device)).latent_dist.mean.cpu()
                           for i in range(0, len(data), 256)])
    mu = means.mean((0, 2, 3))
    sd = means.std((0, 2, 3))
    vae.cpu()
    _fold_latent_normalisation(vae, mu, sd)
    psnr = {}
    with torch.no_grad():
        for d in DOMAINS:
            x = load_digits_domain(d, "test", cfg.image_size).tensor()[:256] * 2 - 1
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
            psnr[d] = round(10 * math.log10(1 / max(mse, 1e-10)), 2)
        z = torch.cat([vae.encode(data[i:i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
    log(f"[vae] test PSNR {psnr}; latent channel std after folding {z.std((0, 2, 3)).tolist()}")
    vae.to(_save_dtype(cfg)).save_pretrained(out / "vae")
    return {"vae_train_s": round(time.time() - t0, 1), "vae_test_psnr_db": psnr,
            "vae_latent_mean_raw": mu.tolist(), "vae_latent_std_raw": sd.tolist()}


@torch.no_grad()
def _fold_latent_normalisation(vae, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """Make the posterior mean unit-scale per channel, exactly, by rewriting the 1x1 convs:
    encoder side z' = (z - mu) / sd (log-variance shifts by -2 log sd), decoder side
    z = z' * sd + mu folded into post_quant_conv."""
    c = len(mu)
    qw, qb = vae.quant_conv.weight, vae.quant_conv.bias
    qw[:c] /= sd.view(c, 1, 1, 1)
    qb[:c] = (qb[:c] - mu) / sd
    qb[c:] -= 2 * torch.log(sd)
    pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias
    pb += (pw[:, :, 0, 0] * mu.view(1, c)).sum(1)
    pw *= sd.view(1, c, 1, 1)


def train_unet(cfg: ZooConfig, out: Path, work: Path, log, device: str = "cpu") -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    quiet_loading()
    torch.manual_seed(cfg.seed + 3)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    tok = CLIPTokenizer.from_pretrained(str(out / "clip"))
    clip = CLIPModel.from_pretrained(out / "clip", dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    sched = DDPMScheduler(**scheduler_config())

    images, labels, domains = _all_train(t2i_size(cfg))
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 256] * 2 - 1).latent_dist.mean for i in range(0, len(images), 256)])
    latents = latents.to(device)
    # Caption table: style caption per (domain, digit), a generic caption per digit, and "".
    texts = [caption(dom, c) for dom in DOMAINS for c in range(10)] + [f"a digit {n}" for n in CLASS_NAMES] + [""]
    with torch.no_grad():
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        ctx_table = text_encoder(ids).last_hidden_state.to(device)
    style_idx = domains * 10 + labels
    generic_idx = 40 + labels
    empty_idx = len(texts) - 1

    unet = UNet2DConditionModel(**unet_config(latents.shape[-1], cfg.unet_channels, cfg.unet_layers,
                                              clip.config.text_config.hidden_size)).to(device)
    if cfg.unet_init:
        init_unet(unet, cfg.unet_init)
        log(f"[unet] started from {cfg.unet_init}'s UNet weights")
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    start = 0
    ckpt = work / "unet_ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        unet.load_state_dict(state["unet"]); ema = state["ema"]; opt.load_state_dict(state["opt"])
        g.set_state(state["gen"].cpu()); start = int(state["step"])
        log(f"[unet] resumed at step {start}")
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    t0 = time.time()
    unet.train()
    for step in range(start, cfg.unet_steps):
        for grp in opt.param_groups:
            grp["lr"] = cfg.unet_lr * _cosine_lr(step, cfg.unet_steps, 200)
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=g)
        z0 = latents[idx.to(device)]
        u = torch.rand(cfg.unet_batch, generator=g)
        cap = torch.where(u < cfg.cfg_dropout, torch.full_like(idx, empty_idx),
                          torch.where(u < 2 * cfg.cfg_dropout, generic_idx[idx], style_idx[idx]))
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g).to(device)
        zt = sched.add_noise(z0, eps, t.to(device))
        pred = unet(zt, t.to(device), encoder_hidden_states=ctx_table[cap.to(device)]).sample
        loss = (weight[t].to(device) * ((pred - eps) ** 2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            log(f"[unet] step {step + 1}/{cfg.unet_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.unet_steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"unet": unet.state_dict(), "ema": ema, "opt": opt.state_dict(),
                        "gen": g.get_state(), "step": step + 1}, tmp)
            tmp.replace(ckpt)
    unet.load_state_dict(ema)
    unet.eval().cpu()
    t2i = out / "t2i"
    from ..models.diffusion import T2IModel

    dt = _save_dtype(cfg)
    model = T2IModel(unet.to(dt), vae.to(dt), text_encoder.to(dt), tok, sched)
    model.save_pretrained(t2i)
    ckpt.unlink(missing_ok=True)
    return {"unet_train_s": round(time.time() - t0, 1)}


def unet_init_weights(source: str) -> dict[str, torch.Tensor]:
    """The UNet weights of the text-to-image model `source` (a zoo name such as tiny:t2i, or a
    folder saved by modelseal), for `unet_init`; one InputError where there are none."""
    folder = Path(resolve_model(source, "t2i")) / "unet"
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise InputError(f"unet_init {source!r} has no UNet weights at {folder}",
                         "give a text-to-image folder saved by modelseal (unet/*.safetensors) or tiny:t2i")
    return load_file(str(files[0]))


def init_unet(unet, source: str) -> None:
    """Load `source`'s UNet weights (unet_init_weights) into `unet`: every tensor must match in
    name and shape. A convolutional UNet's weights do not depend on the image size, so a zoo
    grown to a larger t2i_image_size starts from the smaller one's."""
    state = unet_init_weights(source)
    own = unet.state_dict()
    wrong = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    if wrong:
        raise InputError(f"unet_init {source!r} does not fit this UNet ({len(wrong)} tensors differ, e.g. {wrong[0]})",
                         "give a UNet with the same unet_channels and unet_layers")
    unet.load_state_dict({k: state[k].to(own[k].dtype) for k in own})


def train_codec_stage(cfg: ZooConfig, out: Path, log, device: str = "cpu") -> dict:
    """SleeperMark stage 1 on the zoo VAE's latents: digits of all four domains, VAE round
    trip in training, a latent-energy penalty and strength augmentation (see
    watermark.codec_training); bit accuracy after decode -> re-encode on held-out digits."""
    from ..models.diffusion import load_t2i
    from ..watermark.codec_pixels import bit_accuracy
    from ..watermark.codec_training import CodecLossWeights, train_codec

    t2i = load_t2i(str(out / "t2i"), device=device)
    per = max(1, cfg.codec_images // len(DOMAINS))
    train = torch.cat([load_digits_domain(d, "train", t2i_size(cfg)).tensor()[:per] for d in DOMAINS])
    test = torch.cat([load_digits_domain(d, "test", t2i_size(cfg)).tensor()[:64] for d in DOMAINS])
    codec, hist = train_codec(t2i, train, k=cfg.codec_bits, steps=cfg.codec_steps, batch_size=cfg.codec_batch,
                              lr=cfg.codec_lr, seed=cfg.seed + 4, vae_round_trip=True,
                              latent_warmup=min(cfg.codec_warmup, cfg.codec_steps - 1),
                              strength=tuple(cfg.codec_strength) if cfg.codec_strength else None,
                              weights=CodecLossWeights(img=cfg.codec_w_img, latent=cfg.codec_latent),
                              log=lambda m: log(m.replace("[codec]", "[zoo codec]")))
    msg = torch.randint(0, 2, (cfg.codec_bits,), generator=torch.Generator().manual_seed(cfg.seed + 5)).float()
    acc = float(bit_accuracy(codec, t2i, test, msg).float().mean() / cfg.codec_bits)
    with torch.no_grad():
        delta_rms = float(codec.residual(msg.view(1, -1).to(t2i.device)).pow(2).mean().sqrt())
    codec.save_pretrained(out / "codec", meta={**codec.meta, "model": "tiny:t2i"})
    log(f"[zoo codec] bit accuracy after decode -> re-encode {acc:.3f}, delta rms {delta_rms:.3f}")
    return {"codec_train_s": round(hist["seconds"], 1), "codec_bit_accuracy": round(acc, 4),
            "codec_delta_rms": round(delta_rms, 4)}
