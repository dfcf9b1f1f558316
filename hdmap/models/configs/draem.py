"""`draem` and the training fields of the DRAEM family (module: hdmap.models.draem)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from hdmap.models.configs.base import ModelConfig


class TrainedModelConfig(ModelConfig):
    """The training fields of the models fitted by gradient descent on synthetic faults (the DRAEM family)."""

    per_epoch_metric = "val_loss"  # synthetic faults on held-out train normals, identical every epoch

    epochs: int = Field(10, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without val_loss improvement")
    lr: float = Field(1e-4, gt=0)

    def max_epochs(self) -> int:
        return self.epochs


class DraemConfig(TrainedModelConfig):
    name: Literal["draem"] = "draem"
    base_width: int = Field(
        128, ge=8, description="reconstructive width (anomalib default 128); discriminative gets half"
    )
    beta: tuple[float, float] = Field((0.1, 1.0), description="blend factor range of synthetic anomalies")
    dtd_dir: str | None = Field(None, description="existing local DTD texture folder; None = Perlin noise only")

    @field_validator("dtd_dir")
    @classmethod
    def _must_exist(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_dir():
            raise ValueError(f"dtd_dir {v!r} is not an existing folder (textures are never downloaded)")
        return v

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        return draem_size_problem(size)

    def data_requirements(self) -> dict:
        return {"to_rgb": (True, "anomalib's DRAEM subnetworks take 3-channel images")}


def draem_size_problem(size: tuple[int, int]) -> str | None:
    """DRAEM's U-Nets halve the input five times and concatenate skips: each side a multiple of 32."""
    if any(side % 32 for side in size):
        return f"DRAEM networks need each side a multiple of 32 (e.g. [32, 96] or [64, 192]), got {list(size)}"
    return None
