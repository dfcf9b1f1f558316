"""A search that chooses its trials as it runs (search.method optuna): its grid cells' trials found in the store.

Resume is by the store, as for every sweep: a cell's stored trials (a trial belongs to the cell whose config it is,
apart from the searched values: `Plan.cell_of`) count toward its num_samples and re-seed its searcher
(sweeps.search). The runner reads what is left and what ran from here, `sweep plan` what is done. No Ray, no Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps.preflight import FINISHED
from sweeps.spec import Plan, SearchCell

if TYPE_CHECKING:
    from sweeps.store import ResultStore


@dataclass(frozen=True)
class CellTrial:
    """A trial of a cell in the store."""

    trial_id: str
    values: dict[str, Any]  # the searched paths' values
    status: str  # ok | pruned | error
    reward: float | None  # the objective's mean over the test domains, as its final Tune report carried it


@dataclass
class CellHistory:
    """A cell and its trials in the store whose searched values lie in its space (others neither count nor inform)."""

    cell: SearchCell
    trials: list[CellTrial] = field(default_factory=list)

    def done(self, retry_failed: bool) -> list[CellTrial]:
        """The trials not run again (like `sweeps.runner.plan_todo`): finished, and failed unless retried."""
        statuses = FINISHED | (set() if retry_failed else {"error"})
        return [t for t in self.trials if t.status in statuses]

    def left(self, retry_failed: bool) -> int:
        """Trials the cell has still to run: a failed trial counts as a sample (unless retried)."""
        return max(0, self.cell.budget - len(self.done(retry_failed)))


def cell_histories(plan: Plan, store: ResultStore) -> list[CellHistory]:
    """Every cell of the plan with its stored trials, in plan order; [] for a plan without cells."""
    if not plan.cells:
        return []
    histories = [CellHistory(cell) for cell in plan.cells]
    objective = plan.spec.search.column
    table = store.results(["trial_id", "status", "config_json", objective])
    per_trial = table.group_by("trial_id", use_threads=False).aggregate(
        [("status", "first"), ("config_json", "first"), (objective, "mean")]  # the mean skips nulls, as the worker
    )
    columns = ["trial_id", "status_first", "config_json_first", f"{objective}_mean"]
    for trial_id, status, config_json, reward in zip(*(per_trial[c].to_pylist() for c in columns)):
        found = plan.cell_of(config_json) if config_json else None
        if found is None:
            continue
        history = histories[found[0]]
        values = history.cell.values_of(found[1])
        if history.cell.contains(values):
            history.trials.append(CellTrial(trial_id, values, status, reward))
    return histories
