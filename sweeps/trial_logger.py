"""The driver's W&B logger: one run per trial the sweep finished, logged off the trials' slots.

Trials never touch W&B. The driver's `TrialLogger` (fed by a Tune callback when a trial finishes) reads the trial's
rows and scores back from the ResultStore -- so it works whichever node ran the trial -- and logs the run
(sweeps.tracking.log_trial) from a long-lived child process at low CPU priority (sweeps.wandb_process), which
imports wandb once per sweep (offline one child; online a few, as runs wait on uploads).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.tracking import WandbSettings, log_trial, resolve_mode
from sweeps.wandb_process import KILL_GRACE_S, LoggingProcess, failed

if TYPE_CHECKING:
    from sweeps.store import ResultStore

_ONLINE_LOGGERS = 4  # logging children of a sweep logging online (offline: one)


class TrialLogger:
    """Logs finished trials to W&B from the driver, off the trials' slots: `submit(trial_id)` returns at once;
    a background thread reads the trial from the store and hands it to a long-lived logging child (one; a few
    when online, where runs wait on uploads).

    Why not Ray Tune's own ``WandbLoggerCallback`` (ray/air/integrations/wandb.py, Ray 2.60): it logs Tune's
    reported result dicts, not the store's rows and per-image scores (the table and the histograms would have
    to travel through ``tune.report``); it starts two Ray actors per trial (a logging actor and a queue actor,
    each a fresh worker process that imports wandb) and opens the run at trial start, while the trial runs --
    on a small node they compete with the trials for CPU; its run id is Tune's trial id, new in every Tune
    run, so resuming or growing a sweep would duplicate runs instead of resuming ``run_id(sweep, trial)``; and
    its only bound is the wait at experiment end: a hung ``wandb.init`` holds its actor for the whole sweep.
    Reading from the store keeps one record of results; one child per sweep pays wandb's import once.
    """

    def __init__(self, settings: WandbSettings, store: ResultStore, sweep: str, run_dir: str | Path) -> None:
        self.settings, self.store, self.sweep = settings, store, sweep
        self.mode = resolve_mode(settings)
        self.dir = Path(settings.dir or run_dir).resolve()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._submitted: dict[str, None] = {}  # ordered set
        self._statuses: dict[str, str] = {}
        self._seconds: dict[str, float] = {}  # per run, reading the store included
        self._deadline: float | None = None
        # Offline runs are local writes: one child keeps up with trials. Online runs wait on uploads: a few in parallel.
        self._processes = [LoggingProcess() for _ in range(_ONLINE_LOGGERS if self.mode == "online" else 1)]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Spawn the logging children now (they import wandb at low priority while the first trials run); else
        the first `submit` does. Spawning happens on the caller's thread: see `_main_not_reimported`."""
        if self.mode != "disabled":
            for process in self._processes:
                with contextlib.suppress(Exception):
                    process.start(warm={"mode": self.mode, "dir": str(self.dir)})

    def submit(self, trial_id: str) -> None:
        """Queue a finished trial whose rows are in the store; never blocks for long, never raises."""
        if self.mode == "disabled" or trial_id in self._submitted or self._deadline is not None:
            return
        self._submitted[trial_id] = None
        self.start()  # a no-op while the children live; a fresh one after a hung run was killed
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._work, args=(p,), name="wandb-trial-logger", daemon=True)
                for p in self._processes
            ]
            for thread in self._threads:
                thread.start()
        self._queue.put(trial_id)

    def close(self, wait_s: float) -> LogTally:
        """Wait at most `wait_s` (plus the kill grace) for queued runs, stop the children, tally the statuses."""
        t0 = time.monotonic()
        self._deadline = t0 + max(0.0, wait_s)
        try:
            for _ in self._threads:
                self._queue.put(None)
            for thread in self._threads:
                thread.join(max(0.0, self._deadline - time.monotonic()) + 2 * KILL_GRACE_S + 1)
        finally:
            for process in self._processes:
                process.close()
        done = dict(self._statuses)
        statuses = {t: done.get(t, f"not logged: the sweep ended first (waited {wait_s:g}s)") for t in self._submitted}
        where = str(self.dir / "wandb") if self.mode == "offline" else f"project {self.settings.project}"
        return LogTally(
            mode=self.mode, where=where, statuses=statuses, seconds=dict(self._seconds), drain_s=time.monotonic() - t0
        )

    def _work(self, process: LoggingProcess) -> None:
        while (trial_id := self._queue.get()) is not None:
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is not None and left <= 0:
                continue  # tallied as not logged by `close`
            timeout_s = self.settings.timeout_s if left is None else min(self.settings.timeout_s, left)
            t0 = time.monotonic()
            self._statuses[trial_id] = self._log(trial_id, timeout_s, process)
            self._seconds[trial_id] = time.monotonic() - t0

    def _log(self, trial_id: str, timeout_s: float, process: LoggingProcess) -> str:
        try:
            results, scores = self.store.trial(trial_id)
            rows = results.to_pylist()
            return log_trial(
                self.settings,
                sweep=self.sweep,
                trial_id=trial_id,
                model=rows[0]["model"],
                config=json.loads(rows[0]["config_json"]),
                rows=rows,
                scores=scores,
                run_dir=self.dir,
                process=process,
                timeout_s=timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - a trial that cannot be read is one failed run, not a failed sweep
            return failed(exc)


@dataclass
class LogTally:
    """What the driver's TrialLogger did for a sweep: one status per submitted trial."""

    mode: str
    where: str  # the offline runs' folder, or the online project
    statuses: dict[str, str]
    seconds: dict[str, float]  # wall time per logged run (off the trials' slots)
    drain_s: float  # how long the end of the sweep waited for runs still queued

    @property
    def not_logged(self) -> dict[str, str]:
        return {t: s for t, s in self.statuses.items() if not s.startswith("logged")}

    def line(self) -> str:
        """E.g. 'W&B: 16 runs logged offline in runs/s/wandb, 0 failed'; the first failure's reason if any."""
        if self.mode == "disabled":
            return "W&B: disabled"
        bad = self.not_logged
        line = f"W&B: {len(self.statuses) - len(bad)} runs logged {self.mode} in {self.where}, {len(bad)} failed"
        if bad:
            trial_id, status = next(iter(bad.items()))
            line += f" (first: {trial_id}: {status})"
        return line
