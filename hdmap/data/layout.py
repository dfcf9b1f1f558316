"""The HDMAP folder layout and its rules — the only place that knows them.

    <root>/domain_{A,B,C,D}/{train/good, test/good, test/fault}/NNNNNN.tiff
    <root>/conditions.csv          optional: cold/warm of each test file (see below)

Each file: one channel, float32, 31 x 95 (H x W), finite, values >= 0 (unless `data.allow_negative`),
min-max scaled by the train maximum and never clipped (test files may exceed 1). Values are checked
when a split is decoded (`hdmap.data.arrays`); names and numbering here, when it is listed.

Folder contents, one rule: names starting with "." are skipped without a word (macOS AppleDouble
`._*` files, `.DS_Store`, editor temporaries: operating-system metadata, never data). Every other
entry must be a `.tif`/`.tiff` file (any case); anything else (`notes.txt`, `Thumbs.db`, a
sub-folder) is an error naming the folder, so nothing a user meant as data is silently left out.

Cold/warm (test files only; train files carry no condition and may have any TIFF name), stated one way:

1. The index rule (default): test files are named `<digits>.tif[f]` and numbered 0..N-1 in each test
   folder; number < N/2 is cold (the real 1000-file folders: 000000-000499 cold). Any other name,
   numbering not starting at 0, gaps or duplicate numbers are errors: they would mislabel silently.
2. `data.cold_below: K`: names `<digits>.tif[f]`, any numbering (gaps allowed); number < K is cold.
3. `<root>/conditions.csv`, columns `file,condition`, `file` relative to the root
   (`domain_C/test/good/000123.tiff,cold`): any TIFF names; every test file of a used domain needs a
   row; rows for train files are ignored; a row naming an unknown condition, an absent test file, or
   a file twice is an error naming the row. Not combinable with `data.cold_below`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hdmap.errors import DataLayoutError

DOMAINS = ("domain_A", "domain_B", "domain_C", "domain_D")
ALL_DOMAINS = "all"  # data.domain: one model fitted on the train normals of every domain
IMAGE_SHAPE = (31, 95)  # (H, W)
TIFF_SUFFIXES = (".tif", ".tiff")  # compared in lower case
NUMBERED_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)
CONDITIONS_FILE = "conditions.csv"

# split name -> (sub-folder, label); label 0 = good, 1 = fault
SPLIT_FOLDERS = {
    "train": (("train/good", 0),),
    "test": (("test/good", 0), ("test/fault", 1)),
}
CONDITIONS = ("cold", "warm")
_SHOWN = 3  # offending names quoted in a message


def normalize_domain(name: str) -> str:
    """Accept `C`, `c`, `domain_C` and return `domain_C`."""
    text = str(name).strip()
    candidate = text if text.startswith("domain_") else f"domain_{text.upper()}"
    if candidate not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}: expected one of A, B, C, D (or {', '.join(DOMAINS)})")
    return candidate


def normalize_train_domain(name: str) -> str:
    """`data.domain`: a domain as `normalize_domain` accepts it, or `all` (any case)."""
    if str(name).strip().lower() == ALL_DOMAINS:
        return ALL_DOMAINS
    try:
        return normalize_domain(name)
    except ValueError as exc:
        raise ValueError(f"{exc}, or {ALL_DOMAINS} (one model on every domain's train normals)") from None


def condition_of(file_index: int, folder_size: int) -> str:
    """The index rule: in a test folder numbered 0..N-1, the first half is cold, the second warm."""
    return "cold" if file_index < folder_size / 2 else "warm"


@dataclass(frozen=True)
class FileEntry:
    path: Path
    label: int  # 0 good, 1 fault
    condition: str | None  # None for train files


def scan_split(root: str | Path, domain: str, split: str, cold_below: int | None = None) -> list[FileEntry]:
    """List a split's files with labels and conditions (test: in number order); DataLayoutError on any rule broken."""
    root = Path(root)
    domain = normalize_domain(domain)
    if not root.is_dir():
        raise DataLayoutError(f"data root {root} does not exist (expected <root>/domain_{{A,B,C,D}}/...)")
    domain_dir = root / domain
    if not domain_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataLayoutError(f"domain folder {domain_dir} does not exist; folders found in {root}: {found or 'none'}")
    table = read_conditions(root) if split == "test" else None
    if table is not None and cold_below is not None:
        raise DataLayoutError(
            f"{root / CONDITIONS_FILE} and data.cold_below={cold_below} both state the cold/warm "
            f"split; keep one (delete the file or unset data.cold_below)"
        )
    entries: list[FileEntry] = []
    for sub, label in SPLIT_FOLDERS[split]:
        folder = domain_dir / sub
        files = tiff_files(folder)
        if split == "train":
            conditions = [None] * len(files)
        elif table is not None:
            conditions = _conditions_from_table(root, folder, files, table)
        else:
            files, conditions = _conditions_by_number(root, folder, files, cold_below)
        entries += [FileEntry(path, label, c) for path, c in zip(files, conditions)]
    return entries


def tiff_files(folder: Path) -> list[Path]:
    """A split folder's TIFF files sorted by name: hidden entries skipped, anything else an error."""
    try:
        with os.scandir(folder) as it:
            visible = [(e.name, e.is_file()) for e in it if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        raise DataLayoutError(f"split folder {folder} does not exist (expected NNNNNN.tiff files)") from None
    _check_links(folder, [name for name, is_file in visible if not is_file])
    others = sorted(name for name, is_file in visible if not (is_file and _is_tiff_name(name)))
    if others:
        raise DataLayoutError(
            f"{folder}: {len(others)} entries that are not .tif/.tiff files "
            f"({_examples(others)}); move them out of the data folders (names starting "
            f"with '.' are skipped)"
        )
    if not visible:
        raise DataLayoutError(f"split folder {folder} has no .tiff files (expected NNNNNN.tiff files)")
    return [folder / name for name, _ in sorted(visible)]


def _check_links(folder: Path, not_files: list[str]) -> None:
    """A symlink whose target is gone is not a file either; name it as what it is, not as a stray non-TIFF entry."""
    broken = sorted(n for n in not_files if os.path.islink(folder / n) and not os.path.exists(folder / n))
    if broken:
        more = f" ({len(broken)} broken symlinks: {_examples(broken)})" if len(broken) > 1 else ""
        raise DataLayoutError(
            f"broken symlink {folder / broken[0]} -> {os.readlink(folder / broken[0])}: its target does not exist"
            f"{more}; restore the target or remove the link"
        )


def _is_tiff_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in TIFF_SUFFIXES


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown}, ... {len(names) - _SHOWN} more"


def _how_to_state(root: Path, example: Path) -> str:
    rel = example.relative_to(root).as_posix()
    return (
        f"state the split with data.cold_below: K (number < K is cold) or with {root / CONDITIONS_FILE} "
        f"(columns file,condition; e.g. {rel},cold)"
    )


def _conditions_by_number(
    root: Path, folder: Path, files: list[Path], cold_below: int | None
) -> tuple[list[Path], list[str]]:
    """The index rule or `cold_below`: files in number order and their conditions; errors name the folder."""
    unnumbered = [p.name for p in files if not NUMBERED_NAME.match(p.name)]
    if unnumbered:
        raise DataLayoutError(
            f"{folder}: test file names must be <digits>.tiff (or .tif) to assign cold/warm by "
            f"number; found {_examples(unnumbered)}; rename or move them, or "
            f"{_how_to_state(root, folder / unnumbered[0])}"
        )
    numbered = sorted((int(NUMBERED_NAME.match(p.name).group(1)), p) for p in files)
    numbers = [n for n, _ in numbered]
    repeated = sorted({n for n, m in zip(numbers, numbers[1:]) if n == m})
    if repeated:
        names = [p.name for n, p in numbered if n == repeated[0]]
        raise DataLayoutError(
            f"{folder}: number {repeated[0]} is used by {len(names)} files ({', '.join(names)}); "
            f"each test file needs its own number"
        )
    files = [p for _, p in numbered]
    if cold_below is not None:
        return files, ["cold" if n < cold_below else "warm" for n in numbers]
    n = len(numbers)
    if numbers != list(range(n)):
        missing = sorted(set(range(n)) - set(numbers))
        raise DataLayoutError(
            f"{folder}: the index rule (number < N/2 is cold) needs the {n} files numbered 0..{n - 1}; found "
            f"{files[0].name}..{files[-1].name} ({len(missing)} numbers of 0..{n - 1} missing, e.g. "
            f"{_examples([str(m) for m in missing])}); {_how_to_state(root, files[0])}"
        )
    return files, [condition_of(i, n) for i in numbers]


def read_conditions(root: Path) -> dict[str, tuple[str, int]] | None:
    """`<root>/conditions.csv` as {test file relative to root: (condition, line)}, or None when absent."""
    path = root / CONDITIONS_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"{path}: unreadable ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"file", "condition"} <= {f.strip() for f in reader.fieldnames}:
        raise DataLayoutError(f"{path}: line 1 must name the columns file,condition (found {reader.fieldnames})")
    table: dict[str, tuple[str, int]] = {}
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}  # None: surplus fields
        line = reader.line_num
        file = row["file"].replace("\\", "/").removeprefix("./")
        parts = file.split("/")
        is_test = len(parts) == 4 and parts[0] in DOMAINS and parts[1] == "test" and parts[2] in ("good", "fault")
        if len(parts) == 4 and parts[0] in DOMAINS and parts[1:3] == ["train", "good"]:
            continue  # train files carry no condition
        if not is_test:
            raise DataLayoutError(
                f"{path} line {line}: file {row['file']!r} is not a test file path "
                f"(expected domain_X/test/good|fault/NAME.tiff, relative to {root})"
            )
        condition = row["condition"].lower()
        if condition not in CONDITIONS:
            raise DataLayoutError(
                f"{path} line {line}: condition {row['condition']!r} for {file}; expected cold or warm"
            )
        if file in table:
            raise DataLayoutError(f"{path} line {line}: {file} already has a row (line {table[file][1]})")
        table[file] = (condition, line)
    return table


def _conditions_from_table(root: Path, folder: Path, files: list[Path], table: dict[str, tuple[str, int]]) -> list[str]:
    """Every file of the folder needs a row, and every row of the folder needs its file."""
    source = root / CONDITIONS_FILE
    rels = [p.relative_to(root).as_posix() for p in files]
    unlisted = [rel for rel in rels if rel not in table]
    if unlisted:
        raise DataLayoutError(
            f"{source}: no row for {len(unlisted)} test files of {folder} "
            f"({_examples(unlisted)}); every test file needs a row file,cold|warm"
        )
    prefix = folder.relative_to(root).as_posix() + "/"
    present = set(rels)
    stale = sorted((line, file) for file, (_, line) in table.items() if file.startswith(prefix) and file not in present)
    if stale:
        line, file = stale[0]
        raise DataLayoutError(
            f"{source} line {line}: {file} does not exist (or is skipped as hidden); "
            f"{len(stale)} such rows for {folder}"
        )
    return [table[rel][0] for rel in rels]
