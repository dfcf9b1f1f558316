"""What every model shares: the strict config base and the Lightning contract a trial relies on."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Config base: unknown keys are errors, so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """The model contract as the trial, the sweep runner and `hdmap models` see it; every model config derives from it.

    Fields (part of the trial id): `name` (the registry key) and `batch_size`. Class-level declarations (not fields):
    `per_epoch_metric` the metric logged once per epoch that ASHA may rank trials on (None: `sweep plan` refuses
    ASHA for the model) and `needs_pretrained_weights` whether the default config loads pretrained weights
    (`pretrained: false` then opts out). `outputs()` names what `predict_step` returns besides `score`; the trial
    checks the module keeps to it.
    """

    name: str
    batch_size: int = Field(8, ge=1)

    per_epoch_metric: ClassVar[str | None] = None
    needs_pretrained_weights: ClassVar[bool] = False
    shots_field: ClassVar[str | None] = None  # a few-shot model's field that fixes data.train_shots (`fit_shots`)
    checks_fit_set: ClassVar[bool] = False  # `fit_problem` has rules: `sweep plan` decodes the fit set for them

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        """Why the model cannot take (H, W) inputs, or None; checked at config validation, before any fit."""
        return None

    def data_defaults(self) -> dict:
        """`data` fields this model sets where the config leaves them unset: its native input (size, resize, ...)."""
        return {}

    def data_requirements(self) -> dict[str, tuple[Any, str]]:
        """`data` fields this model only works with: field -> (value, why). Unset, a field takes that value; set to
        another, the config is refused naming the field (so `sweep plan` says so, not a trial after loading data)."""
        return {}

    def fit_problem(self, fit_raw: np.ndarray, input_size: tuple[int, int]) -> str | None:
        """Why this config cannot be fitted on these raw fit images (N, 31, 95) at this input size, or None.

        For rules that need the fit set itself (how many images, how the p90 gate splits them): the trial checks
        them before building the model, and `sweep plan` decodes the fit set of configs with `checks_fit_set`."""
        return None

    def fit_shots(self) -> int | None:
        """Fit images this config fixes (the `shots_field` value: 0 = zero-shot), or None: data.train_shots decides."""
        return None if self.shots_field is None else getattr(self, self.shots_field)

    def outputs(self) -> frozenset[str]:
        """Keys of `predict_step`'s dict besides `score`: `gate` (0 cold / 1 warm), `severity`."""
        return frozenset()

    def max_epochs(self) -> int:
        """Upper bound on epochs a trial of this config trains (ASHA's max_t)."""
        return 1

    def weights_label(self) -> str | None:
        """What the results row records in `pretrained_weights`; None for models without pretrained parts."""
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

    def trainer_kwargs(self) -> dict:
        """Extra `lightning.Trainer` arguments this module needs (max_steps, gradient clipping); none by default."""
        return {}

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
        """What determines `base_features` besides the image (backbone, layers, weight hash); None = not cacheable."""
        return None

    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"score": self.score(batch["image"])}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SeededFaults:
    """Mixin (before AnomalyModule) for modules that draw synthetic training faults: one generator, seeded with the
    trial's seed at fit start so a run repeats, and never pickled so the module stays picklable."""

    seed: int = 0
    _fault_generator: torch.Generator | None = None

    def on_fit_start(self) -> None:
        self._fault_generator = torch.Generator().manual_seed(self.seed)

    @property
    def fault_generator(self) -> torch.Generator:
        if self._fault_generator is None:
            self.on_fit_start()
        return self._fault_generator

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fault_generator": None}


def conv_pool_blocks(in_channels: int, widths: tuple[int, ...]) -> tuple[list[torch.nn.Module], int]:
    """Conv 3x3 -> BatchNorm -> ReLU -> MaxPool(2) per width: the small CNNs of the classifier and severity heads."""
    layers: list[torch.nn.Module] = []
    c = in_channels
    for out in widths:
        layers += [
            torch.nn.Conv2d(c, out, 3, padding=1),
            torch.nn.BatchNorm2d(out),
            torch.nn.ReLU(inplace=True),
            torch.nn.MaxPool2d(2, ceil_mode=True),
        ]
        c = out
    return layers, c
