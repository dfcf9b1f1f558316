"""PatchCore: anomalib's PatchcoreModel (timm features, coreset, kNN) in this platform's Lightning contract."""

from __future__ import annotations

import torch

from hdmap.models.backbones import load_pretrained
from hdmap.models.base import AnomalyModule
from hdmap.models.configs.patchcore import PatchCoreConfig
from hdmap.models.coreset import check_neighbours, subsample


class PatchCoreModule(AnomalyModule):
    """One pass over the fit images fills the memory bank; coreset subsampling runs at the end of fit."""

    def __init__(self, cfg: PatchCoreConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        # pre_trained=False: anomalib would otherwise download; weights are loaded below from local files.
        self.model = PatchcoreModel(layers=cfg.layers, backbone=cfg.backbone, pre_trained=False, num_neighbors=cfg.k)
        if cfg.pretrained:
            load_pretrained(self.model.feature_extractor.feature_extractor, cfg.backbone, cfg.weights)
        self.coreset_ratio = cfg.coreset_ratio
        self.seed = seed
        self.automatic_optimization = False

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.model.train()
        self.model(batch["image"])  # appends patch embeddings to model.embedding_store

    def on_train_end(self) -> None:
        bank = torch.vstack(self.model.embedding_store)
        self.model.embedding_store.clear()
        self.model.memory_bank = subsample(bank, self.coreset_ratio, self.seed)
        check_neighbours(self.model.num_neighbors, self.model.memory_bank)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(images).pred_score.reshape(-1)


def build(cfg: PatchCoreConfig, transform: torch.nn.Module, seed: int = 0) -> PatchCoreModule:
    return PatchCoreModule(cfg, transform, seed)
