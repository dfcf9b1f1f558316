"""`patchcore`: anomalib's PatchcoreModel on a timm backbone (module: hdmap.models.patchcore)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hdmap.models.configs.backbones import BackboneConfig


class PatchCoreConfig(BackboneConfig):
    name: Literal["patchcore"] = "patchcore"
    backbone: str = "wide_resnet50_2"
    layers: list[str] = ["layer2", "layer3"]
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    k: int = Field(9, ge=1, description="neighbours for anomalib's image-score reweighting")
    batch_size: int = Field(8, ge=1)
