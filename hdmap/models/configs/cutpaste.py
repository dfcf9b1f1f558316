"""`cutpaste`, `cutpaste_clf`, `draem_cutpaste`: the cut-paste-trained models (module: hdmap.models.cutpaste)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from hdmap.data.fault_shapes import patch_range_problem
from hdmap.models.configs.draem import TrainedModelConfig

if TYPE_CHECKING:
    from hdmap.data.faults import CutPasteFaults


class CutPasteTrainingConfig(TrainedModelConfig):
    """The knobs every cut-paste-trained model shares: the cut sizes, how often, and the schedule."""

    epochs: int = Field(3, ge=1)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    cut_w: tuple[int, int] = Field((2, 127), description="cut width range in model-input pixels (lo, hi)")
    cut_h: tuple[int, int] = Field((4, 8), description="cut height range in model-input pixels (lo, hi)")
    anomaly_probability: float = Field(0.5, ge=0, le=1)
    step_size: int = Field(1, ge=1, description="StepLR: epochs between lr decays")
    gamma: float = Field(0.1, gt=0, le=1, description="StepLR: lr factor per decay")

    @model_validator(mode="after")
    def _ranges(self) -> CutPasteTrainingConfig:
        for field in ("cut_w", "cut_h"):
            lo, hi = getattr(self, field)
            if not 1 <= lo <= hi:
                raise ValueError(f"{field}={[lo, hi]}: need 1 <= lo <= hi")
        return self

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        return patch_range_problem("cut_w", self.cut_w, size[1], "width") or patch_range_problem(
            "cut_h", self.cut_h, size[0], "height"
        )

    def faults(self, probability: float | None = None) -> CutPasteFaults:
        """The original CutPaste: the patch copied as it is."""
        from hdmap.data.faults import CutPasteFaults  # torch: only the module draws faults

        p = self.anomaly_probability if probability is None else probability
        return CutPasteFaults(self.cut_w, anomaly_probability=p, patch_height_range=self.cut_h, scaled=False)


class ScaledCutPasteConfig(CutPasteTrainingConfig):
    """The paper's scaled cut-paste: the patch normalised by its peak and added with an amplitude a."""

    a_fault_start: float = Field(0.0, ge=0, description="fault amplitude a ~ U(a_fault_start, a_fault_range_end)")
    a_fault_range_end: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _amplitudes(self) -> ScaledCutPasteConfig:
        if self.a_fault_start > self.a_fault_range_end:
            raise ValueError(f"a_fault_start={self.a_fault_start} > a_fault_range_end={self.a_fault_range_end}")
        return self

    def faults(self, probability: float | None = None) -> CutPasteFaults:
        from hdmap.data.faults import CutPasteFaults  # torch: only the module draws faults

        p = self.anomaly_probability if probability is None else probability
        return CutPasteFaults(
            self.cut_w,
            anomaly_probability=p,
            patch_height_range=self.cut_h,
            severity_range=(self.a_fault_start, self.a_fault_range_end),
        )


class CutPasteClfConfig(ScaledCutPasteConfig):
    name: Literal["cutpaste_clf"] = "cutpaste_clf"
    width: int = Field(32, ge=4, description="channels of the first conv block (x2 per block, 4 blocks)")
    batch_size: int = Field(128, ge=1)  # the researcher's CutPaste Clf runs (docs/research-facts.md#hyperparameters)


class CutPasteConfig(CutPasteTrainingConfig):
    """`cutpaste`: the unscaled baseline; the classifier and schedule of `cutpaste_clf`, no amplitude knobs."""

    name: Literal["cutpaste"] = "cutpaste"
    width: int = Field(32, ge=4, description="channels of the first conv block (x2 per block, 4 blocks)")
    batch_size: int = Field(128, ge=1)


class DraemCutPasteConfig(ScaledCutPasteConfig):
    name: Literal["draem_cutpaste"] = "draem_cutpaste"
    base_width: int = Field(128, ge=8, description="reconstructive width (DRAEM's 128); discriminative gets half")
    focal_alpha: float = Field(0.5, ge=0, le=1, description="focal-loss weight of the fault class (1.0 collapses)")
