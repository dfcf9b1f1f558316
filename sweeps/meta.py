"""sweep.json: the typed sweep-metadata record. The runner writes it, through the store (sweeps.store names the
file); the report and `hdmap report` read it.

It holds what the rows cannot say: the sweep's axes in spec order (the first value of each is the report's
baseline), the planned trial ids (so trials without a row show as missing; an optuna search's are chosen as it runs:
none, only their number), whether the last run finished
("running" is what a killed driver leaves behind; "failed": the run stopped on a full disk, `error` says where)
the sweep's own W&B settings (`hdmap report` logs with them) and, for a search, what was searched and on which
objective. Unknown keys in older files are ignored, never
parsed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeps.tracking import WandbSettings


class SearchMeta(BaseModel):
    """How the sweep searched inside each grid cell (sweeps.spec.SearchSpec), for the report: which config paths were
    searched, and the objective the searcher was given (`oracle`: a test-label figure, so every pick is an ORACLE)."""

    model_config = ConfigDict(extra="ignore")

    method: Literal["random", "optuna", "asha"]
    objective: str  # a results column, e.g. val_synth_auroc
    mode: Literal["max", "min"]
    oracle: bool = False
    params: list[str] = Field(default_factory=list)  # searched config paths (every model's), spec order
    num_samples: int
    seed: int = 0


class SweepMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    spec_hash: str | None = None
    source: str | None = None  # the spec file the sweep was planned from
    axes: dict[str, list[Any]] = Field(default_factory=dict)  # swept values in spec order
    n_trials: int | None = None
    trial_ids: list[str] | None = None  # None for a search that chooses its trials as it runs (optuna)
    state: Literal["running", "complete", "incomplete", "interrupted", "failed"] | None = None
    n_without_result: int | None = None  # planned trials without a row after the last run
    error: str | None = None  # why the last run failed (state "failed": a full disk), the line the user saw
    updated_at: dt.datetime | None = None
    wandb: WandbSettings = Field(default_factory=WandbSettings)
    search: SearchMeta | None = None  # None: a grid, every config of the spec ran

    @classmethod
    def of_plan(cls, plan, state: str, without_result: int | None = None, error: str | None = None) -> SweepMeta:
        """The record for a sweep's plan (sweeps.spec.Plan) in a given state."""
        return cls(
            name=plan.spec.name,
            spec_hash=plan.spec_hash,
            source=str(plan.source),
            axes=plan.axis_values,
            n_trials=plan.n_trials,
            trial_ids=None if plan.cells else [t.trial_id for t in plan.trials],
            state=state,
            n_without_result=without_result,
            error=error,
            updated_at=dt.datetime.now(dt.timezone.utc),
            wandb=plan.spec.tracking.wandb,
            search=plan.search_meta(),
        )
