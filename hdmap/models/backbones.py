"""Backbone weights: the real loading path (local file or timm/HF cache), never a silent random init (what a config
may name: hdmap.models.configs.backbones).

Random weights only when a config says `pretrained: false`. Nothing here downloads: on an offline
cluster node a missing cache must fail at once with a message that says how to provide the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch

from hdmap.errors import WeightsNotFoundError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


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
