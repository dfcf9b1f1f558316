"""DRAEM: anomalib's reconstructive + discriminative subnetworks and loss, Perlin-noise synthetic faults.

anomalib's Lightning `Draem` downloads the DTD texture set at construction when `dtd_dir` is
missing; this module never constructs it. Textures are used only when `dtd_dir` names an
existing local folder; otherwise anomalies are Perlin noise, which needs no download.
"""

from __future__ import annotations

import torch

from hdmap.models.base import AnomalyModule
from hdmap.models.configs.draem import DraemConfig


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
