"""DRAEM-SevNet: DRAEM on the gray HDMAP image plus a fault-severity subnetwork, trained on cut-paste faults.

- Reconstructive subnetwork (1 channel in/out) and discriminative subnetwork (original + reconstruction,
  2 channels): anomalib's DRAEM subnetworks.
- Severity subnetwork: small CNN -> global (avg + max) pooling -> MLP -> softplus (non-negative). Its
  input is chosen by `severity_input`, always starting from the discriminative map (2-class softmax):
  `discriminative_only` (2 ch), `with_original` (+ image, 3), `with_reconstruction` (+ reconstruction, 3),
  `with_error_map` (+ |image - reconstruction|, 3), `multi_modal` (+ all three, 5).
- Loss = w_recon * (L2 + SSIM) + w_seg * focal + w_sev * (MSE | SmoothL1 on the severity label);
  L2 / SSIM / focal are anomalib's `DraemLoss` pieces (with w_recon = w_seg = 1 the first two terms are
  exactly `DraemLoss`).
- Synthetic faults: `hdmap.data.faults.CutPasteFaults` (training uses the trial's patch settings).
- `val_loss` (per epoch, for early stopping / ASHA) is computed on the validation split of train
  normals with a *fixed* fault protocol and fixed loss weights — landscape patches, one patch,
  probability 0.5, weights 1 : 1 : 0.5, the trial's width range and severity_max, same faults every
  epoch — so trials that ablate patch shape, probability or loss weights stay comparable.
  `val_severity_mae` is logged alongside.
- Image score: max of the anomalous-class map (`score_combination=max`), or
  (1 - score_severity_weight) * max + score_severity_weight * predicted severity (`weighted_average`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hdmap.data.faults import CutPasteFaults
from hdmap.models.base import AnomalyModule, SeededFaults, conv_pool_blocks
from hdmap.models.configs.draem_sevnet import SEVERITY_INPUT_CHANNELS, DraemSevNetConfig
from hdmap.models.draem import DraemNet

_VAL_SEED = 10_000
_VAL_WEIGHTS = (1.0, 1.0, 0.5)


class SeverityNet(nn.Module):
    """Small CNN -> global avg + max pooling -> MLP -> softplus: one non-negative severity per image."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        layers, c = conv_pool_blocks(in_channels, (width, 2 * width, 4 * width))
        self.features = nn.Sequential(*layers[:-1])  # no pooling after the last block
        self.head = nn.Sequential(nn.Linear(2 * c, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1)
        return F.softplus(self.head(pooled)).squeeze(1)


class DraemSevNet(nn.Module):
    def __init__(self, base_width: int, severity_input: str, severity_width: int = 16) -> None:
        super().__init__()
        self.draem = DraemNet(base_width, channels=1)
        self.severity_input = severity_input
        self.severity_subnetwork = SeverityNet(SEVERITY_INPUT_CHANNELS[severity_input], severity_width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 1, H, W) -> (reconstruction (B,1,H,W), segmentation logits (B,2,H,W), severity (B,))."""
        reconstruction, logits = self.draem(images)
        parts = [torch.softmax(logits, dim=1)]
        mode = self.severity_input
        if mode in ("with_original", "multi_modal"):
            parts.append(images)
        if mode in ("with_reconstruction", "multi_modal"):
            parts.append(reconstruction)
        if mode in ("with_error_map", "multi_modal"):
            parts.append((images - reconstruction).abs())
        return reconstruction, logits, self.severity_subnetwork(torch.cat(parts, dim=1))


class DraemSevNetModule(SeededFaults, AnomalyModule):
    uses_validation = True

    def __init__(self, cfg: DraemSevNetConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        from anomalib.models.image.draem.loss import DraemLoss

        self.cfg = cfg
        self.model = DraemSevNet(cfg.base_width, cfg.severity_input, cfg.severity_width)
        self.draem_loss = DraemLoss()  # its l2_loss, ssim_loss and focal_loss are reused term by term
        self.severity_criterion = nn.MSELoss() if cfg.severity_loss == "mse" else nn.SmoothL1Loss()
        self.faults = CutPasteFaults(
            cfg.patch_width_range, cfg.patch_aspect, cfg.patch_count, cfg.anomaly_probability, cfg.severity_max
        )
        self.val_faults = CutPasteFaults(cfg.patch_width_range, "landscape", 1, 0.5, cfg.severity_max)
        self.seed = seed
        self.lr = cfg.lr
        self.max_epochs = cfg.epochs
        self.early_stopping_patience = cfg.early_stopping_patience

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def _losses(
        self,
        images: torch.Tensor,
        faults: CutPasteFaults,
        generator: torch.Generator,
        weights: tuple[float, float, float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (weighted loss, per-image |severity error|)."""
        fb = faults(images, generator)
        reconstruction, logits, severity = self.model(fb.image)
        parts = self.draem_loss
        recon = parts.l2_loss(reconstruction, images) + 2 * parts.ssim_loss(reconstruction, images)
        seg = parts.focal_loss(logits, fb.mask.squeeze(1).long())
        sev = self.severity_criterion(severity, fb.severity)
        w_recon, w_seg, w_sev = weights
        return w_recon * recon + w_seg * seg + w_sev * sev, (severity - fb.severity).abs()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg = self.cfg
        loss, _ = self._losses(batch["image"], self.faults, self.fault_generator, (cfg.w_recon, cfg.w_seg, cfg.w_sev))
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Fixed-protocol synthetic faults on held-out train normals, identical every epoch."""
        generator = torch.Generator().manual_seed(_VAL_SEED + batch_idx)
        with torch.no_grad():
            loss, sev_err = self._losses(batch["image"], self.val_faults, generator, _VAL_WEIGHTS)
        n = len(batch["image"])
        self.log("val_loss", loss, on_epoch=True, batch_size=n)
        self.log("val_severity_mae", sev_err.mean(), on_epoch=True, batch_size=n)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        _, logits, severity = self.model(batch["image"])
        anomaly_max = torch.softmax(logits, dim=1)[:, 1].amax(dim=(-2, -1))
        if self.cfg.score_combination == "max":
            score = anomaly_max
        else:
            w = self.cfg.score_severity_weight
            score = (1 - w) * anomaly_max + w * severity
        return {"score": score, "severity": severity}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_step({"image": images}, 0)["score"]


def build(cfg: DraemSevNetConfig, transform: nn.Module, seed: int = 0) -> DraemSevNetModule:
    return DraemSevNetModule(cfg, transform, seed)
