"""The Lightning contract a trial relies on, and what model modules share (configs: hdmap.models.configs.base)."""

from __future__ import annotations

import lightning as L
import torch


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
