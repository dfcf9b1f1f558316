"""`ca_patchcore` and `cpd_patchcore`: condition-aware PatchCore (the module: hdmap.models.patchcore_family)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from hdmap.models.configs.backbones import BackboneConfig
from hdmap.models.gating import bank_problem

if TYPE_CHECKING:
    import numpy as np

KNN_METHODS = ("faiss", "faiss_ivf", "torch")  # hdmap.models.knn.knn_search
GATINGS = ("mixed", "oracle", "p90", "random", "soft")


class CAPatchCoreConfig(BackboneConfig):
    name: Literal["ca_patchcore"] = "ca_patchcore"
    backbone: str = "vit_small_patch14_dinov2"
    layers: list[str] = ["blocks.8", "blocks.11"]
    feature_pool: int = Field(3, ge=1, description="average-pool kernel over each layer's grid (1 = none)")
    gating: Literal[GATINGS] = "mixed"  # type: ignore[valid-type]
    gate_threshold: float | None = Field(None, description="p90 threshold; None = calibrated on fit images")
    soft_temperature: float = Field(0.1, gt=0, description="soft gate: sigmoid scale, x train cluster gap")
    shots_per_bank: int | None = Field(None, ge=1, description="fit images per bank; None = all gated there")
    coreset_ratio: float = Field(1.0, gt=0, le=1)
    # 0, not null, means "no context": in results a null config value means "does not apply to this model"
    context_k: int | list[int] = Field(0, description="row-context half width(s), e.g. 2 or [2, 3]; 0 = no context")
    context_agg: Literal["mean", "max"] = "mean"
    context_include_self: bool = True
    k: int = Field(
        9, ge=1, description="PatchCore image-score reweighting neighbours (anomalib num_neighbors); 1 = max"
    )
    knn: Literal[KNN_METHODS] = "faiss"  # type: ignore[valid-type]
    ivf_nprobe: int = Field(8, ge=1, description="knn=faiss_ivf: k-means cells searched per query")
    batch_size: int = Field(8, ge=1)

    @field_validator("context_k")
    @classmethod
    def _positive_k(cls, v: int | list[int]) -> int | list[int]:
        ks = [] if v == 0 else [v] if isinstance(v, int) else v
        if isinstance(v, list) and not v:
            raise ValueError("context_k=[] : use 0 for no context")
        if any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"context_k={v!r}: positive, distinct half widths, e.g. 2 or [2, 3]")
        return v

    checks_fit_set = True

    def gates_fit_set(self) -> bool:
        """The p90 gate splits the fit images into banks: every mode but `mixed` over all fit images."""
        return self.gating != "mixed" or self.shots_per_bank is not None

    def fit_problem(self, fit_raw: np.ndarray, input_size: tuple[int, int]) -> str | None:
        if not self.gates_fit_set():
            return None

        gated = self.gating != "mixed"
        return bank_problem(fit_raw, self.gate_threshold, self.shots_per_bank, "model.shots_per_bank", gated)

    def context_ks(self) -> list[int]:
        return (
            [] if self.context_k == 0 else [self.context_k] if isinstance(self.context_k, int) else list(self.context_k)
        )

    def outputs(self) -> frozenset[str]:
        return frozenset() if self.gating == "mixed" else frozenset({"gate"})


class CPDPatchCoreConfig(CAPatchCoreConfig):
    """`cpd_patchcore`: the same model under the researcher's 006 name, row context on (default: the best
    multi-k concat [2, 3]); combinable with every gating mode."""

    name: Literal["cpd_patchcore"] = "cpd_patchcore"  # type: ignore[assignment]
    context_k: int | list[int] = Field([2, 3], description="row-context half width(s), e.g. 2 or [2, 3]")

    @field_validator("context_k")
    @classmethod
    def _has_context(cls, v: int | list[int]) -> int | list[int]:
        if v == 0:
            raise ValueError("cpd_patchcore needs row context (context_k >= 1); ca_patchcore is the model without it")
        return v
