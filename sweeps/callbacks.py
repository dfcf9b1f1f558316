"""The Tune callbacks and the stopper of a sweep's Tune run (sweeps.runner builds the Tuner with them): the live
display (done / running / failed / pending, ETA and the best objective so far: a validation figure unless the
spec names an oracle one -- not a wall of logs), the rows of trials the
scheduler pruned, the hand-over of finished trials to the W&B logger, the stop on a full disk. They read Tune's
events and the trials' reports (sweeps.result_keys), never the results in the store. Only the driver imports this
module (it imports ray).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ray.tune import Callback, Stopper
from ray.tune.progress_reporter import TrialProgressCallback
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from hdmap.config import TrialConfig
from hdmap.metric_catalogue import METRICS
from sweeps.result_keys import DISK_FULL, DONE, TRIAL_ID

if TYPE_CHECKING:
    from sweeps.spec import SearchSpec
    from sweeps.store import ResultStore
    from sweeps.trial_logger import TrialLogger


def stopped_by_scheduler(result: dict) -> bool:
    """A result a Tune callback's `on_trial_result` receives: Tune marks `done` the one on which the scheduler
    decided STOP (our trainable never reports `done` itself; a trial that returns reaches no `on_trial_result`)."""
    return bool(result.get("done")) and not result.get(DONE)


class SweepProgress(TrialProgressCallback):
    """Takes the place of Tune's own TrialProgressCallback (Tune adds one unless there is one), which prints
    "Trial ... completed" even at verbose=0 for a trial that ends without a report (a recorded user error).
    Every hook that prints there is overridden here."""

    def __init__(
        self, total: int, skipped: int, objective: SearchSpec, live: bool = True, console: Console | None = None
    ) -> None:
        self.total, self.skipped = total, skipped
        self.objective, self.maximise = objective.column, objective.mode == "max"
        label = METRICS[objective.column].label
        self.objective_label = f"ORACLE {label} (test labels)" if objective.oracle else f"{label} (no test labels)"
        self.running: set[str] = set()
        self.pruned: set[str] = set()  # stopped by the scheduler
        self.done = self.failed = self.retries = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.best: tuple[float, str] | None = None
        self.t0 = time.time()
        self.console = console or Console()
        self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False) if live else None

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment state: leave out the terminal."""
        return {k: v for k, v in self.__dict__.items() if k not in ("live", "console")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, live=None, console=None)

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self.render())
            self.live.__exit__(*exc)
            self.console.print()

    # -- Tune hooks ------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.started[trial.trial_id] = time.time()
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if stopped_by_scheduler(result):
            self.pruned.add(trial.trial_id)
        value = result.get(self.objective)
        if result.get(DONE) and value is not None and (self.best is None or self._better(value, self.best[0])):
            self.best = (
                value,
                f"{result.get(TRIAL_ID)} ({trial.config['trial']['model']['name']}, "
                f"{trial.config['trial']['data']['domain']})",
            )

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.maximise else value < best

    def on_trial_complete(self, iteration, trials, trial, **info):
        # neither its final report nor a scheduler's stop: the trial recorded a user error itself and returned
        failed = not (trial.last_result or {}).get(DONE) and trial.trial_id not in self.pruned
        self._finish(trial, failed=failed)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries += 1
        self.running.discard(trial.trial_id)
        self._refresh()

    def on_step_end(self, iteration, trials, **info):
        self._refresh()

    # -- display ---------------------------------------------------------------------------
    def _finish(self, trial, failed: bool) -> None:
        self.running.discard(trial.trial_id)
        if trial.trial_id in self.started:
            self.durations.append(time.time() - self.started.pop(trial.trial_id))
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self._refresh()

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self.render())

    def render(self) -> Group:
        pending = self.total - self.done - self.failed - len(self.running)
        elapsed = time.time() - self.t0
        counts = Text.from_markup(
            f"[green]done {self.done}[/] | [cyan]running {len(self.running)}[/] | [red]failed {self.failed}[/] | "
            f"pending {pending} | retries {self.retries} | already in store {self.skipped} | "
            f"elapsed {elapsed:,.0f}s | ETA {self._eta(pending)}"
        )
        best = f"{self.best[0]:.4f}, trial {self.best[1]}" if self.best else "-"
        best = f"best {self.objective_label} so far: {best}"
        return Group(counts, Text(best))

    def _eta(self, pending: int) -> str:
        finished = self.done + self.failed
        if not finished:
            return "-"
        rate = finished / (time.time() - self.t0)  # trials per second, concurrency included
        return f"{(pending + len(self.running)) / rate:,.0f}s"


class PruneRecorder(Callback):
    """A trial the scheduler stopped gets a 'pruned' row.

    Not decided in `on_trial_complete`: a trial that recorded its own user error and returned also completes
    without its final report. Trials cut short by Ctrl-C or a dead driver get no row and run again on resume.
    """

    def __init__(self, store: ResultStore, sweep: str, spec_hash: str) -> None:
        self.store: ResultStore | None = store
        self.sweep, self.spec_hash = sweep, spec_hash

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment state: the store (its URI may hold credentials) stays out."""
        return {**self.__dict__, "store": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.store is None or not stopped_by_scheduler(result):
            return
        reports = result.get("training_iteration", 0)
        epoch = result.get("epoch")  # the 0-based epoch of the report the scheduler stopped it on
        self.store.write_failure(
            TrialConfig.model_validate(trial.config["trial"]),
            f"stopped early by the scheduler after {reports} report{'' if reports == 1 else 's'}",
            self.sweep,
            self.spec_hash,
            status="pruned",
            epochs_run=None if epoch is None else epoch + 1,
        )


class WandbRecorder(Callback):
    """A trial that finished with its final report is handed to the driver's W&B logger, which reads it from the
    store in the background (sweeps.trial_logger.TrialLogger): the trial's slot is already free."""

    def __init__(self, logger: TrialLogger) -> None:
        self.logger: TrialLogger | None = logger

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment state: the logger (threads, processes) stays out."""
        return {**self.__dict__, "logger": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if self.logger is not None and result.get(DONE):
            self.logger.submit(result[TRIAL_ID])


class DiskFullStop(Stopper):
    """A trial that found the disk full stops the whole run, like Ctrl-C (running trials end without a row and run
    again on resume): every trial after it would fail the same way, and its failure row could not be written either.
    Its own result is not marked stopped, so PruneRecorder does not take it for a pruned trial."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.full = self.full or bool(result.get(DISK_FULL))
        return False

    def stop_all(self) -> bool:
        return self.full
