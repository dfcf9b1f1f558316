"""ASHA inside each grid cell of a search (`search.method: asha`): one Tune ASHAScheduler per cell.

A search runs its samples inside every grid cell (model x axis values x seed) and selects per cell, so a trial may
only be stopped by comparison with trials of its own cell. One ASHAScheduler for the whole sweep compares them all
on the same rungs: the cells of a harder domain, whose objective runs lower, lose every trial to the easier ones'
cutoffs and end with no trial run to the end (measured: benchmarks/RESULTS.md, search_vs_grid). Tune's scheduler
does the halving; this only routes each trial's events to its cell's. Only the driver imports this module.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from hdmap.config import TrialConfig


class CellASHA(FIFOScheduler):
    """Tune's ASHAScheduler per search cell; trials run in FIFO order as with one."""

    def __init__(self, cell_of: dict[str, str], **asha: object) -> None:
        """`cell_of`: hdmap trial id -> its cell's key (sweeps.spec.cell_key); `asha`: ASHAScheduler's arguments."""
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
        return self._cell(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._cell(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._cell(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(cell._num_stopped for cell in self.cells.values())
        return f"Using ASHA within each of {len(self.cells)} search cells: num_stopped={stopped}"
