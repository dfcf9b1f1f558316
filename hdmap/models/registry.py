"""The one model registry: name -> where its config class and its builder live. Adding a model = a config in
hdmap/models/configs/, a module in hdmap/models/, one line here.

Entries name locations, not objects: importing the registry imports no model. A model's config module (pydantic
only) is imported when its config is needed (validating a trial config), its Lightning module (torch, Lightning,
anomalib, timm, open_clip) only when a trial builds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from hdmap.models.configs.anomalib import ANOMALIB_MODELS, config_class_name
from hdmap.models.configs.base import ModelConfig


def _resolve(location: str):
    """`package.module:attribute` -> the attribute (imports the module)."""
    module, attribute = location.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ModelEntry:
    config_at: str  # "module:Class" of the config: the contract (fields, outputs, per-epoch metric, pretrained weights)
    build_at: str  # "module:function" (config, transform, seed) -> AnomalyModule

    @property
    def config(self) -> type[ModelConfig]:
        return _resolve(self.config_at)

    @property
    def build(self) -> Callable:
        return _resolve(self.build_at)

    @property
    def per_epoch_metric(self) -> str | None:
        return self.config.per_epoch_metric


def _entry(family: str, config: str, module: str | None = None) -> ModelEntry:
    """The config class `config` of hdmap/models/configs/<family>.py, built by `build` of hdmap/models/<module>.py
    (the family's own module unless named)."""
    return ModelEntry(f"hdmap.models.configs.{family}:{config}", f"hdmap.models.{module or family}:build")


MODELS: dict[str, ModelEntry] = {
    "patchcore": _entry("patchcore", "PatchCoreConfig"),
    "draem": _entry("draem", "DraemConfig"),
    "draem_sevnet": _entry("draem_sevnet", "DraemSevNetConfig"),
    "cutpaste": _entry("cutpaste", "CutPasteConfig"),
    "cutpaste_clf": _entry("cutpaste", "CutPasteClfConfig"),
    "draem_cutpaste": _entry("cutpaste", "DraemCutPasteConfig"),
    "ca_patchcore": _entry("patchcore_family", "CAPatchCoreConfig"),
    "cpd_patchcore": _entry("patchcore_family", "CPDPatchCoreConfig"),
    "winclip": _entry("winclip", "WinClipConfig"),
    "ca_winclip": _entry("winclip", "CAWinClipConfig"),
    "dinomaly": _entry("dinomaly", "DinomalyConfig"),
    "sev_dinomaly": _entry("dinomaly", "SevDinomalyConfig"),
    # anomalib's image models trained on normals only: one adapter, a config derived from each constructor
    **{name: _entry("anomalib", config_class_name(name), "anomalib_adapter") for name in ANOMALIB_MODELS},
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
