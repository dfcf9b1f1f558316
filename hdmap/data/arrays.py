"""Decode a split's TIFFs into one float32 array (tifffile, never PIL, never clipped), once per node.

Two cache levels sit in front of the decoder:

* per process: an ``lru_cache`` keyed by (resolved root, domain, split, cache dir, cold_below,
  allow_negative);
* per node (optional): when the environment variable ``HDMAP_ARRAY_CACHE`` names a directory
  (the sweep runner points it at a node-local temp dir), each decoded split is an ``"arrays"`` entry
  of a `hdmap.cache.DiskCache` there: ``arrays/<sha1 of key>/images.npy`` (opened with
  ``mmap_mode="r"`` so every worker process on the node shares the page cache) plus ``meta.json``.
  The key (`cache_key`) holds the resolved root, domain, split, every file's (relative path, size,
  mtime_ns), label and condition (so the cold/warm source — index rule, ``data.cold_below`` or
  ``conditions.csv`` — is in it) and ``allow_negative``: editing, adding or removing a file or
  changing the split yields a new entry. DiskCache commits an entry by renaming its finished
  directory into place and locks it while the first process decodes: concurrent first loads on a
  node decode once, and nobody reads a half-written entry. Files, labels and conditions come from
  the scan (the key holds them), not from the entry.

Validation errors (unreadable TIFF, wrong dtype or shape, non-finite or negative values) are raised
exactly as without the cache and never cached: every file is validated before the entry is written.
Severity ground truth is always recomputed from the simulator's sidecar.
Unset ``HDMAP_ARRAY_CACHE`` = per-process caching only, nothing written to disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from hdmap.cache import DiskCache
from hdmap.data.layout import IMAGE_SHAPE, DataLayoutError, FileEntry, normalize_domain, scan_split

log = logging.getLogger(__name__)

CACHE_ENV = "HDMAP_ARRAY_CACHE"
_CACHE_FORMAT = 4  # bump when the entry format or decoding changes: old entries are then ignored


@dataclass(frozen=True)
class SplitArrays:
    """A set of images with per-image metadata, all aligned on axis 0."""

    domain: str
    images: np.ndarray  # (N, 31, 95) float32
    labels: np.ndarray  # (N,) int64: 0 good, 1 fault
    conditions: np.ndarray  # (N,) object: "cold"/"warm", None for train
    files: np.ndarray  # (N,) object: path relative to the data root
    severity: np.ndarray = field(default=None)  # (N,) float64, NaN where no ground truth

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> SplitArrays:
        index = np.asarray(index, dtype=np.int64)
        return SplitArrays(
            self.domain,
            self.images[index],
            self.labels[index],
            self.conditions[index],
            self.files[index],
            self.severity[index],
        )


def concat_splits(parts: list[SplitArrays], domain: str) -> SplitArrays:
    """Several splits as one (e.g. the fit images of every domain); a single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    return SplitArrays(
        domain,
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("images", "labels", "conditions", "files")),
        severity=np.concatenate([p.severity for p in parts]),
    )


def read_tiff(path: Path, allow_negative: bool = False) -> np.ndarray:
    """One HDMAP file -> (31, 95) float32, or a DataLayoutError naming the file and what was found."""
    try:
        with tifffile.TiffFile(path) as tif:  # IFDs only: imread would return the first page and drop the rest
            n_pages = len(tif.pages)
        array = tifffile.imread(path) if n_pages == 1 else None
    except Exception as exc:  # tifffile raises several types for corrupt / non-TIFF input
        raise DataLayoutError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    _check_pages(path, n_pages)
    _check_format(path, array.shape, array.dtype)
    non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
    if non_finite:
        raise DataLayoutError(f"{path}: {non_finite} non-finite pixel values (NaN/inf); HDMAP files must be finite")
    negative = int(np.count_nonzero(array < 0))
    if negative and not allow_negative:
        raise DataLayoutError(
            f"{path}: {negative} negative pixel values (min {array.min():.4g}); HDMAP files are "
            f"min-max scaled to >= 0 (set data.allow_negative: true if yours are not)"
        )
    return array


def _check_pages(path: Path, n_pages: int) -> None:
    """tifffile.imread returns only a multi-page file's first series: the other pages would be dropped silently."""
    if n_pages != 1:
        raise DataLayoutError(f"{path}: {n_pages} pages (images) in one TIFF; expected one 31x95 page per file")


def _check_format(path: Path, shape: tuple, dtype: np.dtype) -> None:
    """The same message for a decoded file and a header-only check."""
    if dtype != np.float32:
        raise DataLayoutError(f"{path}: dtype {dtype}, expected float32 (31x95 single channel)")
    if tuple(shape) != IMAGE_SHAPE:
        raise DataLayoutError(f"{path}: shape {tuple(shape)}, expected {IMAGE_SHAPE} (H x W, single channel)")


def check_headers(
    root: str | Path, domain: str, split: str, cold_below: int | None = None, workers: int = 8
) -> list[FileEntry]:
    """Pre-launch check of a split without decoding pixels: the layout rules, then every file's TIFF header.

    Headers (readable, shape, dtype of what `read_tiff` would return) are read in a thread pool; the first bad
    file in listing order raises a DataLayoutError naming it. Pixel values (NaN/inf, negatives) need a decode:
    `load_split` checks them, still before any fitting. Returns the listing (the data fingerprint reuses it).
    """
    entries = scan_split(Path(root), domain, split, cold_below)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for problem in pool.map(_header_problem, [e.path for e in entries]):
            if problem is not None:
                raise problem
    finally:
        pool.shutdown(cancel_futures=True)
    return entries


def _header_problem(path: Path) -> DataLayoutError | None:
    try:
        with tifffile.TiffFile(path) as tif:  # IFDs only, no pixel data (pages[0]: half the cost of series[0])
            n_pages, page = len(tif.pages), tif.pages[0]
            shape, dtype = page.shape, page.dtype
    except Exception as exc:  # tifffile raises several types for corrupt / non-TIFF input
        return DataLayoutError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})")
    try:
        _check_pages(path, n_pages)
        _check_format(path, shape, dtype)
    except DataLayoutError as exc:
        return exc
    return None


def load_split(
    root: str | Path, domain: str, split: str, cold_below: int | None = None, allow_negative: bool = False
) -> SplitArrays:
    """Cached per process (and per node when ``HDMAP_ARRAY_CACHE`` is set): trials decode each split once.

    ``cold_below`` and ``allow_negative`` are the trial's `data.*` fields (see `hdmap.data.layout`).
    """
    cache_dir = os.environ.get(CACHE_ENV) or None
    return _load_split_cached(
        str(Path(root).resolve()), normalize_domain(domain), split, cache_dir, cold_below, allow_negative
    )


@functools.lru_cache(maxsize=32)
def _load_split_cached(
    root: str,
    domain: str,
    split: str,
    cache_dir: str | None = None,
    cold_below: int | None = None,
    allow_negative: bool = False,
) -> SplitArrays:
    entries = scan_split(root, domain, split, cold_below)
    if cache_dir is None:
        images, files, labels, conditions = _decode(root, entries, allow_negative)
    else:
        images, files, labels, conditions = _load_via_node_cache(
            Path(cache_dir), root, domain, split, entries, allow_negative
        )
    images.setflags(write=False)
    return SplitArrays(
        domain=domain,
        images=images,
        labels=labels,
        conditions=conditions,
        files=files,
        severity=_ground_truth_severity(Path(root), files),
    )


def _decode(
    root: str, entries: list[FileEntry], allow_negative: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The uncached path: read and validate every file (raises DataLayoutError naming the first bad one)."""
    return _decode_images(entries, allow_negative), *_listing(root, entries)


def _decode_images(entries: list[FileEntry], allow_negative: bool) -> np.ndarray:
    return np.stack([read_tiff(e.path, allow_negative) for e in entries])


def _listing(root: str, entries: list[FileEntry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(files relative to root, labels, conditions), aligned with the images."""
    files = np.array([e.path.relative_to(root).as_posix() for e in entries], dtype=object)
    labels = np.array([e.label for e in entries], dtype=np.int64)
    conditions = np.array([e.condition for e in entries], dtype=object)
    return files, labels, conditions


# ---------------------------------------------------------------------------------------------
# node-local disk cache


def files_key(root: str, domain: str, split: str, files) -> str:
    """sha1 over the split's identity and every file's (path relative to root, size, mtime_ns): its pixels."""
    listing = []
    for rel in files:
        st = os.stat(Path(root) / rel)
        listing.append([str(rel), st.st_size, st.st_mtime_ns])
    payload = {"root": root, "domain": domain, "split": split, "files": listing}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_key(root: str, domain: str, split: str, entries: list[FileEntry], allow_negative: bool = False) -> dict:
    """Node-cache key: the files (`files_key`), each one's label and condition, and the validation rule."""
    rels = [e.path.relative_to(root).as_posix() for e in entries]
    return {
        "format": _CACHE_FORMAT,
        "root": root,
        "domain": domain,
        "split": split,
        "files": files_key(root, domain, split, rels),
        "allow_negative": allow_negative,
        "labels": [e.label for e in entries],
        "conditions": [e.condition for e in entries],
    }


def _load_via_node_cache(
    cache_dir: Path, root: str, domain: str, split: str, entries: list[FileEntry], allow_negative: bool
):
    """The images from the node cache's "arrays" entry, decoding (once per node) on a miss."""
    files, labels, conditions = _listing(root, entries)  # from the scan: the key holds them, the entry need not
    try:
        key = cache_key(root, domain, split, entries, allow_negative)
    except OSError as exc:  # a file vanished since the scan: decoding names it
        warnings.warn(f"{CACHE_ENV}={cache_dir}: node cache unusable ({exc}); decoding without it", stacklevel=3)
        return _decode(root, entries, allow_negative)
    decoded = []  # DiskCache re-runs `compute` in memory when the disk refuses the entry: decode once all the same

    def compute(writer) -> None:
        if not decoded:
            decoded.append(_decode_images(entries, allow_negative))  # validation errors propagate: nothing committed
            log.info("decoded %d files of %s/%s/%s into node cache %s", len(entries), root, domain, split, cache_dir)
        writer.put("images", decoded[0])

    images = DiskCache(cache_dir).get("arrays", key, compute).get("images")
    if images is None or images.shape != (len(entries), *IMAGE_SHAPE) or images.dtype != np.float32:  # damaged
        log.warning("ignoring inconsistent node cache entry for %s/%s/%s in %s", root, domain, split, cache_dir)
        return _decode(root, entries, allow_negative)
    # view(np.ndarray): a plain array backed by the shared read-only mapping
    return images.view(np.ndarray), files, labels, conditions


def _ground_truth_severity(root: Path, files: np.ndarray) -> np.ndarray:
    """Severity from the simulator's optional sidecar; NaN for data without one (e.g. the real data)."""
    from hdmap.data.simulate import read_ground_truth

    truth = read_ground_truth(root) or {}
    return np.array([float(truth[f]["severity"]) if f in truth else np.nan for f in files], dtype=np.float64)


def clear_cache() -> None:
    _load_split_cached.cache_clear()
