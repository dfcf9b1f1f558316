"""The worker side of a sweep: what runs inside each Tune trial, on whichever node Ray placed it.

`trial_trainable` is the Tune function trainable: it validates the config it received (plain data, never a
built module, so nothing unpicklable crosses processes), runs `hdmap.trial.run_trial`, writes the trial's rows
to the store and reports a final result (its keys: sweeps.result_keys). The driver (sweeps.runner) plans, schedules
and records the rest, W&B included: the trial's slot is free as soon as its rows are in the store.
"""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import dataclass

from hdmap.config import TrialConfig
from hdmap.errors import UserError, disk_full
from sweeps.result_keys import DISK_FULL, DONE, TRIAL_ID
from sweeps.store import ResultStore


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares, from the driver (through tune.with_parameters, not the trial's config)."""

    sweep: str
    spec_hash: str
    timeout_s: float | None = None  # the spec's trial_timeout_s: the watchdog's bound
    per_epoch_metric: str | None = None  # reported to Tune each epoch, for the scheduler (ASHA); None: FIFO
    feature_cache: str | None = None  # the sweep's shared feature cache (hdmap.cache); None: off
    objective: str = "val_synth_auroc"  # the results column the final report carries for a searcher and the progress


def trial_trainable(config: dict, sweep_dir: str, context: TrialContext) -> None:
    """One Tune trial = `hdmap.trial.run_trial` + its rows written to the store (the driver logs it to W&B).

    `config` holds the trial config alone (it is what Tune writes to its experiment state); `sweep_dir` and
    `context` come apart from it (tune.with_parameters): the store's URI may carry credentials. A full disk is
    reported, not raised: the driver stops the sweep (sweeps.runner), as no retry on it can succeed and the failure
    row could not be written either."""
    from ray import tune

    try:
        final = _run_and_record(config["trial"], sweep_dir, context)
    except Exception as exc:
        if (full := disk_full(exc)) is None:
            raise
        final = {DISK_FULL: str(full)}
    if final is not None:
        tune.report(final)


def _run_and_record(trial: dict, sweep_dir: str, context: TrialContext) -> dict | None:
    """The trial and its rows in the store; the final report for Tune, or None when it ends without one."""
    from hdmap.trial import import_trial_code, run_trial

    cfg = TrialConfig.model_validate(trial)
    import_trial_code(cfg)  # the model's imports too (the registry imports a model's module when it is built)
    _freeze_imported_objects()
    if cfg.runtime.feature_cache is None or context.feature_cache is None:  # a spec's own cache dir is kept
        cfg.runtime.feature_cache = context.feature_cache
    store = ResultStore(sweep_dir)
    store.mark_attempt(cfg.trial_id)
    watchdog = _Watchdog(context.timeout_s, store, cfg.trial_id)
    metric = context.per_epoch_metric
    callbacks = [_EpochReporter(metric)] if metric else []
    try:
        result = run_trial(cfg, callbacks=callbacks)
    except UserError as exc:  # a retry cannot fix the config, the data or the weights: record once, end the trial
        store.write_failure(cfg, exc, context.sweep, context.spec_hash)
        return None  # no final report: the trial ends without error for Tune, which never retries it
    finally:
        watchdog.cancel()
        # Lightning's trainer <-> module cycle keeps the finished trial's model (a ViT-B CLIP: ~1 GB) until Python's
        # cycle collector runs, and a worker runs trial after trial: free it now (measured: RSS +1 GB per trial)
        gc.collect()
    store.write_trial(result, context.sweep, context.spec_hash)
    first = result.rows[0]
    final = {
        DONE: True,
        TRIAL_ID: cfg.trial_id,
        "image_auroc": first.get("image_auroc"),
        "accuracy": first.get("accuracy"),
        context.objective: _mean([row.get(context.objective) for row in result.rows]),
    }
    if metric and callbacks[0].last is not None:  # the scheduler ranks the final result too (None: it cannot)
        final[metric] = callbacks[0].last
    return final


def _mean(values: list) -> float | None:
    """The trial's figure over its rows (one per test domain), None where no row has it."""
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _freeze_imported_objects() -> None:
    """Once per worker process: hide what the imports created (torch, Lightning, anomalib: ~650,000 objects
    that live as long as the process) from the cycle collector, so the full `gc.collect()` after each trial scans
    only what trials created (measured: 0.30 s -> 0.002 s per trial, with the slot held)."""
    if not gc.get_freeze_count():  # later trials: already frozen (freezing again would pin their garbage)
        gc.collect()
        gc.freeze()


class _EpochReporter:
    """Lightning callback: report the per-epoch validation metric to Tune (ASHA decides on it)."""

    def __new__(cls, metric: str):
        import lightning as L
        from ray import tune

        class Reporter(L.Callback):
            last: float | None = None

            def on_validation_epoch_end(self, trainer, module) -> None:
                if module.uses_validation:
                    self._report(trainer)

            def on_train_epoch_end(self, trainer, module) -> None:
                if not module.uses_validation:  # models without a validation pass rank on a training metric
                    self._report(trainer)

            def _report(self, trainer) -> None:
                value = trainer.callback_metrics.get(metric)
                if value is not None and not trainer.sanity_checking:
                    self.last = float(value)
                    tune.report({metric: self.last, "epoch": trainer.current_epoch})

        return Reporter()


class _Watchdog:
    """Hard per-trial timeout: leave a note for the driver, then end the worker process.

    A Python thread cannot be interrupted, and Tune runs the trainable off the main thread, so the
    only reliable stop is the process itself; Tune sees a failed trial and retries it (max_failures).
    """

    def __init__(self, timeout_s: float | None, store: ResultStore, trial_id: str) -> None:
        self.timer = None
        if timeout_s:

            def expire() -> None:
                store.mark_timeout(trial_id, timeout_s)
                os._exit(3)

            self.timer = threading.Timer(timeout_s, expire)
            self.timer.daemon = True
            self.timer.start()

    def cancel(self) -> None:
        if self.timer:
            self.timer.cancel()
