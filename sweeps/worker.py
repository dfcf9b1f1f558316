"""The worker side of a sweep: what runs inside each Tune trial, on whichever node Ray placed it.

`trial_trainable` is the Tune function trainable: it validates the config it received (plain data, never a
built module, so nothing unpicklable crosses processes), runs `hdmap.trial.run_trial`, writes the trial's rows
to the store and reports a final result. The driver (sweeps.runner) plans, schedules and records the rest,
W&B included: the trial's slot is free as soon as its rows are in the store.
"""

from __future__ import annotations

import gc
import os
import threading

from hdmap.config import TrialConfig
from hdmap.errors import UserError, disk_full
from sweeps.store import ResultStore

DISK_FULL = "hdmap_disk_full"  # a trial's final report when the disk is full: the line that names it


def trial_trainable(config: dict, sweep_dir: str) -> None:
    """One Tune trial = `hdmap.trial.run_trial` + its rows written to the store (the driver logs it to W&B).

    `sweep_dir` comes apart from the config (tune.with_parameters): it may carry credentials, the config is written.
    A full disk is reported, not raised: the driver stops the sweep (sweeps.runner), as no retry on it can succeed
    and the failure row could not be written either."""
    from ray import tune

    try:
        final = _run_and_record(config, sweep_dir)
    except Exception as exc:
        if (full := disk_full(exc)) is None:
            raise
        final = {DISK_FULL: str(full)}
    if final is not None:
        tune.report(final)


def _run_and_record(config: dict, sweep_dir: str) -> dict | None:
    """The trial and its rows in the store; the final report for Tune, or None when it ends without one."""
    from hdmap.trial import run_trial

    _freeze_imported_objects()
    ctx = config["ctx"]
    cfg = TrialConfig.model_validate(config["trial"])
    if cfg.runtime.feature_cache is None or ctx["feature_cache"] is None:  # a spec's own cache dir is kept
        cfg.runtime.feature_cache = ctx["feature_cache"]
    store = ResultStore(sweep_dir)
    store.mark_attempt(cfg.trial_id)
    watchdog = _Watchdog(ctx["timeout_s"], store, cfg.trial_id)
    metric = ctx["per_epoch_metric"]
    callbacks = [_EpochReporter(metric)] if metric else []
    try:
        result = run_trial(cfg, callbacks=callbacks)
    except UserError as exc:  # a retry cannot fix the config, the data or the weights: record once, end the trial
        record_failure(store, cfg, exc, ctx["sweep"], ctx["spec_hash"])
        return None  # no final report: the trial ends without error for Tune, which never retries it
    finally:
        watchdog.cancel()
        # Lightning's trainer <-> module cycle keeps the finished trial's model (a ViT-B CLIP: ~1 GB) until Python's
        # cycle collector runs, and a worker runs trial after trial: free it now (measured: RSS +1 GB per trial)
        gc.collect()
    store.write_trial(result, ctx["sweep"], ctx["spec_hash"])
    first = result.rows[0]
    final = {
        "hdmap_done": True,
        "hdmap_trial_id": cfg.trial_id,
        "image_auroc": first.get("image_auroc"),
        "accuracy": first.get("accuracy"),
    }
    if metric and callbacks[0].last is not None:  # the scheduler ranks the final result too (None: it cannot)
        final[metric] = callbacks[0].last
    return final


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
                store.write_json(f"parts/timeouts/{trial_id}.json", {"timeout_s": timeout_s})
                os._exit(3)

            store.fs.create_dir(f"{store.root}/parts/timeouts", recursive=True)
            self.timer = threading.Timer(timeout_s, expire)
            self.timer.daemon = True
            self.timer.start()

    def cancel(self) -> None:
        if self.timer:
            self.timer.cancel()


def record_failure(
    store: ResultStore, cfg: TrialConfig, error: BaseException | str, sweep: str, spec_hash: str, status: str = "error"
) -> None:
    """The one writer of a trial's row when it has no result: status error (or pruned), the error's text."""
    from hdmap.trial import failed_trial

    failed = failed_trial(cfg, error if isinstance(error, BaseException) else RuntimeError(str(error)))
    failed.rows[0].update(status=status)
    store.write_trial(failed, sweep, spec_hash)
