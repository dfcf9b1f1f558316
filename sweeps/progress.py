"""Live sweep display: done / running / failed / pending, ETA and best so far — not a wall of logs.

Display only: it reads Tune's events, never the store (compaction is the driver's, sweeps.runner._compacting)."""

from __future__ import annotations

import time

from ray.tune.progress_reporter import TrialProgressCallback
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text


class SweepProgress(TrialProgressCallback):
    """Takes the place of Tune's own TrialProgressCallback (Tune adds one unless there is one), which prints
    "Trial ... completed" even at verbose=0 for a trial that ends without a report (a recorded user error).
    Every hook that prints there is overridden here."""

    def __init__(self, total: int, skipped: int, live: bool = True, console: Console | None = None) -> None:
        self.total, self.skipped = total, skipped
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
        from sweeps.runner import stopped_by_scheduler

        if stopped_by_scheduler(result):
            self.pruned.add(trial.trial_id)
        auroc = result.get("image_auroc")
        if result.get("hdmap_done") and auroc is not None and (self.best is None or auroc > self.best[0]):
            self.best = (
                auroc,
                f"{result.get('hdmap_trial_id')} ({trial.config['trial']['model']['name']}, "
                f"{trial.config['trial']['data']['domain']})",
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        # neither its final report nor a scheduler's stop: the trial recorded a user error itself and returned
        failed = not (trial.last_result or {}).get("hdmap_done") and trial.trial_id not in self.pruned
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
        best = f"best image AUROC so far: {self.best[0]:.4f}, trial {self.best[1]}" if self.best else "best so far: -"
        return Group(counts, Text(best))

    def _eta(self, pending: int) -> str:
        finished = self.done + self.failed
        if not finished:
            return "-"
        rate = finished / (time.time() - self.t0)  # trials per second, concurrency included
        return f"{(pending + len(self.running)) / rate:,.0f}s"
