"""W&B tracking for sweeps: one run per trial, logged from the driver; one "report" run per summary table.

What each trial's run holds
    group = sweep, job_type = model, name = trial_id, id = ``run_id(sweep, trial_id)`` (a hash, so logging
    the same trial again resumes the same W&B run instead of creating a duplicate); config = the full
    nested trial config; summary = the metrics (plain names such as ``image_auroc`` for one test domain,
    ``<test_domain>/image_auroc`` for several) plus ``status`` / ``error`` and the trial-level figures
    (`trial_summary`); ``scores`` = a ``wandb.Table`` of the per-image scores;
    ``scores/<good|fault>_<cold|warm>`` = ``wandb.Histogram`` of the scores per label x condition
    (``<test_domain>/scores/...`` for several test domains).

Off the trial's slot
    Trials never touch W&B. The driver's `TrialLogger` (fed by a Tune callback when a trial finishes) reads the
    trial's rows and scores back from the ResultStore -- so it works whichever node ran the trial -- and logs
    the run from a long-lived child process at low CPU priority, which imports wandb once per sweep (offline
    one child; online a few, as runs wait on uploads).

Bounded by construction
    Every W&B call runs in such a child (multiprocessing, "spawn" context: no inherited threads, locks or CUDA
    state). Each run is bounded by ``WandbSettings.timeout_s``; a run that overruns gets the child terminated,
    then killed (the next run starts a fresh one). At the end of a sweep the driver waits at most
    ``timeout_s`` for runs still queued and reports the rest as not logged (`LogTally`). Every exception, in
    the child or here, becomes a status string: ``"logged offline: <run dir>"``, ``"logged online: <url>"``,
    ``"disabled"``, ``"failed: <reason>"``, ``"timed out after <N>s"``. Nothing here raises into a sweep.
    wandb-core (the service the SDK starts in its own session) exits by itself when its parent, the child, dies.

Mode
    ``mode=None`` resolves to ``$WANDB_MODE`` if that is set, else ``online`` if an API key is configured
    (``WANDB_API_KEY``, or a ``~/.netrc`` / ``$NETRC`` entry for the W&B host: ``$WANDB_BASE_URL``'s
    host, else api.wandb.ai / api.forge.coreweave.com), else ``offline``. Offline runs touch no network:
    system metrics, system metadata, git/code capture and error reporting (Sentry) are switched off
    in the child (tests/test_tracking.py checks that an offline run opens no connection to the configured
    server or to an HTTP(S) proxy).

Where offline runs go, and how to upload them later
    Offline runs are written to ``<dir>/wandb/offline-run-<YYYYmmdd_HHMMSS>-<run id>/`` where ``dir`` is
    ``WandbSettings.dir`` or, by default, the sweep directory (results on object storage: the driver's
    local directory, next to Ray's driver log). wandb 0.31 writes everything (config, summary, history,
    table references) into the transaction log ``run-<run id>.wandb`` in that directory (``files/`` holds
    only media such as ``media/table/scores_*.table.json``); tests/wandb_records.py decodes it. Logged
    tables are staged as artifacts in ``$WANDB_DATA_DIR`` (default here: ``<dir>/wandb/.data``, so the sweep
    directory is self-contained), one copy per table (wandb stages two; the one its run does not name is
    removed). Upload them from a machine with network access and an API key (``wandb login``)::

        wandb sync <dir>/wandb/offline-run-*          # e.g. wandb sync runs/my-sweep/wandb/offline-run-*
        wandb sync --project other-project <dir>/wandb/offline-run-*

    A trial logged twice has two offline directories carrying the same run id, so both go to that one
    W&B run rather than to a duplicate (the upload itself is untested here: no server). ``wandb sync
    --dry-run <dir>/wandb/offline-run-*`` lists what would be uploaded (tested); ``wandb clean`` removes
    synced local data.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import json
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # heavy imports stay out of the caller's process where possible
    import pandas as pd
    import pyarrow as pa

    from sweeps.store import ResultStore

__all__ = [
    "WandbSettings",
    "resolve_mode",
    "run_id",
    "TrialLogger",
    "LogTally",
    "log_trial",
    "log_summary",
    "trial_summary",
]

Mode = Literal["offline", "online", "disabled"]

_LABEL_NAMES = {0: "good", 1: "fault"}
_KILL_GRACE_S = 3.0
_NICE = 10  # the logging child yields the CPU to trials running on the driver's machine
_ONLINE_LOGGERS = 4  # logging children of a sweep logging online (offline: one)
_MAIN_SWAP_LOCK = threading.Lock()


class WandbSettings(BaseModel):
    """`tracking.wandb` in a sweep spec."""

    model_config = ConfigDict(extra="forbid")

    project: str = "hdmap-sweeps"
    entity: str | None = None
    mode: Mode | None = None  # None: $WANDB_MODE, else online if an API key is configured, else offline
    dir: str | None = None  # where offline runs go (<dir>/wandb/offline-run-*); default: the sweep directory
    timeout_s: float = Field(60.0, gt=0)  # hard bound on all W&B work for one run


# ----------------------------------------------------------------------------------------------- mode


def _api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlsplit

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    base = os.environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base).netloc] if base else ["api.wandb.ai", "api.forge.coreweave.com"]
    try:
        entries = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    for host in hosts:
        auth = entries.authenticators(host)
        if auth and auth[2]:
            return True
    return False


def resolve_mode(settings: WandbSettings) -> str:
    """The mode a run will use: the explicit setting, else $WANDB_MODE, else online iff an API key is configured."""
    if settings.mode is not None:
        return settings.mode
    env = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env in ("online", "disabled"):
        return env
    try:
        return "online" if _api_key_configured() else "offline"
    except Exception:  # noqa: BLE001 - a broken ~/.netrc must not break a trial
        return "offline"


def run_id(sweep: str, trial_id: str) -> str:
    """Deterministic W&B run id for (sweep, trial): re-logging resumes the same run."""
    return hashlib.sha256(f"{sweep}\x00{trial_id}".encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ public API


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
        self._processes = [_LoggingProcess() for _ in range(_ONLINE_LOGGERS if self.mode == "online" else 1)]
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
                thread.join(max(0.0, self._deadline - time.monotonic()) + 2 * _KILL_GRACE_S + 1)
        finally:
            for process in self._processes:
                process.close()
        done = dict(self._statuses)
        statuses = {t: done.get(t, f"not logged: the sweep ended first (waited {wait_s:g}s)") for t in self._submitted}
        where = str(self.dir / "wandb") if self.mode == "offline" else f"project {self.settings.project}"
        return LogTally(
            mode=self.mode, where=where, statuses=statuses, seconds=dict(self._seconds), drain_s=time.monotonic() - t0
        )

    def _work(self, process: _LoggingProcess) -> None:
        while (trial_id := self._queue.get()) is not None:
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is not None and left <= 0:
                continue  # tallied as not logged by `close`
            timeout_s = self.settings.timeout_s if left is None else min(self.settings.timeout_s, left)
            t0 = time.monotonic()
            self._statuses[trial_id] = self._log(trial_id, timeout_s, process)
            self._seconds[trial_id] = time.monotonic() - t0

    def _log(self, trial_id: str, timeout_s: float, process: _LoggingProcess) -> str:
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
            return _failed(exc)


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


def log_trial(
    settings: WandbSettings,
    *,
    sweep: str,
    trial_id: str,
    model: str,
    config: dict,
    rows: list[dict],
    scores: pa.Table | None,
    run_dir: str | Path,
    process: _LoggingProcess | None = None,
    timeout_s: float | None = None,
) -> str:
    """Log one trial as one W&B run, bounded (in `process`, else a child of its own). A status; never raises."""
    return _log(
        settings,
        run_dir,
        "_log_trial_body",
        process,
        timeout_s,
        lambda: {
            "id": run_id(sweep, trial_id),
            "name": trial_id,
            "group": sweep,
            "job_type": model,
            "config": config,
            "summary": trial_summary(rows),
            "scores": scores,
        },
    )


def log_summary(
    settings: WandbSettings, *, sweep: str, table: pd.DataFrame, run_dir: str | Path, name: str = "summary"
) -> str:
    """Log a comparison table as a wandb.Table in one run (group = sweep, job_type = "report"). Never raises."""
    return _log(
        settings,
        run_dir,
        "_log_summary_body",
        None,
        None,
        lambda: {
            "id": run_id(sweep, f"report:{name}"),
            "name": f"{sweep}-{name}",
            "group": sweep,
            "job_type": "report",
            "config": {"sweep": sweep, "table": name},
            "table_name": name,
            "table": table,
        },
    )


def _log(
    settings: WandbSettings,
    run_dir: str | Path,
    body: str,
    process: _LoggingProcess | None,
    timeout_s: float | None,
    build: Callable[[], dict],
) -> str:
    """Resolve the mode, build the run's fields and run the body (named: looked up when called) in a bounded
    child; a status string, never an exception."""
    own = process is None
    process = process or _LoggingProcess()
    try:
        mode = resolve_mode(settings)
        if mode == "disabled":
            return "disabled"
        job = {
            "mode": mode,
            "project": settings.project,
            "entity": settings.entity,
            "dir": str(Path(settings.dir or run_dir).resolve()),
            "timeout_s": float(settings.timeout_s),
            **build(),
        }
        return process.run(globals()[body], job, settings.timeout_s if timeout_s is None else timeout_s)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the caller
        return _failed(exc)
    finally:
        if own:
            process.close()


# ------------------------------------------------------------------------------- the bounded child process


def _failed(exc: BaseException) -> str:
    """One line: 'failed: <Type>: <message>' (whitespace collapsed, at most ~300 characters)."""
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"failed: {message[:300]}"


class _LoggingProcess:
    """One spawned child that runs W&B jobs one at a time, each bounded: a job that overruns kills the child,
    and the next job starts a fresh one. `run` is called from one thread; `start` and `close` from any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.is_alive()

    def start(self, warm: dict | None = None) -> None:
        """Spawn the child unless one is running (`warm`: the mode and dir of the coming jobs, to import wandb
        ahead of the first). Its target lives in this module, never ``__main__``."""
        with self._lock:
            if self.alive():
                return
            self._close_locked()
            ctx = multiprocessing.get_context("spawn")
            conn, child_conn = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child_conn, warm), name="wandb-tracking", daemon=True)
            with _main_not_reimported():
                proc.start()
            child_conn.close()  # the child holds the only other end now: EOF here means the child is gone
            self._proc, self._conn = proc, conn

    def run(self, body: Callable[[dict], str], job: dict, timeout_s: float) -> str:
        """`body(job)` in the child; its return value is the status. Raises only if the job cannot be pickled."""
        deadline = time.monotonic() + timeout_s
        self.start()
        proc, conn = self._proc, self._conn
        try:
            conn.send((body, job))
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                self.close(proc)
                return f"timed out after {round(timeout_s, 1):g}s"
            return str(conn.recv())
        except (EOFError, OSError):  # the child died without a status (crash, os._exit, signal, closed meanwhile)
            proc.join(_KILL_GRACE_S)
            code = proc.exitcode
            self.close(proc)
            return f"failed: tracking process exited with code {code} and no status"

    def close(self, proc=None) -> None:
        """Ask the child to exit, then terminate, then kill it (only `proc`, if given and still current)."""
        with self._lock:
            if proc is None or proc is self._proc:
                self._close_locked()

    def _close_locked(self) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.send(None)
            if proc is not None:
                proc.join(0.5)
            conn.close()
        if proc is not None:
            _stop(proc)


def _serve(conn, warm: dict | None = None) -> None:
    """Child entry point: run (body, job) messages until None or EOF; send back one status each.

    A terminal's Ctrl-C reaches the whole process group: the child ignores it, the driver decides when it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    if warm is not None:
        with contextlib.suppress(Exception):
            _child_env(warm)
            import wandb  # noqa: F401 - paid now, at low priority, rather than when a run is waited for
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        body, job = message
        try:
            _child_env(job)
            status = body(job)
        except BaseException as exc:  # noqa: BLE001 - the status string is the only way out
            status = _failed(exc)
        try:
            conn.send(status)
        except Exception:  # noqa: BLE001 - the parent gave up on us
            return


@contextlib.contextmanager
def _main_not_reimported():
    """Keep "spawn" from re-running the caller's ``__main__`` in the child.

    By default a spawned child re-imports the parent's main script (as ``__mp_main__``): under the CLI the
    whole CLI, and an unguarded script would run again. Nothing the child needs lives in ``__main__``
    (targets are in this module), so for the few milliseconds of ``Process.start()`` -- where
    multiprocessing reads ``sys.modules["__main__"]`` to build the child's preparation data -- a stub
    ``__main__`` whose spec is named ``__main__`` is put in place, which multiprocessing's child-side fixup
    skips. The driver's TrialLogger starts its child before Tune runs, on the main thread.
    """
    stub = types.ModuleType("__main__")
    stub.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    with _MAIN_SWAP_LOCK:
        original = sys.modules.get("__main__")
        sys.modules["__main__"] = stub
        try:
            yield
        finally:
            if original is not None:
                sys.modules["__main__"] = original


def _stop(proc) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(_KILL_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(_KILL_GRACE_S)
    try:
        proc.close()
    except ValueError:  # still running after SIGKILL (uninterruptible sleep): leave it to the OS
        pass


def _child_env(job: dict) -> None:
    """Environment for the SDK in the child, set before `import wandb`."""
    for var in (
        "WANDB_MODE",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_NAME",
        "WANDB_RUN_GROUP",
        "WANDB_JOB_TYPE",
        "WANDB_DIR",
        "WANDB_RUN_DIR",
        "WANDB_INITED",
    ):
        os.environ.pop(var, None)  # everything is passed explicitly to wandb.init
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_QUIET"] = "true"
    os.environ["WANDB_DISABLE_GIT"] = "true"
    os.environ["WANDB_DISABLE_CODE"] = "true"
    if job["mode"] == "offline":
        os.environ["WANDB_ERROR_REPORTING"] = "false"  # Sentry is network
    else:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    # Tables are staged as artifacts in WANDB_DATA_DIR until synced; keep them with the offline runs.
    os.environ.setdefault("WANDB_DATA_DIR", os.path.join(job["dir"], "wandb", ".data"))


def _init(job: dict):
    import wandb

    budget = max(1.0, float(job["timeout_s"]))
    settings = wandb.Settings(
        silent=True,
        quiet=True,
        console="off",
        show_info=False,
        show_warnings=False,
        x_disable_stats=True,  # no system-metrics thread (and no cloud metadata probes)
        x_disable_meta=True,
        x_disable_machine_info=True,  # the results row records host/versions/git already
        disable_git=True,
        disable_code=True,
        save_code=False,
        x_save_requirements=False,
        x_service_wait=max(1.0, 0.4 * budget),
        init_timeout=max(1.0, 0.4 * budget),
        login_timeout=max(1.0, 0.2 * budget),
        finish_timeout=max(1.0, 0.3 * budget),
        finish_timeout_raises=True,
        x_graphql_timeout_seconds=max(1.0, 0.2 * budget),
        x_graphql_retry_max=2,
        x_file_stream_timeout_seconds=max(1.0, 0.2 * budget),
        x_file_transfer_timeout_seconds=max(1.0, 0.2 * budget),
    )
    Path(job["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=job["project"],
        entity=job["entity"],
        mode=job["mode"],
        dir=job["dir"],
        id=job["id"],
        resume="allow",
        name=job["name"],
        group=job["group"],
        job_type=job["job_type"],
        config=job["config"],
        reinit="create_new",
        settings=settings,
    )


def _finish(run, mode: str, staged_before: set[str]) -> str:
    location = os.path.dirname(run.dir) if mode == "offline" else (run.url or run.id)
    run.finish()
    with contextlib.suppress(OSError):  # litter left is no reason to fail a logged run
        _drop_orphan_copies(_staged() - staged_before)
    return f"logged {mode}: {location}"


def _staged() -> set[str]:
    """The files in W&B's artifact staging folder ($WANDB_DATA_DIR/artifacts/staging) now."""
    from wandb.sdk.artifacts.staging import get_staging_dir

    try:
        folder = get_staging_dir()
        return {os.path.join(folder, name) for name in os.listdir(folder)}
    except OSError:  # not writable: logging a table reports that itself
        return set()


def _drop_orphan_copies(new: set[str]) -> None:
    """wandb stages each logged table twice (`Artifact.add` copies it, finalizing the artifact copies it again) and
    the run names only the later copy, the one `wandb sync` uploads: the earlier one is litter, one per table per
    run. Of the files this run staged, byte-identical ones keep only the newest."""
    newest: dict[bytes, str] = {}
    for path in sorted(new, key=lambda p: os.stat(p).st_mtime_ns):
        digest = hashlib.sha1(Path(path).read_bytes()).digest()
        if digest in newest:
            os.remove(newest[digest])
        newest[digest] = path


def _log_trial_body(job: dict) -> str:
    import wandb

    staged = _staged()
    payload = {}
    scores = job["scores"]
    if scores is not None and scores.num_rows:
        df = scores.to_pandas()
        payload["scores"] = wandb.Table(dataframe=_plain_frame(df))
        payload.update(_histograms(df))
    run = _init(job)
    try:
        if payload:
            run.log(payload)
        run.summary.update(job["summary"])
    except BaseException:
        run.finish(exit_code=1)
        raise
    return _finish(run, job["mode"], staged)


def _log_summary_body(job: dict) -> str:
    import wandb

    staged = _staged()
    df = job["table"]
    table = wandb.Table(dataframe=_plain_frame(df))
    run = _init(job)
    try:
        run.log({job["table_name"]: table})
        run.summary.update({"n_rows": int(len(df))})
    except BaseException:
        run.finish(exit_code=1)
        raise
    return _finish(run, job["mode"], staged)


# ------------------------------------------------------------------------------------- payload shaping


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return str(value)


def trial_summary(rows: list[dict]) -> dict[str, Any]:
    """Summary dict for a trial's rows (as the store holds them): the metrics per test domain (prefixed
    ``<test_domain>/`` when there are several), the trial-level figures once, and status/error.

    Which key is which comes from the one results schema (hdmap.results): per-domain = ``METRIC_KEYS``;
    trial-level = the numeric row fields (timings, memory, cache counts, attempts, ...) but ``seed``, which is
    identity like ``model``; config columns stay in the run's config."""
    from hdmap.metrics import METRIC_KEYS

    summary: dict[str, Any] = {}
    if not rows:
        return {"status": "error", "error": "no rows"}
    domains = [r.get("test_domain") for r in rows]
    prefixed = len(rows) > 1
    for row, domain in zip(rows, domains):
        prefix = f"{domain}/" if prefixed else ""
        for key in METRIC_KEYS:
            value = _jsonable(row.get(key))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[f"{prefix}{key}"] = value
        if prefixed:
            summary[f"{prefix}status"] = row.get("status")
    for key in _trial_level_keys():
        value = next((_jsonable(r.get(key)) for r in rows if r.get(key) is not None), None)
        if value is not None:
            summary[key] = value
    statuses = {r.get("status") for r in rows}
    summary["status"] = "ok" if statuses == {"ok"} else "error"
    errors = [str(r["error"]) for r in rows if r.get("error")]
    summary["error"] = "\n".join(errors)[-4000:] if errors else None
    summary["test_domains"] = [d for d in domains if d is not None]
    for key in ("model", "train_domain", "seed", "device"):
        if rows[0].get(key) is not None:
            summary[key] = _jsonable(rows[0][key])
    return summary


def _trial_level_keys() -> list[str]:
    """Numeric fields of a results row that describe the trial as a whole (hdmap.results.ROW_FIELDS)."""
    import pyarrow as pa

    from hdmap.results import ROW_FIELDS

    numeric = (pa.types.is_integer, pa.types.is_floating)
    return [name for name, dtype in ROW_FIELDS if name != "seed" and any(is_(dtype) for is_ in numeric)]


def _histograms(df: pd.DataFrame) -> dict:
    import numpy as np
    import wandb

    out = {}
    domains = list(dict.fromkeys(df["test_domain"].tolist())) if "test_domain" in df else [None]
    for domain in domains:
        part = df if domain is None or len(domains) == 1 else df[df["test_domain"] == domain]
        prefix = f"{domain}/" if len(domains) > 1 else ""
        for (label, condition), group in part.groupby(["label", "condition"], dropna=False):
            values = group["score"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            name = _LABEL_NAMES.get(int(label), f"label{int(label)}") if label == label else "unlabelled"
            out[f"{prefix}scores/{name}_{condition}"] = wandb.Histogram(values)
    return out


def _plain_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy wandb.Table accepts: timestamps and structured values become text, nulls None."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        series = out[col]
        if pd.api.types.is_datetime64_any_dtype(series) or isinstance(series.dtype, pd.PeriodDtype):
            out[col] = series.astype(str)
        elif series.dtype == object:
            out[col] = [v if v is None or isinstance(v, (str, bool, int, float)) else str(v) for v in series]
        elif pd.api.types.is_integer_dtype(series):
            out[col] = series.astype("int64") if not series.isna().any() else series.astype(object)
    out.columns = [str(c) for c in out.columns]
    return out
