"""IP-CLIP (CVPR 2025): an image-conditioned prompt generator over a frozen CLIP.

The frozen vision tower gives every block's tokens X_l. Per image and block:
  mu_l = mean over tokens, sigma_l = std over tokens (eps inside the root)
  domain tokens  d_l = W2_l W1_l ((mu_l + sigma_l) / 2)        (no activation; L tokens)
  image tokens   c   = Mix_{l -> 1}( V_l mu_l )                 (n_image_tokens of them)
and the text prompt of class k for image x is
  [SOS] [d_1..d_L] x domain_repeat [c_1..c_n] <classname> . [EOS]
so text features are per image: (B, n_classes, dim); logits = scale * cos(f(x), t_k(x)).
Only the projector learns; both CLIP towers stay frozen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.clip import CLIPBundle


@dataclass
class ProjectorConfig:
    n_image_tokens: int = 4
    # The reference builds its image tokens with one shared layer (identical tokens);
    # False gives each token its own mixing layer.
    shared_image_tokens: bool = True
    domain_repeat: int = 2
    domain_hidden: int = 256
    eps: float = 1e-6
    # Ours, not the paper's: the domain tokens also read the image's final feature (a
    # zero-initialised linear map added to each), so the lock can refuse inputs whose block
    # statistics were made to look licensed while their content did not move (a disguise).
    read_feature: bool = False


def block_statistics(blocks: list[torch.Tensor], eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block token mean mu_l and std sigma_l: two tensors (B, L, width)."""
    x = torch.stack(blocks, dim=1).float()  # (B, L, T, W)
    mu = x.mean(2)
    sigma = (x.var(2, unbiased=False) + eps).sqrt()
    return mu, sigma


@torch.no_grad()
def frozen_features(clip: CLIPBundle, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """What the frozen vision tower contributes, computed once: mu, sigma (B, L, W) and the
    normalised image feature f (B, dim). Cached when training runs without augmentation."""
    mus, sigmas, feats = [], [], []
    for i in range(0, len(images), batch_size):
        blocks, f = clip.vision_block_states(images[i:i + batch_size])
        mu, sigma = block_statistics(blocks)
        mus.append(mu)
        sigmas.append(sigma)
        feats.append(f.float())
    return {"mu": torch.cat(mus), "sigma": torch.cat(sigmas), "feat": torch.cat(feats)}


class IPProjector(nn.Module):
    """Maps block statistics to domain (style) tokens and image (content) tokens."""

    def __init__(self, n_layers: int, vis_width: int, txt_width: int, cfg: ProjectorConfig | None = None,
                 feat_dim: int | None = None):
        super().__init__()
        self.cfg = cfg or ProjectorConfig()
        c = self.cfg
        if c.read_feature:
            self.feature = nn.Linear(feat_dim or txt_width, txt_width)
            nn.init.zeros_(self.feature.weight)
            nn.init.zeros_(self.feature.bias)
        self.domain = nn.ModuleList(
            nn.Sequential(nn.Linear(vis_width, c.domain_hidden), nn.Linear(c.domain_hidden, txt_width))
            for _ in range(n_layers))
        self.content = nn.ModuleList(nn.Linear(vis_width, txt_width) for _ in range(n_layers))
        n_mix = 1 if c.shared_image_tokens else c.n_image_tokens
        self.mix = nn.ModuleList(nn.Linear(n_layers, 1) for _ in range(n_mix))

    @property
    def n_context(self) -> int:
        return len(self.domain) * self.cfg.domain_repeat + self.cfg.n_image_tokens

    def forward(self, mu: torch.Tensor, sigma: torch.Tensor,
                feat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, sigma (B, L, W) [, feat (B, dim) where the config reads it] -> domain tokens
        (B, L, D), image tokens (B, n, D)."""
        style = (mu + sigma) / 2
        dom = torch.stack([proj(style[:, l]) for l, proj in enumerate(self.domain)], dim=1)
        if self.cfg.read_feature:
            if feat is None:
                raise ValueError("this projector reads the image feature: pass feat")
            dom = dom + self.feature(feat.to(dom.dtype)).unsqueeze(1)
        per_layer = torch.stack([proj(mu[:, l]) for l, proj in enumerate(self.content)], dim=1)  # (B, L, D)
        mixed = [m(per_layer.transpose(1, 2)).transpose(1, 2) for m in self.mix]  # each (B, 1, D)
        if self.cfg.shared_image_tokens:
            img = mixed[0].expand(-1, self.cfg.n_image_tokens, -1)
        else:
            img = torch.cat(mixed, dim=1)
        return dom, img

    def context(self, mu: torch.Tensor, sigma: torch.Tensor,
                feat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned prompt context (B, n_context, D) and the domain tokens."""
        dom, img = self(mu, sigma, feat)
        return torch.cat([dom.repeat(1, self.cfg.domain_repeat, 1), img], dim=1), dom


class ClassPrompts(nn.Module):
    """Token embeddings of '<classname> .' per class and where each prompt ends.

    The prompt of class k is [SOS] context <class tokens> [EOS]; sequences are built only
    up to the longest end position (exact under the causal mask).
    """

    def __init__(self, clip: CLIPBundle, class_names: list[str], n_context: int):
        super().__init__()
        tok = clip.tokenizer
        ids = [tok(f"{name.replace('_', ' ')}.", add_special_tokens=False)["input_ids"] for name in class_names]
        longest = max(len(i) for i in ids)
        seq = torch.full((len(ids), longest + 2), tok.eos_token_id, dtype=torch.long)
        seq[:, 0] = tok.bos_token_id
        for k, i in enumerate(ids):
            seq[k, 1:1 + len(i)] = torch.tensor(i)
        with torch.no_grad():
            emb = clip.token_embeddings(seq.to(clip.device)).float()
        self.register_buffer("sos", emb[:, :1].clone(), persistent=False)        # (C, 1, D)
        self.register_buffer("suffix", emb[:, 1:].clone(), persistent=False)     # (C, longest + 1, D)
        lengths = torch.tensor([len(i) for i in ids])
        self.register_buffer("eos_pos", 1 + n_context + lengths, persistent=False)  # (C,)
        self.n_context = n_context
        self.length = 2 + n_context + longest  # eos_pos.max() + 1 as a Python int: no device sync per step
        max_pos = clip.model.config.text_config.max_position_embeddings
        if self.length > max_pos:
            from ..errors import InputError

            raise InputError(f"prompt of {self.length} tokens exceeds the text encoder's "
                             f"{max_pos} positions", "use shorter class names or fewer prompt tokens")

    def embeddings(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, n_ctx, D) -> prompts (B * C, T, D) and end positions (B * C,)."""
        b, c = context.shape[0], self.sos.shape[0]
        t = self.length
        suffix = self.suffix[:, : t - 1 - self.n_context]
        seq = torch.cat([
            self.sos.unsqueeze(0).expand(b, -1, -1, -1),
            context.unsqueeze(1).expand(-1, c, -1, -1),
            suffix.unsqueeze(0).expand(b, -1, -1, -1),
        ], dim=2)
        return seq.reshape(b * c, t, -1), self.eos_pos.repeat(b)


class IPCLIP(nn.Module):
    """Frozen CLIP + trainable IP projector: per-image class text features and logits."""

    def __init__(self, clip: CLIPBundle, class_names: list[str], cfg: ProjectorConfig | None = None):
        super().__init__()
        self.clip = clip
        self.class_names = list(class_names)
        vc, tc = clip.model.config.vision_config, clip.model.config.text_config
        self.projector = IPProjector(vc.num_hidden_layers, vc.hidden_size, tc.hidden_size, cfg,
                                     clip.model.config.projection_dim)
        self.prompts = ClassPrompts(clip, class_names, self.projector.n_context)
        # Images per checkpointed text-encoder chunk while training (None: one pass, all kept
        # for backward). Activations grow as images x classes; chunks keep that to one chunk's,
        # for one more forward (memory figures: the docs' benchmark pages).
        self.text_chunk: int | None = None
        self.to(clip.device)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.model.logit_scale.exp().float()

    def text_features(self, mu: torch.Tensor, sigma: torch.Tensor,
                      feat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, dim) normalised text features, one set per image, in ONE text-encoder pass;
        and the domain tokens (B, L, D)."""
        ctx, dom = self.projector.context(mu, sigma, feat)
        emb, eos = self.prompts.embeddings(ctx.to(self.clip.model.dtype))
        step = (self.text_chunk or 0) * len(self.class_names)
        if step and torch.is_grad_enabled() and len(emb) > step:
            from torch.utils.checkpoint import checkpoint

            feats = torch.cat([checkpoint(self.clip.text_features_from_embeddings, emb[i:i + step], eos[i:i + step],
                                          use_reentrant=False) for i in range(0, len(emb), step)]).float()
        else:
            feats = self.clip.text_features_from_embeddings(emb, eos).float()
        return feats.view(len(mu), len(self.class_names), -1), dom

    def reference_text_features(self, mu: torch.Tensor, sigma: torch.Tensor,
                                feat: torch.Tensor | None = None) -> torch.Tensor:
        """The reference code's structure: one text-encoder pass per image and class, each
        padded to the encoder's full length (for benchmarks and equivalence tests)."""
        ctx, _ = self.projector.context(mu, sigma, feat)
        max_pos = self.clip.model.config.text_config.max_position_embeddings
        out = torch.empty(len(mu), len(self.class_names), self.clip.model.config.projection_dim, device=mu.device)
        for i in range(len(mu)):
            emb, eos = self.prompts.embeddings(ctx[i:i + 1].to(self.clip.model.dtype))
            pad = self.prompts.suffix[:1, -1:].expand(1, max_pos - emb.shape[1], -1)
            for k in range(len(self.class_names)):
                full = torch.cat([emb[k:k + 1], pad], dim=1)
                out[i, k] = self.clip.text_features_from_embeddings(full, eos[k:k + 1])[0].float()
        return out

    def logits(self, feat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """feat (B, dim), text (B, C, dim), both normalised -> (B, C)."""
        return self.logit_scale * torch.einsum("bd,bcd->bc", feat, text)

    def forward(self, frozen: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text, dom = self.text_features(frozen["mu"], frozen["sigma"], frozen["feat"])
        return self.logits(frozen["feat"], text), text, dom

    @torch.no_grad()
    def predict(self, frozen: dict[str, torch.Tensor], batch_size: int = 128) -> torch.Tensor:
        out = []
        for i in range(0, len(frozen["feat"]), batch_size):
            part = {k: v[i:i + batch_size] for k, v in frozen.items()}
            out.append(self(part)[0].argmax(-1).cpu())
        return torch.cat(out)
