"""An independent digit classifier (small CNN) that judges generated samples.

It is trained on the real digits' train splits only, never on generated images and never
through the T2I model's text encoder, so a sample it calls a 'seven' looks like a seven.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


class DigitJudge(nn.Module):
    def __init__(self, width: int = 32, n_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.config = {"width": width, "n_classes": n_classes, "image_size": image_size}
        w = width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0, 1] (B, 3, H, W) -> logits."""
        size = self.config["image_size"]
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        h = self.features(images * 2 - 1)
        return self.head(h.mean((2, 3)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        self.eval()
        return torch.cat([self(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DigitJudge":
        folder = Path(folder)
        model = cls(**json.loads((folder / "config.json").read_text()))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / "model.safetensors")).items()}
        model.load_state_dict(state)
        return model.eval()
