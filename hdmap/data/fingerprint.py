"""The data a trial read, as one results field (`data_fingerprint`), so a result computed on other data is never
taken for this data's: a resumed sweep or an `hdmap trial --out` holding the same trial compares it (the trial id
is a hash of the config alone).

It covers exactly what the trial reads: each split (`domain_C/train`, `domain_C/test`: every file's path relative
to the resolved root, size and mtime_ns — stat only, `hdmap.data.arrays.files_key`, the node cache's key) and each
sidecar present at the root (`conditions.csv`, the simulator's `ground_truth.csv`: their contents). It is JSON
{part: short hash}, so a mismatch names the parts that changed. Modification times make it strict: a copy that
does not keep them (`cp -r` without `-p`) counts as a change — a refusal, never a stale result kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hdmap.data.arrays import files_key
from hdmap.data.layout import CONDITIONS_FILE, FileEntry, scan_split
from hdmap.data.simulate import GROUND_TRUTH_FILE

SIDECARS = (CONDITIONS_FILE, GROUND_TRUTH_FILE)
_CHARS = 16  # hex characters kept of each part's sha1


def splits_read(data_cfg) -> list[tuple[str, str]]:
    """(domain, split) of every split a trial with this `DataConfig` reads (hdmap.data.splits.build_trial_data)."""
    pairs = [(d, "train") for d in data_cfg.train_domains()]
    pairs += [(d, "test") for d in data_cfg.resolved_test_domains()]
    if data_cfg.reference_source == "test":  # references come from the train domains' test/good
        pairs += [(d, "test") for d in data_cfg.train_domains()]
    return list(dict.fromkeys(pairs))


def root_parts(root: str | Path, listings: dict[tuple[str, str], list[FileEntry]]) -> dict[str, str]:
    """Short hashes of the listed splits (`scan_split` entries, already made) and of the root's sidecars."""
    resolved = str(Path(root).resolve())
    parts = {
        f"{domain}/{split}": files_key(
            resolved, domain, split, sorted(e.path.relative_to(root).as_posix() for e in entries)
        )[:_CHARS]
        for (domain, split), entries in listings.items()
    }
    for name in SIDECARS:
        try:
            parts[name] = hashlib.sha1((Path(root) / name).read_bytes()).hexdigest()[:_CHARS]
        except FileNotFoundError:
            pass
    return parts


def data_fingerprint(data_cfg, parts: dict[str, str] | None = None) -> str:
    """JSON {part: hash} of what `data_cfg` reads; `parts`: its root's `root_parts` (a sweep's pre-launch listing),
    else its splits are listed here (DataLayoutError on a layout rule broken)."""
    pairs = splits_read(data_cfg)
    if parts is None:
        root = data_cfg.root
        parts = root_parts(root, {(d, s): scan_split(root, d, s, data_cfg.cold_below) for d, s in pairs})
    wanted = [f"{d}/{s}" for d, s in pairs] + [name for name in SIDECARS if name in parts]
    return json.dumps({key: parts[key] for key in wanted}, sort_keys=True, separators=(",", ":"))


def changed_parts(stored: str, current: str) -> list[str]:
    """The parts (splits, sidecars) whose hashes differ between two fingerprints, or that only one of them has."""
    old, new = _parts(stored), _parts(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def _parts(fingerprint: str) -> dict:
    try:
        parts = json.loads(fingerprint)
    except ValueError:
        parts = None
    return parts if isinstance(parts, dict) else {"data": fingerprint}  # not ours: the data as a whole
