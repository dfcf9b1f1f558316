"""The one model registry: name -> (config class, builder). Adding a model = one module + one line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hdmap.models import draem, patchcore, patchcore_family
from hdmap.models import draem_sevnet


@dataclass(frozen=True)
class ModelEntry:
    config: type
    build: Callable  # (config, transform, seed) -> AnomalyModule
    per_epoch_metric: str | None = None  # logged each validation epoch: early stopping / ASHA can use it


MODELS: dict[str, ModelEntry] = {
    "patchcore": ModelEntry(patchcore.PatchCoreConfig, patchcore.build),
    "draem": ModelEntry(draem.DraemConfig, draem.build, per_epoch_metric="val_loss"),
    "draem_sevnet": ModelEntry(draem_sevnet.DraemSevNetConfig, draem_sevnet.build, per_epoch_metric="val_loss"),
    "ca_patchcore": ModelEntry(patchcore_family.CAPatchCoreConfig, patchcore_family.build),
    "cpd_patchcore": ModelEntry(patchcore_family.CPDPatchCoreConfig, patchcore_family.build),
}
