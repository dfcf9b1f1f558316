"""W&B tracking for sweeps: one run per trial, logged from the driver; one "report" run per summary table.

What each trial's run holds
    group = sweep, job_type = model, name = trial_id, id = ``run_id(sweep, trial_id)`` (a hash, so logging
    the same trial again resumes the same W&B run instead of creating a duplicate); config = the full
    nested trial config; summary = the metrics (plain names such as ``image_auroc`` for one test domain,
    ``<test_domain>/image_auroc`` for several) plus ``status`` / ``error`` and the trial-level figures
    (`trial_summary`); ``scores`` = a ``wandb.Table`` of the per-image scores;
    ``scores/<good|fault>_<cold|warm>`` = ``wandb.Histogram`` of the scores per label x condition
    (``<test_domain>/scores/...`` for several test domains).

This module: the settings (`tracking.wandb` of a spec), the mode, what a run holds, and the two calls that log one
(`log_trial`, `log_summary`), each bounded in a child process (sweeps.wandb_process). The driver logs its sweep's
trials as they finish with sweeps.trial_logger.TrialLogger.

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

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeps import wandb_process

if TYPE_CHECKING:  # heavy imports stay out of the caller's process where possible
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "WandbSettings",
    "resolve_mode",
    "run_id",
    "log_trial",
    "log_summary",
    "trial_summary",
]

Mode = Literal["offline", "online", "disabled"]


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


# ------------------------------------------------------------------------------ logging one run, bounded


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
    process: wandb_process.LoggingProcess | None = None,
    timeout_s: float | None = None,
) -> str:
    """Log one trial as one W&B run, bounded (in `process`, else a child of its own). A status; never raises."""
    return _log(
        settings,
        run_dir,
        wandb_process.log_trial_body,
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
        wandb_process.log_summary_body,
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
    body: Callable[[dict], str],
    process: wandb_process.LoggingProcess | None,
    timeout_s: float | None,
    build: Callable[[], dict],
) -> str:
    """Resolve the mode, build the run's fields and run the body in a bounded child; a status string, never an
    exception."""
    own = process is None
    process = process or wandb_process.LoggingProcess()
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
        return process.run(body, job, settings.timeout_s if timeout_s is None else timeout_s)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the caller
        return wandb_process.failed(exc)
    finally:
        if own:
            process.close()


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
    for key in trial_level_keys():
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


def trial_level_keys() -> list[str]:
    """Numeric fields of a results row that describe the trial as a whole (hdmap.results.ROW_FIELDS)."""
    import pyarrow as pa

    from hdmap.results import ROW_FIELDS

    numeric = (pa.types.is_integer, pa.types.is_floating)
    return [name for name, dtype in ROW_FIELDS if name != "seed" and any(is_(dtype) for is_ in numeric)]
