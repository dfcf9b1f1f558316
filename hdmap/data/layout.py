"""The HDMAP folder layout and its rules — the only place that knows them.

    <root>/domain_{A,B,C,D}/{train/good, test/good, test/fault}/NNNNNN.tiff

Each file: one channel, float32, 31 x 95 (H x W), values >= 0, min-max scaled by the
train maximum and never clipped (test files may exceed 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdmap.errors import DataLayoutError

DOMAINS = ("domain_A", "domain_B", "domain_C", "domain_D")
IMAGE_SHAPE = (31, 95)  # (H, W)
TIFF_SUFFIXES = (".tiff", ".tif", ".TIFF", ".TIF")

# split name -> (sub-folder, label); label 0 = good, 1 = fault
SPLIT_FOLDERS = {
    "train": (("train/good", 0),),
    "test": (("test/good", 0), ("test/fault", 1)),
}
CONDITIONS = ("cold", "warm")


def normalize_domain(name: str) -> str:
    """Accept `C`, `c`, `domain_C` and return `domain_C`."""
    text = str(name).strip()
    candidate = text if text.startswith("domain_") else f"domain_{text.upper()}"
    if candidate not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}: expected one of A, B, C, D (or {', '.join(DOMAINS)})")
    return candidate


def condition_of(file_index: int, folder_size: int) -> str:
    """Cold/warm rule for test files: the first half of each test folder is cold, the second warm.

    The real 1000-file folders therefore have index < 500 cold. Train files carry no condition.
    """
    return "cold" if file_index < folder_size / 2 else "warm"


@dataclass(frozen=True)
class FileEntry:
    path: Path
    label: int  # 0 good, 1 fault
    condition: str | None  # None for train files


def scan_split(root: str | Path, domain: str, split: str) -> list[FileEntry]:
    """List a split's files in index order, with labels and conditions; raise DataLayoutError on any gap."""
    root = Path(root)
    domain = normalize_domain(domain)
    if not root.is_dir():
        raise DataLayoutError(f"data root {root} does not exist (expected <root>/domain_{{A,B,C,D}}/...)")
    domain_dir = root / domain
    if not domain_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataLayoutError(
            f"domain folder {domain_dir} does not exist; folders found in {root}: {found or 'none'}"
        )
    entries: list[FileEntry] = []
    for sub, label in SPLIT_FOLDERS[split]:
        folder = domain_dir / sub
        files = sorted(p for p in folder.glob("*") if p.suffix in TIFF_SUFFIXES) if folder.is_dir() else []
        if not files:
            state = "has no .tiff files" if folder.is_dir() else "does not exist"
            raise DataLayoutError(f"split folder {folder} {state} (expected NNNNNN.tiff files)")
        for pos, path in enumerate(files):
            condition = None
            if split == "test":
                condition = condition_of(_file_index(path, pos), len(files))
            entries.append(FileEntry(path, label, condition))
    return entries


def _file_index(path: Path, position: int) -> int:
    """Numeric file stem (000123 -> 123); files with non-numeric names fall back to sorted position."""
    return int(path.stem) if path.stem.isdigit() else position
