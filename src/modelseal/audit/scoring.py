"""How close is the recovered image to the original? (higher = more likely a member)

Metrics, each on the whole image and where useful on the removed region only:
  ssim, ssim_removed    structural similarity (kornia, Gaussian window), the removed
                        region's score is the SSIM map averaged over removed pixels
  psnr_removed          PSNR of the removed pixels
  features              cosine similarity of image features: a DINO ViT (CLS of the last
                        four blocks, as the reference) or a CLIP image tower when
                        `features` names a checkpoint; the tiny zoo CLIP offline
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.quiet import quiet_loading

METRICS = ("ssim", "ssim_removed", "psnr_removed", "features")


def _window(images: torch.Tensor) -> int:
    side = min(images.shape[-2:])
    return 11 if side >= 64 else 7 if side >= 24 else 3


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import kornia

    return kornia.metrics.ssim(a.float(), b.float(), _window(a)).mean(1, keepdim=True)


class FeatureExtractor:
    """Image embeddings for similarity: DINO (transformers ViT/Dinov2) or CLIP, or the tiny CLIP."""

    def __init__(self, source: str = "tiny:clip", device: str = "cpu", local_files_only: bool = False):
        self.source = source
        self.device = device
        self.kind = "clip"
        if not source.startswith("tiny:"):
            from ..models.zoo import hub_access, resolve_model

            source = resolve_model(source, "features")
            local_files_only = hub_access(source, "config.json", local_files_only)
        if source.startswith("tiny:") or _is_clip(source, local_files_only):
            from ..models.clip import load_clip

            self.clip = load_clip(source, device, local_files_only=local_files_only)
        else:
            self._load_dino(source, local_files_only)

    def _load_dino(self, source: str, local_files_only: bool) -> None:
        from transformers import AutoModel

        from ..errors import InputError
        quiet_loading()
        try:
            self.model = AutoModel.from_pretrained(source, local_files_only=local_files_only,
                                                   use_safetensors=True).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load feature model '{source}': {str(e).splitlines()[0]}",
                             "give a DINO/ViT or CLIP checkpoint folder or cached hub id, or leave --features "
                             "unset for the offline default") from None
        self.kind = "dino"
        self.size = int(getattr(self.model.config, "image_size", 224))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            return self.clip.image_features(images.to(self.clip.device))
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = self.model(pixel_values=((x.clamp(0, 1) - mean) / std).to(self.device), output_hidden_states=True)
        cls = torch.cat([h[:, 0] for h in out.hidden_states[-4:]], dim=-1)
        return F.normalize(cls.float(), dim=-1).cpu()


def _is_clip(source: str, local_files_only: bool) -> bool:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError):
        return False
    return "clip" in str(getattr(cfg, "model_type", "")).lower()


@torch.no_grad()
def similarity(original: torch.Tensor, recovered: torch.Tensor, keep_pixels: torch.Tensor,
               features: FeatureExtractor | None = None) -> dict[str, torch.Tensor]:
    """Per-image scores (n,) of each metric; higher means closer to the original."""
    smap = ssim_map(original, recovered)
    hole = 1 - keep_pixels
    out = {
        "ssim": smap.flatten(1).mean(1),
        "ssim_removed": (smap * hole).flatten(1).sum(1) / hole.flatten(1).sum(1).clamp_min(1),
    }
    mse = (((original - recovered) ** 2) * hole).flatten(1).sum(1) / (3 * hole.flatten(1).sum(1)).clamp_min(1)
    out["psnr_removed"] = -10 * torch.log10(mse.clamp_min(1e-10))
    if features is not None:
        fa, fb = features(original), features(recovered)
        out["features"] = (fa * fb).sum(-1).cpu()
    return {k: v.cpu().float() for k, v in out.items()}
