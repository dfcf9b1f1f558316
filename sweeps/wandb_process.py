"""The bounded child process every W&B call runs in (sweeps.tracking's `log_trial` / `log_summary`, the driver's
sweeps.trial_logger.TrialLogger): wandb is imported there, never in the caller.

Bounded by construction
    Every W&B call runs in such a child (multiprocessing, "spawn" context: no inherited threads, locks or CUDA
    state). Each run is bounded by ``WandbSettings.timeout_s``; a run that overruns gets the child terminated,
    then killed (the next run starts a fresh one). At the end of a sweep the driver waits at most ``timeout_s``
    for runs still queued and reports the rest as not logged (sweeps.trial_logger.LogTally). Every exception, in
    the child or here, becomes a status string: ``"logged offline: <run dir>"``, ``"logged online: <url>"``,
    ``"disabled"``, ``"failed: <reason>"``, ``"timed out after <N>s"``. Nothing here raises into a sweep.
    wandb-core (the service the SDK starts in its own session) exits by itself when its parent, the child, dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay out of the caller's process where possible
    import pandas as pd

_LABEL_NAMES = {0: "good", 1: "fault"}
KILL_GRACE_S = 3.0
_NICE = 10  # the logging child yields the CPU to trials running on the driver's machine
_MAIN_SWAP_LOCK = threading.Lock()


def failed(exc: BaseException) -> str:
    """One line: 'failed: <Type>: <message>' (whitespace collapsed, at most ~300 characters)."""
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"failed: {message[:300]}"


class LoggingProcess:
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
            proc.join(KILL_GRACE_S)
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
            status = failed(exc)
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
        proc.join(KILL_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(KILL_GRACE_S)
    try:
        proc.close()
    except ValueError:  # still running after SIGKILL (uninterruptible sleep): leave it to the OS
        pass


# ------------------------------------------------------------------------------ inside the child: W&B calls


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


def log_trial_body(job: dict) -> str:
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


def log_summary_body(job: dict) -> str:
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
