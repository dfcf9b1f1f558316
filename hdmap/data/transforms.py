"""The one input transform of a trial: HDMAP array -> model input, identical for fit and eval."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hdmap.data.transform_options import NORMALIZATIONS, PER_IMAGE_NORMS, RESIZE_METHODS

_MEAN_STD = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP / open_clip
}
_ROBUST = {"robust_p5_p95": (0.05, 0.95), "robust_p1_p99": (0.01, 0.99)}


class HdmapTransform(nn.Module):
    """Optional per-image rescaling, resize (never clip: values > 1 carry fault peaks), optional centre crop,
    gray -> 3 channels, optional channel normalisation (ImageNet or CLIP mean/std).

    `aspect_pad` keeps the 31:95 aspect ratio (bilinear fit) and zero-pads to the target size. `crop` (H, W) cuts the
    centre of the resized image (Dinomaly's 448 -> 392): the model sees the crop if set, else `size`.
    `per_image_norm` maps each raw image to [0, 1] before anything else: `minmax` by its own min and max,
    `robust_p5_p95` / `robust_p1_p99` by those percentiles (clamped). It discards the absolute amplitude
    that separates cold from warm (docs/research-facts.md#per-image-normalisation: it collapses cold AUROC); a
    constant image maps to 0.
    """

    def __init__(
        self,
        size: tuple[int, int],
        resize: str = "bilinear",
        to_rgb: bool = True,
        normalization: str = "imagenet",
        per_image_norm: str = "none",
        crop: tuple[int, int] | None = None,
    ):
        super().__init__()
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize={resize!r}: expected one of {RESIZE_METHODS}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}: expected one of {NORMALIZATIONS}")
        if per_image_norm not in PER_IMAGE_NORMS:
            raise ValueError(f"per_image_norm={per_image_norm!r}: expected one of {PER_IMAGE_NORMS}")
        self.size = (int(size[0]), int(size[1]))
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        if self.crop is not None and not all(0 < c <= s for c, s in zip(self.crop, self.size)):
            raise ValueError(f"crop={list(self.crop)}: each side must be in 1..size {list(self.size)}")
        self.resize = resize
        self.to_rgb = to_rgb
        self.normalization = normalization
        self.per_image_norm = per_image_norm
        channels = 3 if to_rgb else 1
        mean, std = _MEAN_STD.get(normalization, _MEAN_STD["imagenet"])
        if not to_rgb:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    @classmethod
    def for_data(cls, data_cfg) -> HdmapTransform:
        """The transform a trial's `data` section describes."""
        return cls(
            data_cfg.image_size,
            data_cfg.resize,
            data_cfg.to_rgb,
            data_cfg.normalization,
            data_cfg.per_image_norm,
            data_cfg.center_crop,
        )

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
        if self.per_image_norm != "none":
            x = self._per_image(x)
        x = self._resize(x)
        if self.crop is not None:
            top, left = (round((s - c) / 2) for s, c in zip(self.size, self.crop))  # as torchvision's CenterCrop
            x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        if self.to_rgb:
            x = x.expand(-1, 3, -1, -1)
        if self.normalization != "none":
            x = (x - self.mean) / self.std
        return x.contiguous()

    def _per_image(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self.per_image_norm == "minmax":
            low, high = flat.amin(dim=1), flat.amax(dim=1)
        else:
            q = torch.tensor(_ROBUST[self.per_image_norm], device=x.device, dtype=x.dtype)
            low, high = torch.quantile(flat, q, dim=1)
        low, span = low.view(-1, 1, 1, 1), (high - low).view(-1, 1, 1, 1)
        scaled = (x - low) / span.clamp_min(torch.finfo(x.dtype).tiny)
        return torch.where(span > 0, scaled.clamp(0, 1), torch.zeros_like(x))

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
        return (
            f"size={self.size}{crop}, resize={self.resize}, to_rgb={self.to_rgb}, "
            f"normalization={self.normalization}, per_image_norm={self.per_image_norm}"
        )
