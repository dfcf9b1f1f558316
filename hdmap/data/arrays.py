"""Decode a split's TIFFs once per process into one float32 array (tifffile, never PIL, never clipped)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from hdmap.data.layout import IMAGE_SHAPE, DataLayoutError, normalize_domain, scan_split


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

    def take(self, index: np.ndarray) -> "SplitArrays":
        index = np.asarray(index, dtype=np.int64)
        return SplitArrays(
            self.domain, self.images[index], self.labels[index], self.conditions[index], self.files[index], self.severity[index]
        )


def read_tiff(path: Path) -> np.ndarray:
    """One HDMAP file -> (31, 95) float32, or a DataLayoutError naming the file and what was found."""
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for corrupt / non-TIFF input
        raise DataLayoutError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    if array.dtype != np.float32:
        raise DataLayoutError(f"{path}: dtype {array.dtype}, expected float32 (31x95 single channel)")
    if array.shape != IMAGE_SHAPE:
        raise DataLayoutError(f"{path}: shape {array.shape}, expected {IMAGE_SHAPE} (H x W, single channel)")
    return array


def load_split(root: str | Path, domain: str, split: str) -> SplitArrays:
    """Cached per process and per (root, domain, split): trials in one worker decode each split once."""
    return _load_split_cached(str(Path(root).resolve()), normalize_domain(domain), split)


@functools.lru_cache(maxsize=32)
def _load_split_cached(root: str, domain: str, split: str) -> SplitArrays:
    entries = scan_split(root, domain, split)
    images = np.stack([read_tiff(e.path) for e in entries])
    images.setflags(write=False)
    files = np.array([e.path.relative_to(root).as_posix() for e in entries], dtype=object)
    severity = _ground_truth_severity(Path(root), files)
    return SplitArrays(
        domain=domain,
        images=images,
        labels=np.array([e.label for e in entries], dtype=np.int64),
        conditions=np.array([e.condition for e in entries], dtype=object),
        files=files,
        severity=severity,
    )


def _ground_truth_severity(root: Path, files: np.ndarray) -> np.ndarray:
    """Severity from the simulator's optional sidecar; NaN for data without one (e.g. the real data)."""
    from hdmap.data.simulate import read_ground_truth

    truth = read_ground_truth(root) or {}
    return np.array([float(truth[f]["severity"]) if f in truth else np.nan for f in files], dtype=np.float64)


def clear_cache() -> None:
    _load_split_cached.cache_clear()
