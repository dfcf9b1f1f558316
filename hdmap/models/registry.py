"""The one model registry: name -> (config class, builder). Adding a model = one module + one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hdmap.models import anomalib_adapter, cutpaste, dinomaly, draem, draem_sevnet, patchcore, patchcore_family, winclip
from hdmap.models.base import ModelConfig


@dataclass(frozen=True)
class ModelEntry:
    config: type[ModelConfig]  # the contract: fields, outputs, per-epoch metric, pretrained weights (hdmap.models.base)
    build: Callable  # (config, transform, seed) -> AnomalyModule

    @property
    def per_epoch_metric(self) -> str | None:
        return self.config.per_epoch_metric


MODELS: dict[str, ModelEntry] = {
    "patchcore": ModelEntry(patchcore.PatchCoreConfig, patchcore.build),
    "draem": ModelEntry(draem.DraemConfig, draem.build),
    "draem_sevnet": ModelEntry(draem_sevnet.DraemSevNetConfig, draem_sevnet.build),
    "cutpaste": ModelEntry(cutpaste.CutPasteConfig, cutpaste.build),
    "cutpaste_clf": ModelEntry(cutpaste.CutPasteClfConfig, cutpaste.build),
    "draem_cutpaste": ModelEntry(cutpaste.DraemCutPasteConfig, cutpaste.build),
    "ca_patchcore": ModelEntry(patchcore_family.CAPatchCoreConfig, patchcore_family.build),
    "cpd_patchcore": ModelEntry(patchcore_family.CPDPatchCoreConfig, patchcore_family.build),
    "winclip": ModelEntry(winclip.WinClipConfig, winclip.build),
    "ca_winclip": ModelEntry(winclip.CAWinClipConfig, winclip.build),
    "dinomaly": ModelEntry(dinomaly.DinomalyConfig, dinomaly.build),
    "sev_dinomaly": ModelEntry(dinomaly.SevDinomalyConfig, dinomaly.build),
    # anomalib's image models trained on normals only: one adapter, a config derived from each constructor
    **{name: ModelEntry(config, anomalib_adapter.build) for name, (config, _) in anomalib_adapter.ADAPTED.items()},
}


def model_catalog() -> list[dict]:
    """What `hdmap models` prints: each model's config fields with defaults, per-epoch metric, weights, outputs."""
    rows = []
    for name, entry in MODELS.items():
        config = entry.config
        defaults = config()
        rows.append(
            {
                "model": name,
                "fields": {key: getattr(defaults, key) for key in config.model_fields if key != "name"},
                "per_epoch_metric": config.per_epoch_metric,
                "needs_pretrained_weights": config.needs_pretrained_weights,
                "outputs": sorted({"score"} | defaults.outputs()),
                "doc": (config.__doc__ or "").strip().splitlines()[0] if config.__doc__ else "",
            }
        )
    return rows
