"""`draem_sevnet`: DRAEM plus a severity subnetwork, trained on cut-paste faults (module: hdmap.models.draem_sevnet)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hdmap.data.fault_shapes import ASPECT_PRESETS, aspect_range, patch_range_problem
from hdmap.models.configs.draem import TrainedModelConfig, draem_size_problem

SEVERITY_INPUT_CHANNELS = {
    "discriminative_only": 2,
    "with_original": 3,
    "with_reconstruction": 3,
    "with_error_map": 3,
    "multi_modal": 5,
}


class DraemSevNetConfig(TrainedModelConfig):
    name: Literal["draem_sevnet"] = "draem_sevnet"
    base_width: int = Field(64, ge=8, description="reconstructive width; discriminative gets half (min 8)")
    severity_input: Literal[tuple(SEVERITY_INPUT_CHANNELS)] = "discriminative_only"  # type: ignore[valid-type]
    severity_width: int = Field(16, ge=4, description="channels of the severity CNN's first layer")
    patch_width_range: tuple[int, int] = Field((8, 32), description="patch width in model-input pixels (lo, hi)")
    patch_aspect: Literal[tuple(ASPECT_PRESETS)] | tuple[float, float] = Field(  # type: ignore[valid-type]
        "landscape", description="width / height: landscape (2-4), portrait (0.25-0.5), square (1) or [lo, hi]"
    )
    patch_count: int = Field(1, ge=1, le=3)
    anomaly_probability: float = Field(0.5, ge=0, le=1)
    severity_max: float = Field(1.0, gt=0, description="severity ~ U[0, severity_max]: peak added value, input units")
    w_recon: float = Field(1.0, ge=0)
    w_seg: float = Field(1.0, ge=0)
    w_sev: float = Field(0.5, ge=0)
    severity_loss: Literal["mse", "smooth_l1"] = "mse"
    score_combination: Literal["max", "weighted_average"] = "max"
    score_severity_weight: float = Field(0.5, ge=0, le=1, description="weight of the severity in weighted_average")

    def outputs(self) -> frozenset[str]:
        return frozenset({"severity"})

    @field_validator("patch_width_range")
    @classmethod
    def _width_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"patch_width_range {list(v)}: need 1 <= lo <= hi")
        return v

    @field_validator("patch_aspect")
    @classmethod
    def _aspect(cls, v):
        aspect_range(v)
        return v

    @model_validator(mode="after")
    def _some_loss(self) -> DraemSevNetConfig:
        if self.w_recon + self.w_seg + self.w_sev == 0:
            raise ValueError("w_recon, w_seg and w_sev are all 0: nothing to train")
        return self

    def data_requirements(self) -> dict:
        return {"to_rgb": (False, "its networks read the gray HDMAP image (1 channel)")}

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        return draem_size_problem(size) or patch_range_problem(
            "patch_width_range", self.patch_width_range, size[1], "width"
        )
