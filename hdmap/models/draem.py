"""DRAEM: anomalib's reconstructive + discriminative subnetworks and loss, Perlin-noise synthetic faults.

anomalib's Lightning `Draem` downloads the DTD texture set at construction when `dtd_dir` is
missing; this module never constructs it. Textures are used only when `dtd_dir` names an
existing local folder; otherwise anomalies are Perlin noise, which needs no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from hdmap.models.base import AnomalyModule, ModelConfig


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


class DraemNet(torch.nn.Module):
    """anomalib's two DRAEM subnetworks with a configurable width (anomalib's DraemModel fixes it)."""

    def __init__(self, base_width: int, channels: int = 3) -> None:
        super().__init__()
        from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork, ReconstructiveSubNetwork

        self.reconstructive_subnetwork = ReconstructiveSubNetwork(channels, channels, base_width)
        self.discriminative_subnetwork = DiscriminativeSubNetwork(2 * channels, 2, max(8, base_width // 2))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (reconstruction, 2-class segmentation logits)."""
        reconstruction = self.reconstructive_subnetwork(images)
        return reconstruction, self.discriminative_subnetwork(torch.cat([images, reconstruction], dim=1))


class DraemModule(AnomalyModule):
    uses_validation = True

    def __init__(self, cfg: DraemConfig, transform: torch.nn.Module) -> None:
        super().__init__(transform)
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
        from anomalib.models.image.draem.loss import DraemLoss

        self.model = DraemNet(cfg.base_width)
        self.loss = DraemLoss()
        self.augmenter = PerlinAnomalyGenerator(anomaly_source_path=cfg.dtd_dir, blend_factor=tuple(cfg.beta))
        self.lr = cfg.lr
        self.max_epochs = cfg.epochs
        self.early_stopping_patience = cfg.early_stopping_patience

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def _synthetic_loss(self, images: torch.Tensor) -> torch.Tensor:
        augmented, mask = self.augmenter(images)
        reconstruction, prediction = self.model(augmented)
        return self.loss(images, reconstruction, mask, prediction)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._synthetic_loss(batch["image"])
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """val_loss on synthetic faults over held-out train normals: a per-epoch signal for early stopping / ASHA."""
        state = torch.random.get_rng_state()
        torch.manual_seed(10_000 + batch_idx)  # same synthetic faults every epoch, training RNG untouched
        with torch.no_grad():
            loss = self._synthetic_loss(batch["image"])
        torch.random.set_rng_state(state)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(batch["image"]))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Image score = max of the anomalous-class probability map (as anomalib's DRAEM)."""
        _, logits = self.model(images)
        return torch.softmax(logits, dim=1)[:, 1].amax(dim=(-2, -1))


def build(cfg: DraemConfig, transform: torch.nn.Module, seed: int = 0) -> DraemModule:
    return DraemModule(cfg, transform)
