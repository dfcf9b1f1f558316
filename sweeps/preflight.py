"""What `sweep plan` and `sweep run` check before Ray starts, beyond the spec itself (sweeps.spec).

A mistake found here costs a second; found by the trials, it costs a Ray start and one failed trial
per config. Nothing here writes: `sweep plan` runs nothing and leaves no trace.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from hdmap.data.arrays import check_headers
from hdmap.data.splits import check_sizes
from hdmap.errors import DataLayoutError, OutputError
from sweeps.spec import Plan


def check_output(sweep_dir: str) -> None:
    """The sweep's output location can take results: local (no file in the way, writable) or object storage."""
    if "://" in sweep_dir:
        try:
            fs, path = pafs.FileSystem.from_uri(sweep_dir)
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise OutputError(f"output {sweep_dir}: bucket {bucket!r} does not exist")
        except OutputError:
            raise
        except Exception as exc:  # bad URI, unreachable endpoint, missing credentials
            raise OutputError(f"output {sweep_dir}: not reachable ({type(exc).__name__}: {exc})") from None
        return
    path = Path(sweep_dir).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"output {sweep_dir}: {existing} is a file, not a directory (spec field `output`)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output {sweep_dir}: {existing} is not writable (spec field `output`)")


def check_data(plan: Plan) -> list[str]:
    """Every domain a trial reads has the layout's folders and readable files; returns what could not be checked.

    A root the spec will simulate at launch is skipped with a note."""
    data = plan.spec.data
    notes: list[str] = []
    roots = sorted({t.data.root for t in plan.trials})
    for root in roots:
        if not Path(root).exists():
            if data.simulate is not None:
                _check_simulated_domains(plan, root)
                notes.append(f"{root} does not exist yet: it will be simulated at launch")
                continue
            raise DataLayoutError(
                f"data root {root} does not exist (spec field data.root; expected <root>/domain_{{A,B,C,D}}/...)"
            )
        for data_cfg in {t.data.model_dump_json(): t.data for t in plan.trials if t.data.root == root}.values():
            check_sizes(data_cfg)  # domain folders, train_shots / val_fraction against what the folders hold
        splits = {
            (d, split, t.data.cold_below)
            for t in plan.trials
            if t.data.root == root
            for d, split in [
                *((d, "train") for d in t.data.train_domains()),
                *((d, "test") for d in t.data.resolved_test_domains()),
            ]
        }
        for domain, split, cold_below in sorted(splits, key=str):
            check_headers(root, domain, split, cold_below)  # listing rules + every file's header, no decoding
    return notes


def _check_simulated_domains(plan: Plan, root: str) -> None:
    """A root the spec simulates must hold every domain a trial reads (`data.domain: all` reads all four)."""
    from hdmap.data.layout import normalize_domain

    try:
        simulated = {normalize_domain(d) for d in plan.spec.data.simulate.domains}
    except ValueError as exc:
        raise DataLayoutError(f"data.simulate.domains: {exc}") from None
    read = {
        d for t in plan.trials if t.data.root == root for d in t.data.train_domains() + t.data.resolved_test_domains()
    }
    missing = sorted(read - simulated)
    if missing:
        raise DataLayoutError(
            f"trials read {', '.join(missing)} but data.simulate.domains is {plan.spec.data.simulate.domains}; "
            f"add {', '.join(d.removeprefix('domain_') for d in missing)} to data.simulate.domains"
        )
