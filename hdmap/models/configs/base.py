"""The config contract every model shares: cheap to import (pydantic only), so a config validates without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np


class StrictModel(BaseModel):
    """Config base: unknown keys are errors, so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """The model contract as the trial, the sweep runner and `hdmap models` see it; every model config derives from it.

    Fields (part of the trial id): `name` (the registry key) and `batch_size`. Class-level declarations (not fields):
    `per_epoch_metric` the metric logged once per epoch that ASHA may rank trials on (None: `sweep plan` refuses
    ASHA for the model) and `needs_pretrained_weights` whether the default config loads pretrained weights
    (`pretrained: false` then opts out). `outputs()` names what `predict_step` returns besides `score`; the trial
    checks the module keeps to it.
    """

    name: str
    batch_size: int = Field(8, ge=1)

    per_epoch_metric: ClassVar[str | None] = None
    needs_pretrained_weights: ClassVar[bool] = False
    shots_field: ClassVar[str | None] = None  # a few-shot model's field that fixes data.train_shots (`fit_shots`)
    checks_fit_set: ClassVar[bool] = False  # `fit_problem` has rules: `sweep plan` decodes the fit set for them

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        """Why the model cannot take (H, W) inputs, or None; checked at config validation, before any fit."""
        return None

    def data_defaults(self) -> dict:
        """`data` fields this model sets where the config leaves them unset: its native input (size, resize, ...)."""
        return {}

    def data_requirements(self) -> dict[str, tuple[Any, str]]:
        """`data` fields this model only works with: field -> (value, why). Unset, a field takes that value; set to
        another, the config is refused naming the field (so `sweep plan` says so, not a trial after loading data)."""
        return {}

    def fit_problem(self, fit_raw: np.ndarray, input_size: tuple[int, int]) -> str | None:
        """Why this config cannot be fitted on these raw fit images (N, 31, 95) at this input size, or None.

        For rules that need the fit set itself (how many images, how the p90 gate splits them): the trial checks
        them before building the model, and `sweep plan` decodes the fit set of configs with `checks_fit_set`."""
        return None

    def fit_shots(self) -> int | None:
        """Fit images this config fixes (the `shots_field` value: 0 = zero-shot), or None: data.train_shots decides."""
        return None if self.shots_field is None else getattr(self, self.shots_field)

    def outputs(self) -> frozenset[str]:
        """Keys of `predict_step`'s dict besides `score`: `gate` (0 cold / 1 warm), `severity`."""
        return frozenset()

    def max_epochs(self) -> int:
        """Upper bound on epochs a trial of this config trains (ASHA's max_t)."""
        return 1

    def per_epoch_metrics(self) -> set[str]:
        """Metrics a trial of this config reports once per epoch (ASHA may rank on them): its own `per_epoch_metric`,
        and `val_synth_auroc` (hdmap.fit's callback) for a config that trains more than one epoch."""
        own = {self.per_epoch_metric} if self.per_epoch_metric else set()
        return own | ({"val_synth_auroc"} if self.max_epochs() > 1 else set())

    def weights_label(self) -> str | None:
        """What the results row records in `pretrained_weights`; None for models without pretrained parts."""
        return None
