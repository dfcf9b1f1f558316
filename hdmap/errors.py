"""The errors a user can fix from the message alone — one place, so every command treats them alike.

Each names the file, field or value and what was expected. Commands print them as one line (exit 2, no
traceback); a sweep records them once per trial and never retries them, since a retry cannot succeed.
Anything else is a bug or an environment fault: shown with its traceback, retried by a sweep — except a full disk
(`DiskFullError`): one line naming the path and its disk, exit 1, and a sweep stops rather than fail every trial.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's config, data or environment; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config that does not validate; the message names the source, field path and allowed values."""


class DataLayoutError(UserError, ValueError):
    """A data root does not follow the documented layout; the message names what and where."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights requested but not available locally."""


class OutputError(UserError, OSError):
    """An output location that cannot take the results (a file, read-only, or holding another trial's results)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No space left (or a quota reached) where a run writes. Found mid-run, after work was done: a command exits 1
    (exit 2 says nothing ran) and a sweep stops at once, since every later write fails the same way. The message is
    the whole story: what could not be written, on which disk, how much is free; the same command then resumes."""


def disk_full(exc: BaseException | None, path: str | os.PathLike | None = None) -> DiskFullError | None:
    """The full disk behind `exc` (itself, its cause or context) as a DiskFullError naming `path` (default: the
    error's own file name), or None when `exc` is something else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            what = os.strerror(exc.errno).lower()  # "no space left on device", "disk quota exceeded"
            where = path or exc.filename
            return DiskFullError(f"{what} writing {where}{_disk_of(where)}" if where else f"{what} ({exc})")
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_of(path: str | os.PathLike) -> str:
    """' (disk /data: 12 MB free)': the mount point holding `path`, so the message says what to free."""
    try:
        folder = Path(path).absolute().parent
        while not os.path.ismount(folder):
            folder = folder.parent
        return f" (disk {folder}: {shutil.disk_usage(folder).free / 2**20:,.0f} MB free)"
    except (OSError, ValueError):  # a path on object storage, or gone
        return ""
