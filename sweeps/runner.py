"""The driver of a sweep: run a validated Plan with Ray Tune, one Tune trial per TrialConfig (sweeps.worker runs
each), results into the ResultStore; restarts, interruptions and failure rows are decided here.

Resume is by `trial_id` in the store, not by Tune's experiment state: each `sweep run` starts a
fresh Tune run over the trials the store does not hold yet, so finished trials never re-run and a
spec can grow new axis values between runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hdmap.config import TrialConfig
from hdmap.errors import DiskFullError, UserError, disk_full
from hdmap.models.registry import MODELS
from sweeps.lease import DriverLease
from sweeps.meta import SweepMeta
from sweeps.preflight import FINISHED, check_fresh
from sweeps.redact import redact, redact_uri
from sweeps.spec import Plan
from sweeps.store import ResultStore
from sweeps.tracking import LogTally, TrialLogger
from sweeps.worker import DISK_FULL, record_failure, trial_trainable

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our store is the record; skip Tune's CSV/JSON/TBX
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # _StopSignals handles Ctrl-C (and SIGTERM) the same way
# A trial that records its own user error ends without a final report, so without the scheduler's metric; that
# every model reports the metric is checked by the spec (sweeps/spec.py), before launch.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
NODE_ARRAY_CACHE = "/tmp/hdmap-array-cache"
NODE_FEATURE_CACHE = "/tmp/hdmap-feature-cache"  # when results go to object storage: features stay on the node


class SweepEnvironmentError(UserError):
    """The machine, not the spec, is wrong (output not writable, no Ray cluster at --address): one line, exit 2."""


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
        return _drive(plan, store, address, retry_failed, num_cpus, live, feature_cache)


def _drive(
    plan: Plan,
    store: ResultStore,
    address: str,
    retry_failed: bool,
    num_cpus: int | None,
    live: bool,
    feature_cache: bool,
) -> SweepOutcome:
    spec = plan.spec
    prepare_data(plan)
    for note in check_fresh(plan, store):  # finished trials on other data: refused before anything is written
        print(f"note: {note}")
    store.write_meta(SweepMeta.of_plan(plan, state="running"))
    store.compact()  # parts a killed driver left uncompacted: before Tune starts, so the pass blocks nothing
    todo, skipped = plan_todo(plan, store, retry_failed)
    outcome = SweepOutcome(
        sweep_dir=store.uri,
        total=len(plan.trials),
        skipped=skipped,
        log_path=str(store.local_dir(spec.name) / "logs" / "ray-driver.log"),
    )
    ran = {t.trial_id for t in todo}
    stop = _StopSignals()
    t0 = time.perf_counter()
    wandb = TrialLogger(spec.tracking.wandb, store, spec.name, store.local_dir(spec.name))
    if todo:
        wandb.start()
    try:
        for _ in range(spec.max_failures + 1):
            if not todo or stop.received:
                break
            try:
                _run_tune(plan, todo, store, skipped, address, num_cpus, live, outcome, feature_cache, stop, wandb)
                break
            except Exception as exc:
                if not _is_ray_worker_loss(exc):
                    raise
                # Ray 2.60's Tune controller dies on an OOM-killed worker (ray#28937: OutOfMemoryError is neither an
                # actor nor a task error). The store knows what finished: start a fresh Tune run for the rest.
                outcome.restarts += 1
                print(f"Tune stopped after a worker was lost ({type(exc).__name__}); restarting the unfinished trials")
                todo, skipped = plan_todo(plan, store, retry_failed)
        else:
            _record_lost(todo, store, plan)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune started: stop now, keep what finished
        stop.received = stop.received or signal.SIGINT
    except BaseException as exc:  # a spec or environment error around Tune: no logging child left behind
        if (full := disk_full(exc)) is None:
            wandb.close(wait_s=0)
            raise
        outcome.disk_full = str(full)  # a trial's (_fit) or a driver's write: the run ends here, its state recorded
    # a trial that finished while Tune was stopping (a SIGINT to the driver alone) reached no callback: log it too
    for trial_id in ran & set(store.status_by_trial()):
        wandb.submit(trial_id)
    try:  # runs still queued get at most one run's bound (none on a full disk); a Ctrl-C here gives up on them at once
        outcome.wandb = wandb.close(wait_s=0 if outcome.disk_full else spec.tracking.wandb.timeout_s)
    except KeyboardInterrupt:
        stop.received = stop.received or signal.SIGINT
        outcome.wandb = wandb.close(wait_s=0)
    if outcome.disk_full is None:  # the run's last pass (the parts are the truth: on a full disk, the next run's)
        _unless_disk_full(outcome, lambda: (store.compact(), store.export()))
    status = store.status_by_trial()
    outcome.interrupted = stop.received
    outcome.not_run = sum(1 for t in plan.trials if t.trial_id not in status)
    outcome.state_recorded = _unless_disk_full(outcome, lambda: store.write_meta(_end_state(plan, outcome)))
    rows = store.results(["trial_id", "model", "status", "error", "cache_hits", "cache_misses"]).to_pylist()
    wanted = {t.trial_id for t in plan.trials}
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
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def _unless_disk_full(outcome: SweepOutcome, write: Callable[[], object]) -> bool:
    """One of the driver's closing writes; False when the disk is full, which the outcome then reports (the run
    still ends in order, and exits 1 naming the disk) instead of a traceback."""
    try:
        write()
    except Exception as exc:
        if (full := disk_full(exc)) is None:
            raise
        outcome.disk_full = outcome.disk_full or str(full)
        return False
    return True


def _end_state(plan: Plan, outcome: SweepOutcome) -> SweepMeta:
    """sweep.json after a run: "failed" (a full disk, with its line), else interrupted, complete or incomplete."""
    if outcome.disk_full:
        state = "failed"
    else:
        state = "interrupted" if outcome.interrupted else "complete" if not outcome.not_run else "incomplete"
    return SweepMeta.of_plan(plan, state=state, without_result=outcome.not_run, error=outcome.disk_full)


def open_store(sweep_dir: str) -> ResultStore:
    """The sweep's store, or an error when the output location cannot hold it: the checks `sweep plan` runs
    (sweeps.preflight.check_output: a file in the way, not writable, no bucket), then a real write probe."""
    from sweeps.preflight import check_output

    check_output(sweep_dir)
    try:
        store = ResultStore(sweep_dir)
        store.write_json("sweep.json.probe", {})
        store.delete("sweep.json.probe")
    except OSError as exc:
        raise SweepEnvironmentError(
            f"sweep output {redact_uri(sweep_dir)} is not a writable directory ({redact(str(exc), sweep_dir)}); "
            "choose another with --set output=DIR"
        ) from None
    return store


@contextmanager
def _ray_logs_to(path: Path):
    """Ray's and Tune's log records (a traceback per failed attempt) go to `path`, not the terminal: the
    progress display and the failure table are what a user reads; the log is where the details are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    handler = _BestEffortFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = ray_logger.handlers[:]
    ray_logger.handlers = [handler]
    try:
        yield
    finally:
        ray_logger.handlers = saved
        handler.close()


class _BestEffortFileHandler(logging.FileHandler):
    """A log that never fails the sweep: on a full disk its records are dropped, without logging's "--- Logging
    error ---" traceback on the terminal per record, and closing it raises nothing."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last buffered records did not fit
            pass


class _StopSignals:
    """Ctrl-C and SIGTERM stop a sweep the way Tune stops on Ctrl-C: no new trials start, running ones end
    without a row (they run again on resume), `tuner.fit()` returns. The signal is kept for the exit code.

    Tune's own SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER) because it swallows the signal: the driver
    could not tell an interrupted sweep from a finished one. Tune's graceful stop is the handler it installs
    for SIGUSR1 inside `fit()` (ray/tune/tune.py, _setup_signal_catching); a second signal stops at once.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_fit = False

    @contextmanager
    def handling(self):
        """Install the handlers (after `ray.init`, which installs its own SIGTERM handler); main thread only."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    @contextmanager
    def fitting(self):
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def _handle(self, signum, frame) -> None:
        first, self.received = self.received is None, self.received or signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.in_fit and callable(tune_stop):
            tune_stop(signum, frame)
        else:
            raise KeyboardInterrupt


def _run_tune(
    plan: Plan,
    todo: list[TrialConfig],
    store: ResultStore,
    skipped: int,
    address: str,
    num_cpus: int | None,
    live: bool,
    outcome: SweepOutcome,
    feature_cache: bool,
    stop: _StopSignals,
    wandb: TrialLogger,
) -> None:
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        # decoded splits are shared by every worker of a node through a node-local memory-mapped cache
        env = {"HDMAP_ARRAY_CACHE": os.environ.get("HDMAP_ARRAY_CACHE", NODE_ARRAY_CACHE)}
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus if address == "local" else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=True,
                logging_level="ERROR",
                runtime_env={"env_vars": env},
            )
        except ConnectionError as exc:
            raise _no_cluster(f"--address {address}", str(exc).splitlines()[0]) from None
    outcome.ray_start_s = time.perf_counter() - t0
    with stop.handling(), _ray_logs_to(Path(outcome.log_path)):
        _fit(plan, todo, store, skipped, live, feature_cache, stop, wandb)


def ray_address(address: str | None) -> str:
    """The Ray to run on: "local", this sweep's own new instance, unless --address names a cluster. Plain
    ray.init() would join whatever runs on the machine (a `ray start`, another sweep, a test's cluster, an exported
    RAY_ADDRESS); `--address auto` does that on purpose, on a cluster's head node, and is the default in a Ray Job.

    A cluster address is checked with one TCP connection first: ray.init retries a head that does not answer for
    minutes, printing GCS warnings, where a typo, a stopped cluster or a stale `ray start` record is one error."""
    given = f"--address {address}"
    if not address and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # set for a Ray Job's entrypoint
        address, given = "auto", "a Ray Job's default --address auto"  # the job's own cluster (RAY_ADDRESS: its GCS)
    if not address or address == "local":
        return "local"
    if address == "auto" and os.environ.get("RAY_ADDRESS"):  # what ray.init does with "auto"
        address, given = os.environ["RAY_ADDRESS"], f"{given} (RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
    if "://" in address:  # ray:// (Ray Client), or a dashboard's http:// where a GCS address belongs
        raise SweepEnvironmentError(
            f"{given}: the sweep's driver must run on the cluster (it compacts the results and logs W&B where it "
            "runs), so Ray Client (ray://) and dashboard (http://) addresses are not used; submit the sweep with "
            "`ray job submit` or cluster/submit_sweep.py (cluster/README.md), which run `hdmap sweep run SPEC "
            "--address auto` on the head node, or give the head's GCS address, host:6379"
        )
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address  # ray.init's own look-up of "auto"

        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError as exc:
            raise _no_cluster(given, str(exc).splitlines()[0]) from None
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise SweepEnvironmentError(f"{given}: expected 'auto' or the head's GCS address host:port, e.g. head:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise _no_cluster(given, f"nothing answers at {target}: {exc or type(exc).__name__}") from None
    return address


def _no_cluster(given: str, why: str) -> SweepEnvironmentError:
    return SweepEnvironmentError(
        f"{given}: no Ray cluster to connect to ({why}); start one with `ray start --head` (see cluster/README.md),"
        " or drop --address to run on a local Ray instance"
    )


def _fit(
    plan: Plan,
    todo: list[TrialConfig],
    store: ResultStore,
    skipped: int,
    live: bool,
    feature_cache: bool,
    stop: _StopSignals,
    wandb: TrialLogger,
) -> None:
    import ray
    from ray import tune

    spec = plan.spec
    check_resources(plan, todo, ray.cluster_resources())

    from sweeps.progress import SweepProgress

    progress = SweepProgress(total=len(todo), skipped=skipped, live=live)
    asha = spec.asha
    scheduler = None
    if asha:
        from ray.tune.schedulers import ASHAScheduler

        max_epochs = max(t.model.max_epochs() for t in todo)
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=asha.metric,
            mode=asha.mode,
            max_t=max_epochs + 1,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
    context = {
        "sweep": spec.name,
        "spec_hash": plan.spec_hash,
        "timeout_s": spec.trial_timeout_s,
        "per_epoch_metric": asha.metric if asha else None,
        # shared by every trial of the sweep on a node (or on a shared file system), content-keyed (hdmap.cache)
        "feature_cache": (str(store.local_path() / "cache") if store.local_path() else NODE_FEATURE_CACHE)
        if feature_cache
        else None,
    }
    resources = {name: plan.resources_for(name) for name in MODELS}

    def pg(config: dict):
        r = resources[config["trial"]["model"]["name"]]
        return tune.PlacementGroupFactory([{"CPU": r.cpu, "GPU": r.gpu}])

    # Tune's own experiment state is a by-product (resume uses the store), so it may stay on the driver's disk
    # when results go to object storage; with a shared file system it sits next to the results.
    tune_dir = store.local_dir(spec.name) / "ray"
    # the store's URI reaches the trials through Ray's object store, never the config: Tune writes the config (its
    # experiment state) to disk, and the URI may carry credentials (sweeps.redact)
    trainable = tune.with_parameters(trial_trainable, sweep_dir=store.uri_with_secrets)
    tuner = tune.Tuner(
        tune.with_resources(trainable, pg),
        param_space={"trial": tune.grid_search([t.model_dump(mode="json") for t in todo]), "ctx": context},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"tune-{dt.datetime.now():%Y%m%d-%H%M%S}",
            storage_path=str(tune_dir),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[progress, PruneRecorder(store, spec.name, plan.spec_hash), WandbRecorder(wandb)],
            stop=DiskFullStop(),
            progress_reporter=None,
        ),
    )
    with _compacting(store), progress, stop.fitting():
        grid = tuner.fit()
    raise_if_disk_full(result.metrics for result in grid)
    _record_unfinished(grid, store, plan)


def raise_if_disk_full(reports: Iterable[dict | None]) -> None:
    """DiskFullError when a trial's final report says the disk is full (sweeps.worker): the run ends there."""
    for report in reports:
        if report and report.get(DISK_FULL):
            raise DiskFullError(report[DISK_FULL])


class DiskFullStop:
    """Tune stopper: a trial that found the disk full stops the whole run, like Ctrl-C (running trials end without a
    row and run again on resume): every trial after it would fail the same way, and its failure row could not be
    written either. Its own result is not marked stopped, so PruneRecorder does not take it for a pruned trial."""

    def __new__(cls):
        from ray.tune import Stopper

        class Stop(Stopper):
            full = False

            def __call__(self, trial_id: str, result: dict) -> bool:
                self.full = self.full or bool(result.get(DISK_FULL))
                return False

            def stop_all(self) -> bool:
                return self.full

        return Stop()


COMPACT_EVERY_S = 30.0


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


def stopped_by_scheduler(result: dict) -> bool:
    """A result a Tune callback's `on_trial_result` receives: Tune marks `done` the one on which the scheduler
    decided STOP (our trainable never reports `done` itself; a trial that returns reaches no `on_trial_result`)."""
    return bool(result.get("done")) and not result.get("hdmap_done")


def _record_unfinished(grid, store: ResultStore, plan: Plan) -> None:
    """Error rows for trials that failed every attempt (Tune already retried them max_failures times)."""
    by_id = {t.trial_id: t for t in plan.trials}
    for result in grid:
        cfg_tree = (result.config or {}).get("trial")
        if not cfg_tree:
            continue
        cfg = TrialConfig.model_validate(cfg_tree)
        if cfg.trial_id not in by_id:
            continue
        if result.error is not None:
            error = _timeout_note(store, cfg.trial_id) or getattr(result.error, "cause", None) or result.error
            record_failure(store, cfg, error, plan.spec.name, plan.spec_hash)


class PruneRecorder:
    """Tune callback: a trial the scheduler stopped gets a 'pruned' row.

    Not decided in `on_trial_complete`: a trial that recorded its own user error and returned also completes
    without its final report. Trials cut short by Ctrl-C or a dead driver get no row and run again on resume.
    """

    def __new__(cls, store: ResultStore, sweep: str, spec_hash: str):
        from ray.tune import Callback

        class Recorder(Callback):  # the store is no closure cell: Tune pickles the class with its callbacks
            def __init__(self, store: ResultStore) -> None:
                self.store: ResultStore | None = store

            def __getstate__(self) -> dict:  # ... and the instance with its experiment state: no credentials there
                return {"store": None}

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if self.store is None or not stopped_by_scheduler(result):
                    return
                reports = result.get("training_iteration", 0)
                record_failure(
                    self.store,
                    TrialConfig.model_validate(trial.config["trial"]),
                    f"stopped early by the scheduler after {reports} reports",
                    sweep,
                    spec_hash,
                    status="pruned",
                )

        return Recorder(store)


class WandbRecorder:
    """Tune callback: a trial that finished with its final report is handed to the driver's W&B logger, which
    reads it from the store in the background (sweeps.tracking.TrialLogger): the trial's slot is already free."""

    def __new__(cls, logger: TrialLogger):
        from ray.tune import Callback

        class Recorder(Callback):  # the logger is no closure cell: Tune pickles the class with its callbacks
            def __init__(self, logger: TrialLogger) -> None:
                self.logger: TrialLogger | None = logger

            def __getstate__(self) -> dict:  # ... and the instance with the experiment state
                return {"logger": None}

            def on_trial_complete(self, iteration, trials, trial, **info):
                result = trial.last_result or {}
                if self.logger is not None and result.get("hdmap_done"):
                    self.logger.submit(result["hdmap_trial_id"])

        return Recorder(logger)


def _is_ray_worker_loss(exc: BaseException) -> bool:
    from ray.exceptions import RayError

    return any(isinstance(e, RayError) for e in (exc, exc.__cause__, exc.__context__))


def _record_lost(todo: list[TrialConfig], store: ResultStore, plan: Plan) -> None:
    """Trials still unfinished after every restart: error rows, so the failure is visible and --retry-failed works."""
    for cfg in todo:
        if store.attempts(cfg.trial_id) > plan.spec.max_failures:
            lost = f"worker lost {store.attempts(cfg.trial_id)} times (out of memory or node failure)"
            record_failure(store, cfg, lost, plan.spec.name, plan.spec_hash)


def _timeout_note(store: ResultStore, trial_id: str) -> BaseException | None:
    path = f"{store.root}/parts/timeouts/{trial_id}.json"
    if store.fs.get_file_info(path).type.name == "NotFound":
        return None
    with store.fs.open_input_stream(path) as f:
        seconds = json.loads(f.read())["timeout_s"]
    return TimeoutError(f"trial exceeded trial_timeout_s={seconds:g} s (killed; retried up to max_failures)")


def prepare_data(plan: Plan) -> None:
    """Simulate the data set if the spec asks and it is absent; then check it before launch (sweeps.preflight)."""
    from sweeps.preflight import check_data

    data = plan.spec.data
    root = Path(plan.trials[0].data.root) if plan.trials else Path(data.root)
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


def _autoscaling() -> bool:
    return os.environ.get("HDMAP_AUTOSCALING") == "1"
