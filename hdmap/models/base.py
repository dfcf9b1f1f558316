"""What every model shares: the strict config base and the Lightning contract a trial relies on."""

from __future__ import annotations

import lightning as L
import torch
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Config base: unknown keys are errors, so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """Base of every model's config: the checks a trial runs before it loads data or builds anything."""

    name: str  # each model sets its own: first in error messages and result columns

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        """Why the model cannot take (H, W) inputs, or None; checked at config validation, before any fit."""
        return None


class AnomalyModule(L.LightningModule):
    """The contract between a model and `hdmap.trial`.

    - Batches are dicts: `raw` (B, 31, 95) float32 HDMAP arrays, `label`, `index`.
    - The trial's one transform runs here, on the device, for fit *and* predict, so a model can
      never see differently resized images in training and evaluation.
    - `predict_step` returns `score` (B,) — higher is more anomalous — and optionally `gate`
      (B,) of 0 = cold / 1 = warm and `severity` (B,).
    - `max_epochs` and `uses_validation` tell the trial how to configure its Trainer.
    """

    max_epochs: int = 1
    uses_validation: bool = False
    early_stopping_patience: int | None = None  # epochs without val_loss improvement; None = train all epochs

    def __init__(self, transform: torch.nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch["image"] = self.transform(batch["raw"])
        return batch

    def configure_callbacks(self) -> list:
        """Early stopping on val_loss, which models compute on held-out train normals — never on test."""
        from lightning.pytorch.callbacks import EarlyStopping

        patience = self.early_stopping_patience
        return [EarlyStopping(monitor="val_loss", mode="min", patience=patience)] if patience else []

    # ---- the feature cache (hdmap.features): models whose fit and scoring start from frozen backbone
    # features declare them here; the trial then computes them once per data split and passes them in
    # batches as `features`. `disk_cache` (set by the trial, or None) also memoises other pure work.
    disk_cache = None

    def feature_key(self) -> dict | None:
        """What determines `base_features` besides the input image (backbone, layers, weight hash); None = not cacheable."""
        return None

    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"score": self.score(batch["image"])}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
