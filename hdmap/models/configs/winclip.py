"""`winclip` and `ca_winclip`: WinCLIP's fields (module and its story: hdmap.models.winclip). Validating one imports
open_clip (the architecture is checked against its registry), not the model's torch code."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hdmap.models.configs.backbones import pretrained_label
from hdmap.models.configs.base import ModelConfig
from hdmap.models.gating import bank_problem

if TYPE_CHECKING:
    import numpy as np

CLIP_MODEL = "ViT-B-16-plus-240"  # anomalib's WinCLIP backbone and pretrained tag
CLIP_TAG = "laion400m_e31"
GATINGS = ("mixed", "oracle", "p90", "clip_topk")


def register_clip_configs() -> None:
    """The architectures shipped in `hdmap/models/clip_configs/*.json` join open_clip's registry, in every process."""
    import open_clip

    folder = Path(__file__).parents[1] / "clip_configs"
    if not all(p.stem in open_clip.list_models() for p in folder.glob("*.json")):
        open_clip.add_model_config(folder)


def clip_architecture(name: str) -> dict:
    """open_clip's config of a WinCLIP-compatible architecture; ValueError naming the alternatives otherwise."""
    import open_clip

    register_clip_configs()
    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise ValueError(f"unknown open_clip model {name!r}; {hint}")
    cfg = open_clip.get_model_config(name)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    fits = (
        "patch_size" in vision
        and not isinstance(vision.get("layers"), (list, tuple))
        and not {"timm_model_name"} & set(vision)
        and not {"hf_model_name", "hf_tokenizer_name"} & set(text)
        and "multimodal_cfg" not in cfg
        and text.get("context_length", 77) == 77
        and text.get("vocab_size", 49408) == 49408
    )
    if not fits:
        raise ValueError(
            f"open_clip model {name!r} is not a plain CLIP ViT (WinCLIP needs open_clip's own ViT image tower and "
            f"text transformer with the 77-token BPE vocabulary), e.g. {CLIP_MODEL}, ViT-B-16, ViT-S-32"
        )
    return cfg


class ClipConfig(ModelConfig):
    """The fields of every WinCLIP model."""

    needs_pretrained_weights: ClassVar[bool] = True

    clip_model: str = Field(CLIP_MODEL, description="open_clip architecture (a plain CLIP ViT)")
    clip_tag: str = Field(CLIP_TAG, description="open_clip pretrained tag whose checkpoint is looked up locally")
    pretrained: bool = True
    weights: str | None = Field(None, description="local open_clip checkpoint; default: the HF / open_clip cache")
    class_name: str = Field("industrial sensor data", description="what WinCLIP's prompt ensemble names")
    scales: list[int] = Field([2, 3], description="sliding-window sizes in patches (anomalib's default)")
    batch_size: int = Field(8, ge=1)

    @field_validator("clip_model")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        clip_architecture(v)
        return v

    @field_validator("class_name")
    @classmethod
    def _named_class(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "must name what WinCLIP's prompts describe, e.g. 'industrial sensor data' (empty: anomalib builds no "
                "text embeddings, every trial fails)"
            )
        return v

    @field_validator("scales")
    @classmethod
    def _sane_scales(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"scales={v}: distinct window sizes >= 1 (in patches), e.g. [2, 3]")
        return v

    def patch_size(self) -> int:
        return int(clip_architecture(self.clip_model)["vision_cfg"]["patch_size"])

    def data_defaults(self) -> dict:
        size = int(clip_architecture(self.clip_model)["vision_cfg"]["image_size"])
        return {"image_size": (size, size), "resize": "nearest", "normalization": "clip"}

    def data_requirements(self) -> dict:
        return {"to_rgb": (True, "CLIP's image tower takes 3-channel images")}

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        patch = self.patch_size()
        grid = (size[0] // patch, size[1] // patch)
        if min(grid) < max(self.scales):
            return (
                f"{self.clip_model} (patch {patch} px) sees a {grid[0]} x {grid[1]} patch grid; windows of "
                f"model.scales={self.scales} patches need each side >= {max(self.scales) * patch} px, got {list(size)}"
            )
        return None

    def weights_label(self) -> str | None:
        if not self.pretrained or self.weights:
            return pretrained_label(self.pretrained, self.weights)
        return f"open_clip {self.clip_model} {self.clip_tag} (HF / open_clip cache)"


class WinClipConfig(ClipConfig):
    """`winclip`: anomalib's WinCLIP, zero-shot (k_shot 0) or few-shot on k_shot reference normals."""

    name: Literal["winclip"] = "winclip"
    shots_field: ClassVar[str | None] = "k_shot"
    k_shot: int = Field(0, ge=0, description="reference normals = data.train_shots (set from here); 0 = zero-shot")


class CAWinClipConfig(ClipConfig):
    """`ca_winclip`: WinCLIP with a cold and a warm reference bank and a gate choosing one per image."""

    name: Literal["ca_winclip"] = "ca_winclip"
    refs_per_bank: int = Field(
        2, ge=1, description="references per bank, drawn from the fit images the gate puts there"
    )
    gating: Literal[GATINGS] = "mixed"  # type: ignore[valid-type]
    gate_threshold: float | None = Field(None, description="p90 threshold; None = calibrated on fit images")
    gate_k: int | None = Field(
        None, ge=1, description="clip_topk: mean of the gate_k most similar references per bank; None = all of them"
    )

    checks_fit_set = True

    def fit_problem(self, fit_raw: np.ndarray, input_size: tuple[int, int]) -> str | None:

        gated = self.gating != "mixed"  # routed to one bank (mixed pools both banks' references)
        return bank_problem(fit_raw, self.gate_threshold, self.refs_per_bank, "model.refs_per_bank", gated)

    @model_validator(mode="after")
    def _gate_k_fits(self) -> CAWinClipConfig:
        if self.gate_k is not None and self.gate_k > self.refs_per_bank:
            raise ValueError(f"gate_k={self.gate_k} exceeds refs_per_bank={self.refs_per_bank} (references per bank)")
        return self

    def outputs(self) -> frozenset[str]:
        return frozenset() if self.gating == "mixed" else frozenset({"gate"})
