"""Test helper: decode a W&B offline run directory (its transaction log) into plain dicts.

wandb 0.31 writes config, summary and history of an offline run into ``run-<id>.wandb`` only; tests read
what was logged from there. Uses wandb's own protobuf definitions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
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


def _read_record(record, out: dict[str, Any], apply: Callable) -> None:
    """One record of an offline run into `out` (read_offline_run's shape)."""
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        out["run"] = {
            "id": r.run_id,
            "project": r.project,
            "entity": r.entity,
            "group": r.run_group,
            "job_type": r.job_type,
            "name": r.display_name,
        }
        for item in r.config.update:
            apply(out["config"], item)
    elif kind in ("config", "summary"):
        for item in getattr(record, kind).update:
            apply(out[kind], item)
    elif kind == "history":
        step: dict = {}
        for item in record.history.item:
            apply(step, item)
        out["history"].append(step)
    elif kind == "files":
        out["files"] += [f.path for f in record.files.files]


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Decode an offline run directory (``.../wandb/offline-run-*``).

    Returns ``{"run": {id, project, entity, group, job_type, name}, "config": {...}, "summary": {...},
    "history": [{...}, ...], "files": [...]}``. Nested keys (``a/b`` histograms, tables) come back as
    nested dicts.
    """
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
        _read_record(record, out, apply)
    out["config"].pop("_wandb", None)
    return out
