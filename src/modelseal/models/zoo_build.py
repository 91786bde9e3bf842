"""Deterministic training of the tiny zoo on the built-in digits (`modelseal zoo build`).

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
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.digits import CLASS_NAMES, DOMAINS, caption, load_digits_domain, photo_crops
from ..runs import atomic_folder
from .clip import OPENAI_MEAN, OPENAI_STD, ZERO_SHOT_TEMPLATES, CLIPBundle
from .judge import DigitJudge
from .tokenizer import build_tokenizer


@dataclass
class ZooConfig:
    seed: int = 0
    image_size: int = 32
    clip_steps: int = 2500
    clip_batch: int = 128
    clip_lr: float = 2e-3
    clip_patch: int = 8
    judge_steps: int = 1500
    judge_batch: int = 128
    vae_steps: int = 600
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_photos: int = 4000
    unet_steps: int = 5000
    unet_batch: int = 64
    unet_lr: float = 4e-4
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    checkpoint_every: int = 500
    eval_per_prompt: int = 10
    eval_steps: int = 30
    guidance: float = 7.5
    save_dtype: str = "float16"
    codec_bits: int = 32
    codec_steps: int = 6000
    codec_batch: int = 16
    codec_lr: float = 1e-3
    codec_warmup: int = 500
    codec_w_img: float = 3.0
    codec_latent: float = 0.3
    codec_strength: tuple[float, ...] = (0.5, 2.0)
    codec_images: int = 1200

    @classmethod
    def micro(cls) -> "ZooConfig":
        """A few steps of every stage: checks the pipeline end to end in about a minute."""
        return cls(clip_steps=6, clip_batch=32, judge_steps=6, judge_batch=32, vae_steps=6, vae_batch=16,
                   vae_photos=64, unet_steps=6, unet_batch=16, unet_channels=(32, 64), checkpoint_every=3,
                   eval_per_prompt=1, eval_steps=4, codec_steps=6, codec_warmup=2, codec_images=64)


def clip_config(vocab_size: int, bos: int, eos: int, image_size: int, patch: int = 8):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=128, intermediate_size=512,
                           num_hidden_layers=4, num_attention_heads=4),
        projection_dim=128,
    )


def vae_config(image_size: int) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                sample_size=image_size, scaling_factor=1.0)


def unet_config(latent_size: int, channels: tuple[int, ...], layers: int, text_dim: int) -> dict:
    n = len(channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return dict(sample_size=latent_size, in_channels=4, out_channels=4, down_block_types=down,
                up_block_types=up, block_out_channels=tuple(channels), layers_per_block=layers,
                cross_attention_dim=text_dim, attention_head_dim=4, norm_num_groups=16)


def scheduler_config() -> dict:
    """Stable Diffusion's training schedule; clip_sample off (latents are not in [-1, 1])."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, steps_offset=1, prediction_type="epsilon")


# ---------------------------------------------------------------------------------------
class _Log:
    def __init__(self, log):
        self.log = log or (lambda msg: print(msg, flush=True))

    def __call__(self, msg):
        self.log(msg)


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


def _save_dtype(cfg: ZooConfig) -> torch.dtype:
    return getattr(torch, cfg.save_dtype)


# ---------------------------------------------------------------------------------------
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

    torch.manual_seed(cfg.seed + 3)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    tok = CLIPTokenizer.from_pretrained(str(out / "clip"))
    clip = CLIPModel.from_pretrained(out / "clip", dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    sched = DDPMScheduler(**scheduler_config())

    images, labels, domains = _all_train(cfg.image_size)
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
    from .diffusion import T2IModel

    dt = _save_dtype(cfg)
    model = T2IModel(unet.to(dt), vae.to(dt), text_encoder.to(dt), tok, sched)
    model.save_pretrained(t2i)
    ckpt.unlink(missing_ok=True)
    return {"unet_train_s": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------
def evaluate_zoo(folder: Path, per_prompt: int = 10, steps: int = 30, guidance: float = 7.5,
                 seed: int = 0, log=None, device: str = "cpu") -> dict:
    """Zero-shot accuracy of the tiny CLIP on every domain's test split, and the share of
    T2I samples the independent judge reads as the prompted digit (with CFG)."""
    from .clip import load_clip
    from .diffusion import load_t2i

    log = _Log(log)
    res: dict = {"clip_zero_shot": {}}
    clip = load_clip(str(folder / "clip"), device=device)
    for d in DOMAINS:
        test = load_digits_domain(d, "test", clip.image_size)
        res["clip_zero_shot"][d] = round(clip.zero_shot_accuracy(test.tensor(), torch.from_numpy(test.labels),
                                                                  CLASS_NAMES), 2)
    log(f"[eval] CLIP zero-shot {res['clip_zero_shot']}")
    judge = DigitJudge.from_pretrained(folder / "judge")
    t2i = load_t2i(str(folder / "t2i"), device=device)
    prompts, targets, doms = [], [], []
    for d in DOMAINS:
        for c in range(10):
            for _ in range(per_prompt):
                prompts.append(caption(d, c)); targets.append(c); doms.append(d)
    seeds = [seed * 100_000 + i for i in range(len(prompts))]
    images = t2i.sample(prompts, seeds=seeds, steps=steps, guidance=guidance)
    pred = judge.predict(images.cpu())
    ok = pred.eq(torch.tensor(targets))
    res["t2i_prompt_accuracy"] = round(100.0 * ok.float().mean().item(), 2)
    res["t2i_prompt_accuracy_by_domain"] = {
        d: round(100.0 * ok[torch.tensor([x == d for x in doms])].float().mean().item(), 2) for d in DOMAINS}
    res["t2i_eval"] = {"samples": len(prompts), "steps": steps, "guidance": guidance, "seed": seed}
    log(f"[eval] T2I prompt accuracy {res['t2i_prompt_accuracy']} {res['t2i_prompt_accuracy_by_domain']}")
    res["_images"] = images
    res["_targets"] = targets
    return res


def train_codec_stage(cfg: ZooConfig, out: Path, log, device: str = "cpu") -> dict:
    """SleeperMark stage 1 on the zoo VAE's latents: digits of all four domains, VAE round
    trip in training, a latent-energy penalty and strength augmentation (see
    watermark.codec); bit accuracy after decode -> re-encode on held-out digits."""
    from ..watermark.codec import CodecLossWeights, bit_accuracy, train_codec
    from .diffusion import load_t2i

    t2i = load_t2i(str(out / "t2i"), device=device)
    per = max(1, cfg.codec_images // len(DOMAINS))
    train = torch.cat([load_digits_domain(d, "train", cfg.image_size).tensor()[:per] for d in DOMAINS])
    test = torch.cat([load_digits_domain(d, "test", cfg.image_size).tensor()[:64] for d in DOMAINS])
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


def build_zoo(out: Path, cfg: ZooConfig | None = None, log=None, stages=("clip", "judge", "vae", "unet", "codec"),
              evaluate: bool = True, device: str = "cpu") -> dict:
    """Build the zoo into `out` (resumable: stages already finished in out/.build are kept)."""
    cfg = cfg or ZooConfig()
    log = _Log(log)
    out = Path(out)
    work = out.parent / (out.name + ".build")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    state_file = work / "state.json"
    new_cfg = _jsonable(asdict(cfg))
    state = json.loads(state_file.read_text()) if state_file.exists() else {"config": new_cfg, "done": {}}
    # A finished stage is kept while the options it depends on are unchanged.
    for stage in list(state["done"]):
        keys = _stage_keys(stage, new_cfg)
        if any(state["config"].get(k) != new_cfg[k] for k in keys):
            log(f"[zoo] {stage}: options changed, rebuilding it")
            state["done"].pop(stage)
            if stage == "unet":
                (work / "unet_ckpt.pt").unlink(missing_ok=True)
    if "unet" not in state["done"] and any(state["config"].get(k) != new_cfg[k] for k in _stage_keys("unet", new_cfg)):
        (work / "unet_ckpt.pt").unlink(missing_ok=True)  # a checkpoint from other options must not resume
    state["config"] = new_cfg
    t0 = time.time()
    for stage in stages:
        if stage in state["done"]:
            log(f"[zoo] {stage}: already built, kept")
            continue
        fn = {"clip": train_clip, "judge": train_judge, "vae": train_vae, "codec": train_codec_stage}.get(stage)
        info = fn(cfg, work, log, device) if fn else train_unet(cfg, work, work, log, device)
        state["done"][stage] = info
        state_file.write_text(json.dumps(state, indent=2))
    info = {"config": state["config"], "stages": state["done"],
            "build_s": round(sum(v.get(f"{k}_train_s", 0) for k, v in state["done"].items()), 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
    (work / "zoo.json").write_text(json.dumps(info, indent=2))
    if evaluate:
        res = evaluate_zoo(work, per_prompt=cfg.eval_per_prompt, steps=cfg.eval_steps, guidance=cfg.guidance, log=log,
                           device=device)
        info["eval"] = {k: v for k, v in res.items() if not k.startswith("_")}
        (work / "zoo.json").write_text(json.dumps(info, indent=2))
    # Publish atomically: the finished folders replace `out` in one rename.
    with atomic_folder(out) as final:
        final.mkdir(parents=True)
        for name in ("clip", "judge", "t2i", "codec", "zoo.json"):
            src = work / name
            if src.exists():
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, final / name)
    log(f"[zoo] built into {out} in {time.time() - t0:.0f}s (this run)")
    return info


def _stage_keys(stage: str, cfg: dict) -> list[str]:
    """Options a stage's result depends on (the UNet depends on the CLIP and VAE too)."""
    common = ["seed", "image_size", "save_dtype"]
    own = {"clip": "clip_", "judge": "judge_", "vae": "vae_"}
    if stage in own:
        return common + [k for k in cfg if k.startswith(own[stage])]
    if stage == "codec":
        return common + [k for k in cfg if k.startswith(("vae_", "codec_"))]
    return common + [k for k in cfg if k.startswith(("clip_", "vae_", "unet_"))] + ["ema_decay", "cfg_dropout"]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=list))


