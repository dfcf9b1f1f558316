"""ASHA within each group of comparable trials: one Tune ASHAScheduler per group.

A trial may only be stopped by comparison with trials it competes with: for a search (`search.method: asha`), the
trials of its grid cell (model x axis values x seed), among which the search selects; for a grid's `scheduler: asha`,
the trials that differ only in swept model settings (same model, data and seed). One ASHAScheduler for the whole
sweep compares them all on the same rungs: a harder domain, whose figure runs worse, loses every trial to the easier
domains' cutoffs and ends with no trial run to the end (measured: benchmarks/RESULTS.md, search_vs_grid). Tune's
scheduler does the halving; this only routes each trial's events to its group's. Only the driver imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from hdmap.config import TrialConfig

if TYPE_CHECKING:
    from sweeps.spec import Plan


def comparable_paths(plan: Plan) -> list[str]:
    """The config paths in which trials of one ASHA group may differ (the rest of the config, `sweeps.spec.cell_key`,
    names the group): a search's searched paths; a grid's swept model settings, the model itself excepted."""
    if plan.spec.search.method == "asha":
        return plan.search_params()
    return [p for p in plan.axes if p.startswith("model.") and p != "model.name"]


class CellASHA(FIFOScheduler):
    """Tune's ASHAScheduler per group of comparable trials; trials run in FIFO order as with one."""

    def __init__(self, cell_of: dict[str, str], **asha: object) -> None:
        """`cell_of`: hdmap trial id -> its group's key (sweeps.spec.cell_key); `asha`: ASHAScheduler's arguments."""
        super().__init__()
        self.cell_of, self.asha = cell_of, asha
        self.cells: dict[str, ASHAScheduler] = {}
        self.trial_cell: dict[str, str] = {}  # Tune trial id -> cell key

    def _cell(self, trial) -> ASHAScheduler:
        key = self.trial_cell.get(trial.trial_id)
        if key is None:
            trial_id = TrialConfig.model_validate(trial.config["trial"]).trial_id
            key = self.trial_cell[trial.trial_id] = self.cell_of.get(trial_id, trial_id)
        if key not in self.cells:
            self.cells[key] = ASHAScheduler(**self.asha)
        return self.cells[key]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metric and mode are the spec's, given to every cell's scheduler

    def on_trial_add(self, tune_controller, trial) -> None:
        self._cell(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._cell(trial).on_trial_result(tune_controller, trial, self._known(result))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._cell(trial).on_trial_complete(tune_controller, trial, self._known(result))

    def _known(self, result: dict) -> dict:
        """The result without its metric where that is None (a diverged model has no figure): Tune's ASHA skips a
        result without the metric, and raises TypeError on a None one, which would stop the whole Tune run."""
        metric = self.asha["metric"]
        if metric in result and result[metric] is None:
            return {k: v for k, v in result.items() if k != metric}
        return result

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._cell(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(cell._num_stopped for cell in self.cells.values())
        return f"Using ASHA within each of {len(self.cells)} groups of comparable trials: num_stopped={stopped}"
