"""A content-keyed disk cache that concurrent trial processes on one node (or a shared file system) share.

Used for what trials of a sweep recompute identically: backbone features, coreset selections and
nearest-neighbour searches (see `hdmap.features` and `ca_patchcore`). An entry is a directory of `.npy`
arrays plus `meta.json` (the key, for humans), found by the sha1 of its key:

- **Never half-read**: an entry is written in a temporary directory and renamed into place, so it
  exists only once complete; arrays are opened memory-mapped and read-only (the page cache is shared).
- **Never computed twice**: the first process to miss takes an `fcntl.flock` on `<entry>.lock`,
  computes and commits; the others block on the lock, then read what it wrote.
- **Never stale**: keys are built from content (file sizes and mtimes, weight hashes, array hashes),
  and `FORMAT` is in every key: bump it when what an entry means changes.
- An unusable cache (read-only disk, full disk) is a warning, not a failed trial: the value is computed
  and returned uncached.

Nothing is evicted: delete the directory (a sweep's `<output>/<name>/cache`, or the node-local one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1


class EntryWriter:
    """What a compute function gets: `array(...)` for large arrays written in pieces, `put(...)` for the rest."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory  # None = uncached: arrays stay in memory
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        if self.directory is None:
            out = np.empty(shape, dtype)
        else:
            out = np.lib.format.open_memmap(self.directory / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        self.arrays[name] = out
        return out

    def put(self, name: str, value: np.ndarray) -> None:
        self.array(name, value.shape, value.dtype)[...] = value


class DiskCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def entry_path(self, kind: str, key: dict) -> Path:
        digest = hashlib.sha1(json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str).encode()).hexdigest()
        return self.root / kind / digest

    def get(
        self, kind: str, key: dict, compute: Callable[[EntryWriter], None], wait: bool = True
    ) -> dict[str, np.ndarray] | None:
        """The arrays stored under (kind, key), computing them with `compute(writer)` on a miss.

        `wait=False`: None instead of blocking while another process computes this entry (so the caller
        can compute a different one meanwhile)."""
        final = self.entry_path(kind, key)
        digest = final.name
        hit = _read(final)
        if hit is not None:
            self.hits += 1
            return hit
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            warnings.warn(f"cache {self.root} unusable ({exc}); computing {kind} without it", stacklevel=2)
            return _compute_in_memory(compute)
        with locked(final.parent / f"{digest}.lock", wait) as acquired:
            if not acquired:
                return None
            hit = _read(final)  # another process may have committed it while we waited
            if hit is not None:
                self.hits += 1
                return hit
            self.misses += 1
            tmp = final.parent / f".{digest}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            try:
                tmp.mkdir()
                writer = EntryWriter(tmp)
                compute(writer)  # errors propagate; nothing is committed
                for array in writer.arrays.values():
                    if isinstance(array, np.memmap):
                        array.flush()
                (tmp / "meta.json").write_text(json.dumps({"kind": kind, **key}, sort_keys=True, default=str))
                os.rename(tmp, final)
            except OSError as exc:  # disk full, read-only, ...: the trial goes on without the cache
                warnings.warn(
                    f"cache {self.root}: could not write a {kind} entry ({exc}); continuing uncached", stacklevel=2
                )
                return _compute_in_memory(compute)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %s entry %s", kind, final)
        return _read(final)


def _compute_in_memory(compute: Callable[[EntryWriter], None]) -> dict[str, np.ndarray]:
    writer = EntryWriter(None)
    compute(writer)
    return writer.arrays


def _read(directory: Path) -> dict[str, np.ndarray] | None:
    if not (directory / "meta.json").exists():
        return None
    try:
        return {p.stem: np.load(p, mmap_mode="r") for p in directory.glob("*.npy")}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", directory, exc)
        return None


def hash_array(array: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes): the key of everything computed from it."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path, wait: bool = True):
    """Exclusive flock for the block (closing the fd releases it); yields False if `wait=False` and it is taken.

    An unopenable lock file is a warning: the block then runs unlocked."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        warnings.warn(f"{path}: cannot open lock file ({exc}); concurrent processes may compute twice", stacklevel=4)
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            except OSError as exc:  # e.g. ENOLCK on a shared file system mounted without lock support
                warnings.warn(f"{path}: cannot lock ({exc}); concurrent processes may compute twice", stacklevel=4)
        yield True
    finally:
        if fd is not None:
            os.close(fd)
