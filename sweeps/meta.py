"""sweep.json: the typed sweep-metadata record. The runner writes it, through the store (sweeps.store names the
file); the report and `hdmap report` read it.

It holds what the rows cannot say: the sweep's axes in spec order (the first value of each is the report's
baseline), the planned trial ids (so trials without a row show as missing), whether the last run finished
("running" is what a killed driver leaves behind; "failed": the run stopped on a full disk, `error` says where)
and the sweep's own W&B settings (`hdmap report` logs with them). Unknown keys in older files are ignored, never
parsed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeps.tracking import WandbSettings


class SweepMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    spec_hash: str | None = None
    source: str | None = None  # the spec file the sweep was planned from
    axes: dict[str, list[Any]] = Field(default_factory=dict)  # swept values in spec order
    n_trials: int | None = None
    trial_ids: list[str] | None = None
    state: Literal["running", "complete", "incomplete", "interrupted", "failed"] | None = None
    n_without_result: int | None = None  # planned trials without a row after the last run
    error: str | None = None  # why the last run failed (state "failed": a full disk), the line the user saw
    updated_at: dt.datetime | None = None
    wandb: WandbSettings = Field(default_factory=WandbSettings)

    @classmethod
    def of_plan(cls, plan, state: str, without_result: int | None = None, error: str | None = None) -> SweepMeta:
        """The record for a sweep's plan (sweeps.spec.Plan) in a given state."""
        return cls(
            name=plan.spec.name,
            spec_hash=plan.spec_hash,
            source=str(plan.source),
            axes=plan.axis_values,
            n_trials=len(plan.trials),
            trial_ids=[t.trial_id for t in plan.trials],
            state=state,
            n_without_result=without_result,
            error=error,
            updated_at=dt.datetime.now(dt.timezone.utc),
            wandb=plan.spec.tracking.wandb,
        )
