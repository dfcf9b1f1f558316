"""W&B tracking for sweeps: one run per trial, one "report" run per summary table. Never fails a trial.

What each trial's run holds
    group = sweep, job_type = model, name = trial_id, id = ``run_id(sweep, trial_id)`` (a hash, so logging
    the same trial again resumes the same W&B run instead of creating a duplicate); config = the full
    nested trial config; summary = the metrics (plain names such as ``image_auroc`` for one test domain,
    ``<test_domain>/image_auroc`` for several) plus ``status`` / ``error`` and the trial-level timings;
    ``scores`` = a ``wandb.Table`` of the per-image scores; ``scores/<good|fault>_<cold|warm>`` =
    ``wandb.Histogram`` of the scores per label x condition (``<test_domain>/scores/...`` for several
    test domains).

Failure-proof by construction
    All W&B work runs in a child process (multiprocessing, "spawn" context: no inherited threads, locks
    or CUDA state) that is joined with ``WandbSettings.timeout_s`` and terminated, then killed, if it
    overruns. Every exception, in the child or here, becomes the returned status string:
    ``"logged offline: <run dir>"``, ``"logged online: <url>"``, ``"disabled"``, ``"failed: <reason>"``,
    ``"timed out after <N>s"``. ``log_trial`` / ``log_summary`` never raise and never wait longer than
    ``timeout_s`` plus a few seconds for the kill. wandb-core (the service the SDK starts in its own
    session) exits by itself when its parent, our child, dies.

Mode
    ``mode=None`` resolves to ``$WANDB_MODE`` if that is set, else ``online`` if an API key is configured
    (``WANDB_API_KEY``, or a ``~/.netrc`` / ``$NETRC`` entry for the W&B host: ``$WANDB_BASE_URL``'s
    host, else api.wandb.ai / api.forge.coreweave.com), else ``offline``. Offline runs touch no network:
    system metrics, system metadata, git/code capture and error reporting (Sentry) are switched off
    in the child (tests/test_tracking.py checks that an offline run opens no connection to the configured
    server or to an HTTP(S) proxy).

Where offline runs go, and how to upload them later
    Offline runs are written to ``<dir>/wandb/offline-run-<YYYYmmdd_HHMMSS>-<run id>/`` where ``dir`` is
    ``WandbSettings.dir`` or, by default, the sweep directory passed as ``run_dir``. wandb 0.31 writes
    everything (config, summary, history, table references) into the transaction log
    ``run-<run id>.wandb`` in that directory (``files/`` holds only media such as
    ``media/table/scores_*.table.json``); ``read_offline_run`` decodes it. Logged tables are staged as
    artifacts in ``$WANDB_DATA_DIR`` (default here: ``<dir>/wandb/.data``, so the sweep directory is
    self-contained). Upload them from a machine with network access and an API key (``wandb login``)::

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
import math
import multiprocessing
import os
import struct
import sys
import threading
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # heavy imports stay out of the caller's process where possible
    import pandas as pd
    import pyarrow as pa

__all__ = ["WandbSettings", "resolve_mode", "run_id", "log_trial", "log_summary", "read_offline_run"]

Mode = Literal["offline", "online", "disabled"]

# Row keys that describe the trial as a whole (logged once, unprefixed) or identify it (config/identity, not summary).
_TRIAL_LEVEL = ("n_fit", "references_removed", "fit_s", "predict_s", "total_s", "peak_rss_mb", "peak_gpu_mb")
_IDENTITY = {"trial_id", "sweep", "spec_hash", "status", "error", "model", "train_domain", "test_domain", "seed",
             "host", "git_sha", "versions", "config_json", "started_at", "device", "pretrained_weights"}
_LABEL_NAMES = {0: "good", 1: "fault"}
_KILL_GRACE_S = 3.0
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


def log_trial(settings: WandbSettings, *, sweep: str, trial_id: str, model: str, config: dict,
              rows: list[dict], scores: "pa.Table | None", run_dir: str | Path) -> str:
    """Log one trial as one W&B run, in a bounded child process. Returns a short status; never raises."""
    return _log(settings, run_dir, _trial_worker, id=run_id(sweep, trial_id), name=trial_id, group=sweep,
                job_type=model, config=config, rows=list(rows), scores=scores)


def log_summary(settings: WandbSettings, *, sweep: str, table: "pd.DataFrame", run_dir: str | Path,
                name: str = "summary") -> str:
    """Log a comparison table as a wandb.Table in one run (group = sweep, job_type = "report"). Never raises."""
    return _log(settings, run_dir, _summary_worker, id=run_id(sweep, f"report:{name}"), name=f"{sweep}-{name}",
                group=sweep, job_type="report", config={"sweep": sweep, "table": name}, table_name=name, table=table)


def _log(settings: WandbSettings, run_dir: str | Path, worker: Callable, **run: Any) -> str:
    """Resolve the mode and run `worker` on the job in a bounded child process; a status string, never an exception."""
    try:
        mode = resolve_mode(settings)
        if mode == "disabled":
            return "disabled"
        job = {"mode": mode, "project": settings.project, "entity": settings.entity,
               "dir": str(Path(settings.dir or run_dir).resolve()), "timeout_s": float(settings.timeout_s), **run}
        return _run_bounded(worker, job, settings.timeout_s)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the caller
        return _failed(exc)


# --------------------------------------------------------------------------------- bounded child process


def _failed(exc: BaseException) -> str:
    """One line: 'failed: <Type>: <message>' (whitespace collapsed, at most ~300 characters)."""
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"failed: {message[:300]}"


def _run_bounded(target: Callable[[Any, dict], None], job: dict, timeout_s: float) -> str:
    """Run target(conn, job) in a spawned child; its one message is the status. Kill it after timeout_s.

    target must be a module-level function of an importable module (not ``__main__``): see
    `_main_not_reimported`.
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(sender, job), name="wandb-tracking", daemon=True)
    deadline = time.monotonic() + timeout_s
    status: str | None = None
    try:
        with _main_not_reimported():
            proc.start()
        sender.close()  # the child holds the only writer now: EOF on receiver means the child is gone
        while status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not receiver.poll(remaining):
                break
            try:
                status = receiver.recv()
            except EOFError:  # child exited without a status (crash, os._exit, signal)
                break
        if status is not None:
            proc.join(max(0.0, min(_KILL_GRACE_S, deadline - time.monotonic())) + 0.5)
        else:
            proc.join(max(0.0, deadline - time.monotonic()))
    finally:
        timed_out = proc.pid is not None and proc.is_alive()
        exitcode = proc.exitcode if proc.pid is not None else None
        _stop(proc)
        sender.close()
        receiver.close()
    if status is not None:
        return str(status)
    if timed_out:
        return f"timed out after {timeout_s:g}s"
    return f"failed: tracking process exited with code {exitcode} and no status"


@contextlib.contextmanager
def _main_not_reimported():
    """Keep "spawn" from re-running the caller's ``__main__`` in the child.

    By default a spawned child re-imports the parent's main script (as ``__mp_main__``): under Ray that is
    the worker script (imports ray), under the CLI the whole CLI, and an unguarded script would run its
    trial again. Nothing the child needs lives in ``__main__`` (targets are in this module), so for the
    few milliseconds of ``Process.start()`` -- where multiprocessing reads ``sys.modules["__main__"]`` to
    build the child's preparation data -- a stub ``__main__`` whose spec is named ``__main__`` is put in
    place, which multiprocessing's child-side fixup skips.
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
    if proc.pid is None:
        return
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
    for var in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE",
                "WANDB_DIR", "WANDB_RUN_DIR", "WANDB_INITED"):
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
        silent=True, quiet=True, console="off", show_info=False, show_warnings=False,
        x_disable_stats=True,  # no system-metrics thread (and no cloud metadata probes)
        x_disable_meta=True, x_disable_machine_info=True,  # the results row records host/versions/git already
        disable_git=True, disable_code=True, save_code=False, x_save_requirements=False,
        x_service_wait=max(1.0, 0.4 * budget),
        init_timeout=max(1.0, 0.4 * budget),
        login_timeout=max(1.0, 0.2 * budget),
        finish_timeout=max(1.0, 0.3 * budget), finish_timeout_raises=True,
        x_graphql_timeout_seconds=max(1.0, 0.2 * budget), x_graphql_retry_max=2,
        x_file_stream_timeout_seconds=max(1.0, 0.2 * budget),
        x_file_transfer_timeout_seconds=max(1.0, 0.2 * budget),
    )
    Path(job["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=job["project"], entity=job["entity"], mode=job["mode"], dir=job["dir"],
        id=job["id"], resume="allow", name=job["name"], group=job["group"], job_type=job["job_type"],
        config=job["config"], reinit="create_new", settings=settings,
    )


def _finish(run, mode: str) -> str:
    location = os.path.dirname(run.dir) if mode == "offline" else (run.url or run.id)
    run.finish()
    return f"logged {mode}: {location}"


def _child(conn, job: dict, body: Callable[[dict], str]) -> None:
    try:
        _child_env(job)
        status = body(job)
    except BaseException as exc:  # noqa: BLE001 - the status string is the only way out
        status = _failed(exc)
    try:
        conn.send(status)
        conn.close()
    except Exception:  # noqa: BLE001
        pass


def _trial_worker(conn, job: dict) -> None:
    """Child entry point for `log_trial` (module-level so "spawn" can import it)."""
    _child(conn, job, _log_trial_body)


def _summary_worker(conn, job: dict) -> None:
    """Child entry point for `log_summary`."""
    _child(conn, job, _log_summary_body)


def _log_trial_body(job: dict) -> str:
    import wandb

    summary = trial_summary(job["rows"])
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
        run.summary.update(summary)
    except BaseException:
        run.finish(exit_code=1)
        raise
    return _finish(run, job["mode"])


def _log_summary_body(job: dict) -> str:
    import wandb

    df = job["table"]
    table = wandb.Table(dataframe=_plain_frame(df))
    run = _init(job)
    try:
        run.log({job["table_name"]: table})
        run.summary.update({"n_rows": int(len(df))})
    except BaseException:
        run.finish(exit_code=1)
        raise
    return _finish(run, job["mode"])


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
    """Summary dict for a trial's rows: metrics per test domain (prefixed when there are several),
    trial-level timings once, and status/error."""
    summary: dict[str, Any] = {}
    if not rows:
        return {"status": "error", "error": "no rows"}
    domains = [r.get("test_domain") for r in rows]
    prefixed = len(rows) > 1
    for row, domain in zip(rows, domains):
        prefix = f"{domain}/" if prefixed else ""
        for key, value in row.items():
            if key in _IDENTITY or key in _TRIAL_LEVEL or "." in key:
                continue
            value = _jsonable(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[f"{prefix}{key}"] = value
        if prefixed:
            summary[f"{prefix}status"] = row.get("status")
    for key in _TRIAL_LEVEL:
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


def _histograms(df: "pd.DataFrame") -> dict:
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


def _plain_frame(df: "pd.DataFrame") -> "pd.DataFrame":
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


# ------------------------------------------------------------------------------ reading offline runs


def _log_records(path: Path):
    """Records of a wandb transaction log: a 7-byte W&B header, then LevelDB-log framing
    (32 KiB blocks; each chunk = crc32c(4) length(2) type(1: full, 2: first, 3: middle, 4: last))."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Decode an offline run directory (``.../wandb/offline-run-*``) into plain dicts.

    Returns ``{"run": {id, project, group, job_type, name}, "config": {...}, "summary": {...},
    "history": [{...}, ...], "files": [...]}``. Nested keys (``a/b`` histograms, tables) come back as
    nested dicts. For tests and diagnostics; uses wandb's protobuf definitions.
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    (log_path,) = run_dir.glob("run-*.wandb")

    def apply(target: dict, item) -> None:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)

    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "files": []}
    for raw in _log_records(log_path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {"id": r.run_id, "project": r.project, "entity": r.entity, "group": r.run_group,
                          "job_type": r.job_type, "name": r.display_name}
            for item in r.config.update:
                apply(out["config"], item)
        elif kind == "config":
            for item in record.config.update:
                apply(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                apply(out["summary"], item)
        elif kind == "history":
            step: dict = {}
            for item in record.history.item:
                apply(step, item)
            out["history"].append(step)
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    out["config"].pop("_wandb", None)
    return out
