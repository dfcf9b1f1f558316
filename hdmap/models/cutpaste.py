"""The paper's own methods, trained on scaled cut-paste faults (`hdmap.data.faults.CutPasteFaults`).

- `cutpaste_clf` ("Scaled CutPaste"): a small CNN classifier trained to tell normals from cut-paste images;
  image score = fault probability.
- `cutpaste` (the paper's unscaled "CutPaste" baseline, after Li et al. 2021): the same classifier trained on the
  original augmentation, a rectangle copied as it is to another place (no normalising, no amplitude). The paper's
  own CutPaste implementation is not in the prior work; this is the augmentation with our classifier.
- `draem_cutpaste` (the paper's proposed method): DRAEM's reconstructive + discriminative subnetworks
  (`hdmap.models.draem.DraemNet`, shared with `draem` and `draem_sevnet`) trained on the same faults instead of
  Perlin noise; loss = L2 + 2 SSIM (reconstruction) + focal(alpha) (segmentation); score = max of the fault map.

A fault (the researcher's synthetic_generator_v2): cut a `cut_w` x `cut_h` rectangle, normalise it by its own max
|value|, scale by a ~ U(a_fault_start, a_fault_range_end) in model-input units (use `data.normalization: none` for
raw HDMAP units) and add it at a non-overlapping place, with probability `anomaly_probability`.
Defaults are the paper's setting: batch 64, lr 5e-4, 3 epochs, StepLR(step 1, gamma 0.1), cut_w [2, 127],
cut_h [4, 8] (at the paper's 128 x 128 input: set `data.image_size: [128, 128]`).
`val_loss` (per epoch; ASHA / early stopping) is the training loss on held-out train normals with the same faults
every epoch (fixed seed), so it moves only with the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hdmap.data.faults import CutPasteFaults
from hdmap.models.base import AnomalyModule, SeededFaults, conv_pool_blocks
from hdmap.models.configs.cutpaste import CutPasteClfConfig, CutPasteConfig, CutPasteTrainingConfig, DraemCutPasteConfig
from hdmap.models.draem import DraemNet

_VAL_SEED = 10_000


class _ScaledCutPasteModule(SeededFaults, AnomalyModule):
    """Training on faults drawn fresh each step (one seeded generator), val_loss on fixed faults, Adam + StepLR."""

    uses_validation = True

    def __init__(self, cfg: CutPasteTrainingConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        self.cfg = cfg
        self.faults = cfg.faults()
        self.val_faults = cfg.faults(probability=0.5)
        self.seed = seed
        self.max_epochs = cfg.epochs
        self.early_stopping_patience = cfg.early_stopping_patience

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.cfg.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, self.cfg.step_size, self.cfg.gamma)]

    def loss(self, images: torch.Tensor, generator: torch.Generator, faults: CutPasteFaults) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch["image"], self.fault_generator, self.faults)
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            loss = self.loss(batch["image"], torch.Generator().manual_seed(_VAL_SEED + batch_idx), self.val_faults)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(batch["image"]))


class SmallCNN(nn.Module):
    """4 conv blocks (conv-BN-ReLU-pool, width x2 each) -> global avg + max pooling -> one fault logit."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        layers, c = conv_pool_blocks(in_channels, (width, 2 * width, 4 * width, 8 * width))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1)).squeeze(1)


class CutPasteClfModule(_ScaledCutPasteModule):
    def __init__(self, cfg: CutPasteClfConfig | CutPasteConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(cfg, transform, seed)
        self.model = SmallCNN(transform.channels, cfg.width)

    def loss(self, images: torch.Tensor, generator: torch.Generator, faults: CutPasteFaults) -> torch.Tensor:
        fb = faults(images, generator)
        faulted = (fb.mask.flatten(1).amax(dim=1) > 0).float()
        return F.binary_cross_entropy_with_logits(self.model(fb.image), faulted)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images))


class DraemCutPasteModule(_ScaledCutPasteModule):
    def __init__(self, cfg: DraemCutPasteConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(cfg, transform, seed)
        from kornia.losses import FocalLoss, SSIMLoss  # what anomalib's DraemLoss is made of, with alpha exposed

        self.model = DraemNet(cfg.base_width, channels=transform.channels)
        self.focal = FocalLoss(alpha=cfg.focal_alpha, reduction="mean")
        self.ssim = SSIMLoss(window_size=11)

    def loss(self, images: torch.Tensor, generator: torch.Generator, faults: CutPasteFaults) -> torch.Tensor:
        fb = faults(images, generator)
        reconstruction, logits = self.model(fb.image)
        recon = F.mse_loss(reconstruction, images) + 2 * self.ssim(reconstruction, images)
        return recon + self.focal(logits, fb.mask.squeeze(1).long())

    def score(self, images: torch.Tensor) -> torch.Tensor:
        _, logits = self.model(images)
        return torch.softmax(logits, dim=1)[:, 1].amax(dim=(-2, -1))


def build(cfg: CutPasteTrainingConfig, transform: nn.Module, seed: int = 0) -> _ScaledCutPasteModule:
    module = {"cutpaste": CutPasteClfModule, "cutpaste_clf": CutPasteClfModule, "draem_cutpaste": DraemCutPasteModule}
    module = module[cfg.name]
    return module(cfg, transform, seed)
