"""CLIP through transformers: loading, tensor preprocessing, per-block vision states,
a text encoder driven from prompt embeddings, and zero-shot classification.

Works the same for a real checkpoint (hub id or local folder, e.g. a ViT-B/16) and for the
tiny zoo's CLIP, which is saved in the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from ..errors import InputError
from .quiet import quiet_loading
from .weights import compare_shapes, library_error_line

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_TEMPLATES = ("a photo of the number {}", "a digit {}", "the number {}")


@dataclass
class CLIPBundle:
    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    source: str = ""

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> normalised pixel values at the model's size."""
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.model.dtype)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").input_ids.to(self.device)

    def image_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.model.get_image_features(pixel_values=self.preprocess(images)).pooler_output
        return F.normalize(f, dim=-1) if normalize else f

    def text_features(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        f = self.model.get_text_features(input_ids=self.tokenize(texts)).pooler_output
        return F.normalize(f, dim=-1) if normalize else f

    def vision_block_states(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every vision block's token output X_l (B, tokens, width) and the projected,
        normalised final image feature."""
        out = self.model.vision_model(pixel_values=self.preprocess(images), output_hidden_states=True)
        blocks = list(out.hidden_states[1:])
        feat = F.normalize(self.model.visual_projection(out.pooler_output), dim=-1)
        return blocks, feat

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding(input_ids)

    def text_features_from_embeddings(self, embeds: torch.Tensor, eos_positions: torch.Tensor,
                                      normalize: bool = True) -> torch.Tensor:
        """Run the text tower on prompt embeddings (B, T, D) instead of token ids.

        Learned prompts replace some token embeddings; the causal mask means states at or
        before the end token never see later positions, so callers may truncate every
        sequence after its last end token without changing the result.
        """
        tm = self.model.text_model
        b, t, _ = embeds.shape
        pos = tm.embeddings.position_embedding(torch.arange(t, device=embeds.device))
        h = embeds + pos.unsqueeze(0)
        mask = torch.full((t, t), float("-inf"), device=embeds.device, dtype=h.dtype).triu(1)
        mask = mask.view(1, 1, t, t).expand(b, 1, t, t)
        for layer in tm.encoder.layers:
            h = layer(h, mask)
            h = h[0] if isinstance(h, tuple) else h
        h = tm.final_layer_norm(h)
        pooled = h[torch.arange(b, device=h.device), eos_positions]
        f = self.model.text_projection(pooled)
        return F.normalize(f, dim=-1) if normalize else f

    @torch.no_grad()
    def class_text_features(self, class_names: list[str], templates=ZERO_SHOT_TEMPLATES) -> torch.Tensor:
        """Zero-shot classifier weights: template-averaged, normalised (C, dim)."""
        feats = []
        for c in class_names:
            f = self.text_features([tpl.format(c) for tpl in templates])
            feats.append(F.normalize(f.mean(0), dim=-1))
        return torch.stack(feats)

    @torch.no_grad()
    def zero_shot_accuracy(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                           batch_size: int = 512) -> float:
        w = self.class_text_features(class_names)
        correct = 0
        for i in range(0, len(images), batch_size):
            f = self.image_features(images[i:i + batch_size])
            correct += (f @ w.T).argmax(-1).cpu().eq(labels[i:i + batch_size]).sum().item()
        return 100.0 * correct / max(1, len(images))


def load_clip(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              local_files_only: bool = False) -> CLIPBundle:
    """Load a CLIP model from a local folder, a hub id, or 'tiny:clip'. Frozen, eval mode."""
    from .zoo import hub_access, resolve_model

    quiet_loading()
    path = resolve_model(str(source), kind="clip")
    local_files_only = hub_access(path, "config.json", local_files_only)
    _check_safetensors(path)
    try:
        model = CLIPModel.from_pretrained(path, dtype=dtype, local_files_only=local_files_only, use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=local_files_only)
    except RuntimeError as e:  # transformers: tensors of other shapes than config.json makes
        if "mismatched" not in str(e):
            raise
        raise InputError(f"the weights of '{source}' do not fit its config.json{_shape_mismatch(path)}",
                         "give config.json and model.safetensors of one checkpoint (restore or re-save the "
                         "folder)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load a CLIP model from '{source}': {library_error_line(e)}",
                         "give a local CLIP folder (config.json, model.safetensors, tokenizer files), "
                         "a hub id already in the cache, or tiny:clip") from None
    size = int(model.config.vision_config.image_size)
    mean, std = _normalisation(path, local_files_only)
    model.requires_grad_(False).eval().to(device)
    return CLIPBundle(model, tokenizer, size, mean, std, source=str(source))


def _check_safetensors(path: str) -> None:
    """Every *.safetensors file of a local folder must open as one (its header only is read;
    nothing is unpickled): a pickle or other file renamed model.safetensors is one line."""
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"'{f}' is not a safetensors file (corrupt, truncated, or another format under that "
                             f"name: {why[:100]})",
                             "restore the checkpoint's model.safetensors, or re-save the model with "
                             "save_pretrained(safe_serialization=True)") from None


def _shape_mismatch(path: str) -> str:
    """': <name> is (a) in model.safetensors but (b) in config.json' for a local folder (the
    file's header against the model config.json builds, on the meta device), else ''."""
    from safetensors import safe_open
    from transformers import CLIPConfig

    f = Path(path) / "model.safetensors"
    if not f.is_file():
        return ""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in CLIPModel(CLIPConfig.from_pretrained(path)).state_dict().items()}
    with safe_open(str(f), "pt") as sf:
        got = {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys() if k in want}
    why = compare_shapes({k: want[k] for k in got}, got, "model.safetensors", "config.json")
    return f": {why}" if why else ""


def _normalisation(path: str, local_files_only: bool) -> tuple[tuple, tuple]:
    """Image mean/std from the checkpoint's preprocessor_config.json (plain JSON; no image
    processor class, which would want torchvision)."""
    import json

    cfg_file = Path(path) / "preprocessor_config.json"
    if not cfg_file.exists():
        try:
            from huggingface_hub import hf_hub_download

            cfg_file = Path(hf_hub_download(path, "preprocessor_config.json", local_files_only=local_files_only))
        except Exception:  # no processor config: CLIP's own statistics
            return OPENAI_MEAN, OPENAI_STD
    cfg = json.loads(cfg_file.read_text())
    return tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))
