"""Backbone weights: the real loading path (local file or timm/HF cache), never a silent random init.

Random weights only when a config says `pretrained: false`. Nothing here downloads: on an offline
cluster node a missing cache must fail at once with a message that says how to provide the file.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import timm
import torch
from pydantic import Field, model_validator

from hdmap.errors import WeightsNotFoundError
from hdmap.models.base import ModelConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class BackboneConfig(ModelConfig):
    """The fields of every model built on a timm backbone; each model sets its name, default backbone and layers.

    The backbone name and its layers are checked against timm when the config is validated (a typo fails
    `hdmap trial` and `sweep plan` at once, not a trial after its data is loaded)."""

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
    """Feature layer name -> (stride, channels) for a timm backbone, built on the meta device (no weights, no memory).

    Follows anomalib's TimmFeatureExtractor: a name containing "vit" is a transformer read at `blocks.N`
    (stride = patch size); any other model exposes its `features_only` stages (`layer2`, ...)."""
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
        return {f"blocks.{i}": (patch, width) for i in range(len(model.blocks))}
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
    cfg = timm.models.get_pretrained_cfg(backbone)
    return tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else None


def find_weights(backbone: str, weights: str | None = None) -> Path:
    """Locate a pretrained checkpoint for a timm model: an explicit file, else the HF / torch-hub cache."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.weights={weights!r} for backbone {backbone!r}: no such file")
        return path
    looked: list[str] = []
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        raise WeightsNotFoundError(
            f"backbone {backbone!r} has no pretrained weights known to timm; "
            "set model.weights or model.pretrained=false"
        )
    hf_id = getattr(cfg, "hf_hub_id", None)
    if hf_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = hf_id.split("@")[0]
        for name in WEIGHT_FILES:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
        looked.append(f"HF cache {HF_HUB_CACHE} (repo {repo}, files {'|'.join(WEIGHT_FILES)})")
    url = getattr(cfg, "url", None)
    if url:
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        candidate = hub_dir / os.path.basename(url.split("?")[0])
        if candidate.is_file():
            return candidate
        looked.append(f"torch hub cache {candidate}")
    fetch = f"huggingface-cli download {hf_id.split('@')[0]}" if hf_id else f"download {url}"
    raise WeightsNotFoundError(
        f"pretrained weights for backbone {backbone!r} not found (this platform never downloads at run time).\n"
        f"  looked in: {'; '.join(looked) or 'nowhere (no source in its timm config)'}\n"
        f"  provide them by one of: (1) model.weights=/path/to/checkpoint(.safetensors|.pth); "
        f"(2) on a machine with internet run `{fetch}` and copy the HF cache (HF_HOME) to this node; "
        f"(3) model.pretrained=false for random initialisation (results will say so)."
    )


def load_pretrained(module: torch.nn.Module, backbone: str, weights: str | None = None) -> Path:
    """Load a timm checkpoint into `module` (a full model or a features_only wrapper); return the file used.

    timm's own loader builds the reference model (so its checkpoint filters apply), then every
    parameter of `module` must be found in it — a partial load is an error, not a warning.
    """
    path = find_weights(backbone, weights)
    reference = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    missing, _unexpected = module.load_state_dict(reference.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"checkpoint {path} does not fit backbone {backbone!r}: missing {missing[:5]}...")
    return path
