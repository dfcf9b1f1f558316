"""What a config may say about a timm backbone, checked without loading weights (loading: hdmap.models.backbones).

The backbone name and its layers are checked when a config is validated (a typo fails `hdmap trial` and `sweep plan`
at once, not a trial after its data is loaded). The backbones of the shipped configs (anomalib's defaults included)
and examples are described by `KNOWN_BACKBONES` (tests/test_config.py checks it against timm), so validating them
imports neither timm nor torch; any other name is looked up in timm.
"""

from __future__ import annotations

import difflib
import functools

from pydantic import Field, model_validator

from hdmap.models.configs.base import ModelConfig


def _vit_blocks(patch: int, width: int, depth: int = 12) -> dict[str, tuple[int, int]]:
    return {f"blocks.{i}": (patch, width) for i in range(depth)}


_BASIC_RESNET = {"act1": (2, 64), "layer1": (4, 64), "layer2": (8, 128), "layer3": (16, 256), "layer4": (32, 512)}
_BOTTLENECK_RESNET = {
    "act1": (2, 64),
    "layer1": (4, 256),
    "layer2": (8, 512),
    "layer3": (16, 1024),
    "layer4": (32, 2048),
}
# name -> (pretraining input size (H, W), feature layer -> (stride, channels)): what timm says (`timm_backbone_layers`,
# `timm_native_input_size`)
KNOWN_BACKBONES: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {
    "resnet18": ((224, 224), _BASIC_RESNET),
    "resnet50": ((224, 224), _BOTTLENECK_RESNET),
    "wide_resnet50_2": ((224, 224), _BOTTLENECK_RESNET),
    "wide_resnet50_2.tv_in1k": ((224, 224), _BOTTLENECK_RESNET),  # supersimplenet's default
    "vit_small_patch14_dinov2": ((518, 518), _vit_blocks(14, 384)),
    "vit_base_patch14_dinov2": ((518, 518), _vit_blocks(14, 768)),
}


class BackboneConfig(ModelConfig):
    """The fields of every model built on a timm backbone; each model sets its name, default backbone and layers."""

    needs_pretrained_weights = True

    backbone: str
    layers: list[str]
    pretrained: bool = True
    weights: str | None = Field(None, description="local checkpoint file; default: timm/HF cache")

    def weights_label(self) -> str | None:
        return pretrained_label(self.pretrained, self.weights)

    @model_validator(mode="after")
    def _known_backbone_and_layers(self) -> BackboneConfig:
        check_layers(self.backbone, self.layers)
        return self

    def data_requirements(self) -> dict:
        return {"to_rgb": (True, "timm backbones take 3-channel images")}

    def data_defaults(self) -> dict:
        size = native_input_size(self.backbone)
        return {} if size is None else {"image_size": size}

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        return stride_problem(self.backbone, self.layers, size)


def stride_problem(backbone: str, layers: list[str], size: tuple[int, int]) -> str | None:
    """Why (H, W) inputs are smaller than the deepest layer's stride (an empty feature map), or None."""
    stride = max(backbone_strides(backbone)[layer] for layer in layers)
    if min(size) < stride:
        return (
            f"{backbone} layer(s) {', '.join(layers)} downsample by {stride}: "
            f"each side needs >= {stride} px, got {list(size)}"
        )
    return None


def pretrained_label(pretrained: bool, weights: str | None) -> str:
    """The `pretrained_weights` column: random init is always said, never implied."""
    if not pretrained:
        return "random-init (pretrained: false)"
    return weights or "timm/HF cache"


def backbone_strides(backbone: str) -> dict[str, int]:
    """Feature layer name -> stride for a timm backbone (see `backbone_layers`)."""
    return {name: stride for name, (stride, _) in backbone_layers(backbone).items()}


@functools.lru_cache(maxsize=64)
def backbone_layers(backbone: str) -> dict[str, tuple[int, int]]:
    """Feature layer name -> (stride, channels) for a timm backbone: `KNOWN_BACKBONES`, else built by timm on the meta
    device (no weights, no memory).

    Follows anomalib's TimmFeatureExtractor: a name containing "vit" is a transformer read at `blocks.N`
    (stride = patch size); any other model exposes its `features_only` stages (`layer2`, ...)."""
    if backbone in KNOWN_BACKBONES:
        return KNOWN_BACKBONES[backbone][1]
    return timm_backbone_layers(backbone)


def timm_backbone_layers(backbone: str) -> dict[str, tuple[int, int]]:
    """`backbone_layers` as timm builds the model (what `KNOWN_BACKBONES` is checked against)."""
    import timm
    import torch

    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
        raise ValueError(
            f"unknown backbone {backbone!r} (not a timm model)"
            + (f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()")
        )
    vit = "vit" in backbone.lower()
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, features_only=not vit)
    if vit:
        patch, width = model.patch_embed.patch_size[0], model.num_features
        return _vit_blocks(patch, width, len(model.blocks))
    info = model.feature_info
    return dict(zip(info.module_name(), zip(info.reduction(), info.channels())))


def check_layers(backbone: str, layers: list[str], backbone_field: str = "backbone", field: str = "layers") -> None:
    """ValueError naming the field unless `backbone` is a timm model that has every one of `layers` (at least one)."""
    try:
        strides = backbone_strides(backbone)
    except ValueError as exc:
        raise ValueError(f"model.{backbone_field}: {exc}") from None
    unknown = [layer for layer in layers if layer not in strides]
    if not layers or unknown:
        what = "no layers given" if not layers else f"layers {unknown} are not in backbone {backbone!r}"
        raise ValueError(f"model.{field}: {what}; set it to some of: {', '.join(strides)}")


def native_input_size(backbone: str) -> tuple[int, int] | None:
    """(H, W) the backbone was pretrained at (timm's pretrained config): 518 for DINOv2 ViTs, 224 for ResNets."""
    if backbone in KNOWN_BACKBONES:
        return KNOWN_BACKBONES[backbone][0]
    return timm_native_input_size(backbone)


def timm_native_input_size(backbone: str) -> tuple[int, int] | None:
    """`native_input_size` as timm's pretrained config states it (what `KNOWN_BACKBONES` is checked against)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    return tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else None
