"""The driver of a sweep: run a validated Plan with Ray Tune, one Tune trial per TrialConfig (sweeps.worker runs
each), results into the ResultStore; restarts, interruptions and failure rows are decided here.

`run_sweep` holds the sweep for one driver (sweeps.lease) and runs a `SweepRun`, whose methods are the run's steps
in the order they happen. Around it: Ray's start-up (sweeps.ray_cluster), the Tune callbacks (sweeps.callbacks),
the signals that stop a run (sweeps.signals), the W&B logger (sweeps.trial_logger).

Resume is by `trial_id` in the store, not by Tune's experiment state: each `sweep run` starts a
fresh Tune run over the trials the store does not hold yet, so finished trials never re-run and a
spec can grow new axis values between runs. A search that chooses its trials as it runs (search.method optuna) has
no trials up front: its grid cells' budgets left in the store (sweeps.cells) are drawn by its searcher
(sweeps.search), started from the trials each cell holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hdmap.config import TrialConfig
from hdmap.errors import DiskFullError, disk_full
from sweeps.cells import CellHistory, cell_histories
from sweeps.lease import DriverLease
from sweeps.meta import SweepMeta
from sweeps.preflight import FINISHED, check_fresh
from sweeps.ray_cluster import (
    SweepEnvironmentError,
    is_ray_worker_loss,
    ray_address,
    ray_logs_to,
    start_ray,
)
from sweeps.redact import redact, redact_uri
from sweeps.result_keys import DISK_FULL
from sweeps.signals import StopSignals
from sweeps.spec import Plan, cell_key
from sweeps.store import ResultStore
from sweeps.trial_logger import LogTally, TrialLogger
from sweeps.worker import TrialContext, trial_trainable

if TYPE_CHECKING:
    from sweeps.callbacks import SweepProgress

NODE_FEATURE_CACHE = "/tmp/hdmap-feature-cache"  # when results go to object storage: features stay on the node
COMPACT_EVERY_S = 30.0


@dataclass
class SweepOutcome:
    sweep_dir: str
    total: int
    skipped: int  # already finished in the store
    ok: int = 0
    failed: list[dict] = field(default_factory=list)  # {trial_id, model, error}
    pruned: int = 0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    restarts: int = 0  # fresh Tune runs after Tune itself stopped on a lost worker
    cache_computed: int | None = None  # feature-cache entries computed / reused by this run's trials
    cache_reused: int | None = None
    not_run: int = 0  # planned trials with no row in the store after this run
    interrupted: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the sweep early
    log_path: str | None = None  # Ray's driver log: trial tracebacks go there, not to the terminal
    wandb: LogTally | None = None  # one W&B run per trial finished by this run, logged from the driver
    disk_full: str | None = None  # the run stopped on a full disk: the line naming the path and its disk
    state_recorded: bool = True  # False: sweep.json could not be updated (a full disk) and still says "running"


def plan_todo(plan: Plan, store: ResultStore, retry_failed: bool) -> tuple[list[TrialConfig], int]:
    """Trials still to run: not finished (ok or pruned); failed ones only with retry_failed."""
    status = store.status_by_trial()
    done = FINISHED | (set() if retry_failed else {"error"})
    todo = [t for t in plan.trials if status.get(t.trial_id) not in done]
    return todo, len(plan.trials) - len(todo)


def run_sweep(
    plan: Plan,
    *,
    address: str | None = None,
    retry_failed: bool = False,
    num_cpus: int | None = None,
    live: bool = True,
    feature_cache: bool = True,
) -> SweepOutcome:
    """Run every planned trial not yet in the store. `feature_cache=False` (`--no-feature-cache`) makes each
    trial compute its own backbone features, coreset and kNN search: for checking the cache changes nothing."""
    address = ray_address(address)  # before anything is written: a wrong address is one error, not a hang
    store = open_store(plan.spec.sweep_dir())
    with DriverLease(store):  # one driver per sweep: a second `sweep run` stops here, naming the first
        run = SweepRun(
            plan, store, address, retry_failed=retry_failed, num_cpus=num_cpus, live=live, feature_cache=feature_cache
        )
        return run.drive()


def open_store(sweep_dir: str) -> ResultStore:
    """The sweep's store, or an error when the output location cannot hold it: the checks `sweep plan` runs
    (sweeps.preflight.check_output: a file in the way, not writable, no bucket), then a real write probe."""
    from sweeps.preflight import check_output

    check_output(sweep_dir)
    try:
        store = ResultStore(sweep_dir)
        store.check_writable()
    except OSError as exc:
        raise SweepEnvironmentError(
            f"sweep output {redact_uri(sweep_dir)} is not a writable directory ({redact(str(exc), sweep_dir)}); "
            "choose another with --set output=DIR"
        ) from None
    return store


class SweepRun:
    """One `sweep run` of a plan: its store and options, the outcome being built, the signals that stop it and the
    W&B logger. `drive` runs the steps, each a method below it, in order."""

    def __init__(
        self,
        plan: Plan,
        store: ResultStore,
        address: str,
        *,
        retry_failed: bool,
        num_cpus: int | None,
        live: bool,
        feature_cache: bool,
    ) -> None:
        self.plan, self.spec, self.store, self.address = plan, plan.spec, store, address
        self.retry_failed, self.num_cpus, self.live, self.feature_cache = retry_failed, num_cpus, live, feature_cache
        self.stop = StopSignals()
        self.wandb = TrialLogger(self.spec.tracking.wandb, store, self.spec.name, store.local_dir(self.spec.name))
        self.outcome = SweepOutcome(
            sweep_dir=store.uri, total=plan.n_trials, skipped=0, log_path=str(store.driver_log(self.spec.name))
        )
        self.cells: list[CellHistory] = []  # a search's cells as the store holds them (search.method optuna)
        self.searched: set[str] = set()  # the trials its searcher launched

    def drive(self) -> SweepOutcome:
        """The run, top to bottom: prepare, run the trials, log what finished to W&B, record how the run ended."""
        self.prepare()
        todo, skipped = self.todo()
        self.outcome.skipped = skipped
        t0 = time.perf_counter()
        if todo or self.search_left():
            self.wandb.start()  # the logging children import wandb while the first trials run
        self.run_trials(todo, skipped)
        ran = {t.trial_id for t in todo} | self.searched
        self.log_late_finishers(ran)
        self.close_wandb()
        self.record_end(ran)
        self.outcome.wall_s = time.perf_counter() - t0
        return self.outcome

    def todo(self) -> tuple[list[TrialConfig], int]:
        """The planned trials still to run, and how many trials are done already (a search's cells' included)."""
        todo, skipped = plan_todo(self.plan, self.store, self.retry_failed)
        self.cells = cell_histories(self.plan, self.store)
        return todo, skipped + sum(len(history.done(self.retry_failed)) for history in self.cells)

    def search_left(self) -> int:
        """Trials a search's cells have still to run (search.method optuna), as of `todo()`."""
        return sum(history.left(self.retry_failed) for history in self.cells)

    def prepare(self) -> None:
        """The data (simulated if asked) checked, then the store readied: nothing runs on data that changed."""
        prepare_data(self.plan)
        for note in check_fresh(self.plan, self.store):  # finished trials on other data: refused before any write
            print(f"note: {note}")
        self.store.write_meta(SweepMeta.of_plan(self.plan, state="running"))
        self.store.compact()  # parts a killed driver left uncompacted: before Tune starts, so the pass blocks nothing

    def run_trials(self, todo: list[TrialConfig], skipped: int) -> None:
        """Tune runs until the trials are done or a signal stops them; a full disk ends the run, recorded."""
        try:
            self.tune_until_done(todo, skipped)
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune started: stop now, keep what finished
            self.stop.note_interrupt()
        except BaseException as exc:  # a spec or environment error around Tune: no logging child left behind
            if (full := disk_full(exc)) is None:
                self.wandb.close(wait_s=0)
                raise
            self.outcome.disk_full = str(full)  # a trial's (fit) or a driver's write: the run ends here, recorded

    def tune_until_done(self, todo: list[TrialConfig], skipped: int) -> None:
        """A Tune run over `todo`; after Tune itself stopped on a lost worker, a fresh one over what is unfinished
        (at most max_failures times, then the rest get error rows)."""
        for _ in range(self.spec.max_failures + 1):
            if not (todo or self.search_left()) or self.stop.received:
                return
            try:
                self.run_tune(todo, skipped)
                return
            except Exception as exc:
                if not is_ray_worker_loss(exc):
                    raise
                # Ray 2.60's Tune controller dies on an OOM-killed worker (ray#28937: OutOfMemoryError is neither an
                # actor nor a task error). The store knows what finished: start a fresh Tune run for the rest.
                self.outcome.restarts += 1
                print(f"Tune stopped after a worker was lost ({type(exc).__name__}); restarting the unfinished trials")
                todo, skipped = self.todo()
        self.record_lost(todo)

    def run_tune(self, todo: list[TrialConfig], skipped: int) -> None:
        """Ray started (or joined), then one Tune run with the signal handlers installed and Ray's log to its file."""
        t0 = time.perf_counter()
        start_ray(self.address, self.num_cpus)
        self.outcome.ray_start_s = time.perf_counter() - t0
        with self.stop.handling(), ray_logs_to(Path(self.outcome.log_path)):
            self.fit(todo, skipped)

    def fit(self, todo: list[TrialConfig], skipped: int) -> None:
        """One Tune run over `todo`, compacting meanwhile; then the rows of trials that failed every attempt."""
        import ray

        from sweeps.callbacks import SweepProgress  # imports ray: only a running sweep needs it

        check_resources(self.plan, self.to_run(todo), ray.cluster_resources())
        total = len(todo) + self.search_left()
        progress = SweepProgress(total=total, skipped=skipped, objective=self.spec.search, live=self.live)
        tuner = self.tuner(todo, progress)
        with _compacting(self.store), progress, self.stop.fitting():
            grid = tuner.fit()
        raise_if_disk_full(result.metrics for result in grid)
        self.record_unfinished(grid)

    def to_run(self, todo: list[TrialConfig]) -> list[TrialConfig]:
        """The configs this run's trials are made of: `todo`, or a search's cells' base configs."""
        return self.plan.configs if self.plan.cells else todo

    def tuner(self, todo: list[TrialConfig], progress: SweepProgress):
        """The Tuner: one trial per config of `todo` (the param space holds the trial configs alone), or the trials a
        search's searcher draws in its cells; the context they share and the store's URI passed apart
        (tune.with_parameters), the callbacks, the stopper."""
        from ray import tune

        from sweeps.callbacks import DiskFullStop, PruneRecorder, WandbRecorder

        resources = {name: self.plan.resources_for(name) for name in {t.model.name for t in self.to_run(todo)}}

        def pg(config: dict):
            r = resources[config["trial"]["model"]["name"]]
            return tune.PlacementGroupFactory([{"CPU": r.cpu, "GPU": r.gpu}])

        # the store's URI and the context reach the trials through Ray's object store, never the config: Tune writes
        # the config (its experiment state) to disk, and the URI may carry credentials (sweeps.redact)
        trainable = tune.with_parameters(trial_trainable, sweep_dir=self.store.uri_with_secrets, context=self.context())
        grid = {"trial": tune.grid_search([t.model_dump(mode="json") for t in todo])} if todo else {}
        return tune.Tuner(
            tune.with_resources(trainable, pg),
            param_space=grid,  # empty for a search: its searcher suggests each trial's config whole
            tune_config=self.tune_config(todo),
            run_config=tune.RunConfig(
                name=f"tune-{dt.datetime.now():%Y%m%d-%H%M%S}",
                storage_path=str(self.store.tune_dir(self.spec.name)),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.spec.max_failures),
                callbacks=[
                    progress,
                    PruneRecorder(self.store, self.spec.name, self.plan.spec_hash),
                    WandbRecorder(self.wandb),
                ],
                stop=DiskFullStop(),
                progress_reporter=None,
            ),
        )

    def tune_config(self, todo: list[TrialConfig]):
        """The grid of `todo` under the spec's scheduler; a search's cells drawn by its searcher (sweeps.search)
        until every cell's budget is drawn."""
        import ray
        from ray import tune

        if not self.plan.cells:
            return tune.TuneConfig(
                scheduler=self.scheduler(todo), max_concurrent_trials=self.spec.max_concurrent, reuse_actors=True
            )
        from sweeps.search import CellSearcher  # imports Optuna: only a search needs it

        searcher = CellSearcher(self.cells, self.spec.search, self.retry_failed, launched=self.searched)
        # unbounded, Tune asks the searcher for a dozen pending trials at once: drawn before any result returns, they
        # would be TPE's random start-up whatever the budget; at most as many as can run at once
        limit = self.spec.max_concurrent or trial_slots(self.plan, self.to_run(todo), ray.cluster_resources())
        return tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=limit, reuse_actors=True)

    def context(self) -> TrialContext:
        """What every trial of the sweep shares; the feature cache is shared by every trial of the sweep on a node
        (or on a shared file system), content-keyed (hdmap.cache)."""
        asha = self.spec.asha
        cache = self.store.feature_cache_dir() or NODE_FEATURE_CACHE
        return TrialContext(
            sweep=self.spec.name,
            spec_hash=self.plan.spec_hash,
            timeout_s=self.spec.trial_timeout_s,
            per_epoch_metric=asha.metric if asha else None,
            feature_cache=str(cache) if self.feature_cache else None,
            objective=self.spec.search.column,
        )

    def scheduler(self, todo: list[TrialConfig]):
        """ASHA on the spec's per-epoch metric within each group of comparable trials (sweeps.cell_asha), or None
        (FIFO)."""
        asha = self.spec.asha
        if not asha:
            return None
        from sweeps.cell_asha import CellASHA, comparable_paths

        kwargs = dict(
            time_attr="training_iteration",
            metric=asha.metric,
            mode=asha.mode,
            max_t=max(t.model.max_epochs() for t in todo) + 1,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
        paths = comparable_paths(self.plan)
        return CellASHA({t.trial_id: cell_key(t, paths) for t in todo}, **kwargs)

    def record_unfinished(self, grid) -> None:
        """Error rows for trials that failed every attempt (Tune already retried them max_failures times)."""
        planned = {t.trial_id for t in self.plan.trials} | self.searched
        for result in grid:
            cfg_tree = (result.config or {}).get("trial")
            if not cfg_tree:
                continue
            cfg = TrialConfig.model_validate(cfg_tree)
            if cfg.trial_id not in planned or result.error is None:
                continue
            error = self.timeout_error(cfg.trial_id) or getattr(result.error, "cause", None) or result.error
            self.store.write_failure(cfg, error, self.spec.name, self.plan.spec_hash)

    def timeout_error(self, trial_id: str) -> TimeoutError | None:
        """The trial's watchdog killed it (its note in the store): the error its row says."""
        seconds = self.store.timed_out(trial_id)
        if seconds is None:
            return None
        return TimeoutError(f"trial exceeded trial_timeout_s={seconds:g} s (killed; retried up to max_failures)")

    def record_lost(self, todo: list[TrialConfig]) -> None:
        """Trials still unfinished after every restart: error rows, so the failure is visible and --retry-failed
        works."""
        for cfg in todo:
            attempts = self.store.attempts(cfg.trial_id)
            if attempts > self.spec.max_failures:
                lost = f"worker lost {attempts} times (out of memory or node failure)"
                self.store.write_failure(cfg, lost, self.spec.name, self.plan.spec_hash)

    def log_late_finishers(self, ran: set[str]) -> None:
        """A trial that finished while Tune was stopping (a SIGINT to the driver alone) reached no callback: it is
        handed to the W&B logger from the store (submitting a trial twice logs it once)."""
        for trial_id in ran & set(self.store.status_by_trial()):
            self.wandb.submit(trial_id)

    def close_wandb(self) -> None:
        """Runs still queued get at most one run's bound (none on a full disk); a Ctrl-C here gives up on them."""
        wait_s = 0 if self.outcome.disk_full else self.spec.tracking.wandb.timeout_s
        try:
            self.outcome.wandb = self.wandb.close(wait_s=wait_s)
        except KeyboardInterrupt:
            self.stop.note_interrupt()
            self.outcome.wandb = self.wandb.close(wait_s=0)

    def record_end(self, ran: set[str]) -> None:
        """The run's last compaction and export, sweep.json's end state, and the outcome's counts."""
        outcome, store = self.outcome, self.store
        if outcome.disk_full is None:  # the run's last pass (the parts are the truth: on a full disk, the next run's)
            self._unless_disk_full(lambda: (store.compact(), store.export()))
        status = store.status_by_trial()
        cells = cell_histories(self.plan, store)
        outcome.interrupted = self.stop.received
        outcome.not_run = sum(1 for t in self.plan.trials if t.trial_id not in status)
        outcome.not_run += sum(history.left(retry_failed=False) for history in cells)  # a search's, without a row
        outcome.state_recorded = self._unless_disk_full(lambda: store.write_meta(self.end_state()))
        planned = {t.trial_id for t in self.plan.trials} | {t.trial_id for h in cells for t in h.trials}
        self.count(status, ran, planned)

    def _unless_disk_full(self, write: Callable[[], object]) -> bool:
        """One of the driver's closing writes; False when the disk is full, which the outcome then reports (the run
        still ends in order, and exits 1 naming the disk) instead of a traceback."""
        try:
            write()
        except Exception as exc:
            if (full := disk_full(exc)) is None:
                raise
            self.outcome.disk_full = self.outcome.disk_full or str(full)
            return False
        return True

    def end_state(self) -> SweepMeta:
        """sweep.json after a run: "failed" (a full disk, with its line), else interrupted, complete or incomplete."""
        outcome = self.outcome
        if outcome.disk_full:
            state = "failed"
        else:
            state = "interrupted" if outcome.interrupted else "complete" if not outcome.not_run else "incomplete"
        return SweepMeta.of_plan(self.plan, state=state, without_result=outcome.not_run, error=outcome.disk_full)

    def count(self, status: dict[str, str], ran: set[str], wanted: set[str]) -> None:
        """The outcome's figures for the planned trials (`wanted`): ok, pruned, failed (first line of each error) and
        the feature cache's entries computed / reused by the trials this run ran."""
        outcome = self.outcome
        rows = self.store.results(["trial_id", "model", "status", "error", "cache_hits", "cache_misses"]).to_pylist()
        outcome.ok = sum(1 for t, s in status.items() if t in wanted and s == "ok")
        outcome.pruned = sum(1 for t, s in status.items() if t in wanted and s == "pruned")
        outcome.failed = [
            {"trial_id": r["trial_id"], "model": r["model"], "error": (r["error"] or "").splitlines()[0]}
            for r in rows
            if r["trial_id"] in wanted and r["status"] == "error"
        ]
        cached = {r["trial_id"]: r for r in rows if r["trial_id"] in ran and r.get("cache_misses") is not None}
        if cached:
            outcome.cache_computed = sum(r["cache_misses"] for r in cached.values())
            outcome.cache_reused = sum(r["cache_hits"] for r in cached.values())


def raise_if_disk_full(reports: Iterable[dict | None]) -> None:
    """DiskFullError when a trial's final report says the disk is full (sweeps.worker): the run ends there."""
    for report in reports:
        if report and report.get(DISK_FULL):
            raise DiskFullError(report[DISK_FULL])


@contextmanager
def _compacting(store: ResultStore, every_s: float = COMPACT_EVERY_S):
    """Compaction passes in a driver thread while Tune runs: each costs O(new parts) and never runs inside Tune's
    scheduling loop; the chunks stay fresh for people peeking mid-sweep and the run's last pass stays short.
    A failed pass (object storage hiccup) is left for the next one: the parts are the source of truth."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                store.compact()
            except Exception as exc:  # noqa: BLE001 - the next pass, or the final one, retries
                logging.getLogger("ray").warning("background compaction failed (retried later): %s", exc)

    thread = threading.Thread(target=loop, name="hdmap-compaction", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def prepare_data(plan: Plan) -> None:
    """Simulate the data set if the spec asks and it is absent; then check it before launch (sweeps.preflight)."""
    from sweeps.preflight import check_data

    data = plan.spec.data
    root = Path(plan.configs[0].data.root) if plan.configs else Path(data.root)
    if data.simulate is not None and not root.exists():
        from hdmap.data.simulate import simulate

        s = data.simulate
        simulate(root, n_train=s.n_train, n_test=s.n_test, domains=s.domains, seed=s.seed)
    check_data(plan)


def check_resources(plan: Plan, todo: list[TrialConfig], cluster: dict) -> None:
    """A trial that can never be placed would leave the sweep pending forever: refuse it up front."""
    from sweeps.spec import SpecError

    for name in sorted({t.model.name for t in todo}):
        r = plan.resources_for(name)
        if r.gpu > cluster.get("GPU", 0) and not _autoscaling():
            raise SpecError(
                f"{plan.source}: resources.gpu={r.gpu} for {name} but the Ray cluster has "
                f"{cluster.get('GPU', 0):g} GPUs; run on a GPU cluster or --set resources.gpu=0"
            )
        if r.cpu > cluster.get("CPU", 0) and not _autoscaling():
            raise SpecError(
                f"{plan.source}: resources.cpu={r.cpu} for {name} but the Ray cluster has "
                f"{cluster.get('CPU', 0):g} CPUs"
            )


def trial_slots(plan: Plan, configs: list[TrialConfig], cluster: dict) -> int:
    """How many trials the cluster runs at once, for the most demanding model of `configs` (at least 1)."""
    slots = []
    for name in {t.model.name for t in configs}:
        r = plan.resources_for(name)
        fits = [cluster.get("CPU", 0) // r.cpu] + ([cluster.get("GPU", 0) // r.gpu] if r.gpu else [])
        slots.append(int(min(fits)))
    return max(1, min(slots, default=1))


def _autoscaling() -> bool:
    return os.environ.get("HDMAP_AUTOSCALING") == "1"
