"""The one input transform of a trial: HDMAP array -> model input, identical for fit and eval."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "aspect_pad")
NORMALIZATIONS = ("imagenet", "none")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class HdmapTransform(nn.Module):
    """Resize (never clip: values > 1 carry fault peaks), optional centre crop, gray -> 3 channels, optional ImageNet
    norm.

    `aspect_pad` keeps the 31:95 aspect ratio (bilinear fit) and zero-pads to the target size. `crop` (H, W) cuts the
    centre of the resized image (Dinomaly's 448 -> 392): the model sees `output_size`, the crop if set, else `size`.
    """

    def __init__(
        self,
        size: tuple[int, int],
        resize: str = "bilinear",
        to_rgb: bool = True,
        normalization: str = "imagenet",
        crop: tuple[int, int] | None = None,
    ):
        super().__init__()
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize={resize!r}: expected one of {RESIZE_METHODS}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}: expected one of {NORMALIZATIONS}")
        self.size = (int(size[0]), int(size[1]))
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        if self.crop is not None and not all(0 < c <= s for c, s in zip(self.crop, self.size)):
            raise ValueError(f"crop={list(self.crop)}: each side must be in 1..size {list(self.size)}")
        self.resize = resize
        self.to_rgb = to_rgb
        self.normalization = normalization
        channels = 3 if to_rgb else 1
        mean = _IMAGENET_MEAN if to_rgb else (sum(_IMAGENET_MEAN) / 3,)
        std = _IMAGENET_STD if to_rgb else (sum(_IMAGENET_STD) / 3,)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, data) -> HdmapTransform:
        """The trial's transform from its `DataConfig` (hdmap.config)."""
        return cls(data.image_size, data.resize, data.to_rgb, data.normalization, data.center_crop)

    @property
    def channels(self) -> int:
        return 3 if self.to_rgb else 1

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of what the model receives."""
        return self.crop or self.size

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, 1, H, W)
        x = self._resize(x)
        if self.crop is not None:
            top, left = (round((s - c) / 2) for s, c in zip(self.size, self.crop))  # as torchvision's CenterCrop
            x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        if self.to_rgb:
            x = x.expand(-1, 3, -1, -1)
        if self.normalization == "imagenet":
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize == "aspect_pad":
            h, w = x.shape[-2:]
            scale = min(self.size[0] / h, self.size[1] / w)
            fit = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x, size=fit, mode="bilinear", align_corners=False)
            pad_h, pad_w = self.size[0] - fit[0], self.size[1] - fit[1]
            return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        if self.resize == "nearest":
            return F.interpolate(x, size=self.size, mode="nearest")
        return F.interpolate(x, size=self.size, mode=self.resize, align_corners=False)

    def extra_repr(self) -> str:
        crop = f", crop={self.crop}" if self.crop else ""
        return f"size={self.size}{crop}, resize={self.resize}, to_rgb={self.to_rgb}, normalization={self.normalization}"
