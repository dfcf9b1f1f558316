"""What `sweep plan` and `sweep run` check before Ray starts, beyond the spec itself (sweeps.spec).

A mistake found here costs a second; found by the trials, it costs a Ray start and one failed trial
per config. Nothing here writes: `sweep plan` runs nothing and leaves no trace.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from hdmap.config import TrialConfig
from hdmap.data.arrays import check_headers
from hdmap.data.fingerprint import changed_parts, data_fingerprint, root_parts, splits_read
from hdmap.data.splits import build_trial_data, check_sizes
from hdmap.errors import ConfigError, DataLayoutError, OutputError, UserError
from hdmap.trial import check_fit_set
from sweeps.redact import redact, redact_uri
from sweeps.spec import Plan

if TYPE_CHECKING:
    from sweeps.store import ResultStore

FINISHED = frozenset({"ok", "pruned"})  # statuses a resumed sweep does not run again
OUTPUT_PROBE_S = 15.0  # the object-storage output check's budget (sweep plan / run), whatever the scheme
GCS_RETRY_S = 3.0  # gs://: pyarrow's retry budget within it, so its own error comes first
MAX_LISTED = 5  # trials a fit-set error names; the rest are counted


class StaleResultsError(UserError):
    """The sweep's output holds finished trials computed on other data than the data now."""


def _bucket_info(uri: str) -> tuple[str, pafs.FileType]:
    """(bucket, its FileType) within OUTPUT_PROBE_S, else TimeoutError: pyarrow retries an unreachable gs://
    endpoint for many minutes, silently. gs:// is also told to give up (`retry_limit_seconds`)."""
    if uri.split("://", 1)[0] in ("gs", "gcs") and "retry_limit_seconds=" not in uri:
        uri += f"{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_S:g}"
    answer: list = []

    def probe() -> None:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            bucket = path.split("/", 1)[0]
            answer.append((bucket, fs.get_file_info(bucket).type))
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            answer.append(exc)

    thread = threading.Thread(target=probe, name="hdmap-output-probe", daemon=True)
    thread.start()
    thread.join(OUTPUT_PROBE_S)
    if not answer:
        raise TimeoutError(uri)
    if isinstance(answer[0], Exception):
        text = str(answer[0]).split(" error_info=", 1)[0]  # google-cloud-cpp repeats it all as metadata
        raise answer[0] if text == str(answer[0]) else OSError(text)
    return answer[0]


def check_output(sweep_dir: str) -> None:
    """The sweep's output location can take results: local (no file in the way, writable) or object storage."""
    if "://" in sweep_dir:
        shown = redact_uri(sweep_dir)  # credentials in the URI are never echoed
        try:
            bucket, kind = _bucket_info(sweep_dir)
            if kind == pafs.FileType.NotFound:
                raise OutputError(f"output {shown}: bucket {bucket!r} does not exist")
        except OutputError:
            raise
        except TimeoutError:
            raise OutputError(
                f"output {shown}: no answer within {OUTPUT_PROBE_S:g} s (endpoint unreachable or no credentials?)"
            ) from None
        except Exception as exc:  # bad URI, unreachable endpoint, missing credentials
            why = redact(f"{type(exc).__name__}: {exc}", sweep_dir)
            raise OutputError(f"output {shown}: not reachable ({why})") from None
        return
    path = Path(sweep_dir).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"output {sweep_dir}: {existing} is a file, not a directory (spec field `output`)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output {sweep_dir}: {existing} is not writable (spec field `output`)")


def check_data(plan: Plan) -> list[str]:
    """Every domain a trial reads has the layout's folders and readable files; returns what could not be checked.
    From the same listing, each trial is stamped with the fingerprint of the data it reads (`data_fingerprint`).
    The trials of a search chosen as it runs (optuna) are not known yet: each cell's base config stands for them
    (their searched values change neither the data read nor, up front, what is checked; sweeps.spec).

    A root the spec will simulate at launch is skipped with a note (and its trials are not stamped)."""
    data = plan.spec.data
    notes: list[str] = []
    configs = plan.configs
    roots = sorted({t.data.root for t in configs})
    for root in roots:
        if not Path(root).exists():
            if data.simulate is not None:
                _check_simulated_domains(plan, root)
                notes.append(f"{root} does not exist yet: it will be simulated at launch")
                continue
            raise DataLayoutError(
                f"data root {root} does not exist (spec field data.root; expected <root>/domain_{{A,B,C,D}}/...)"
            )
        for data_cfg in {t.data.model_dump_json(): t.data for t in configs if t.data.root == root}.values():
            check_sizes(data_cfg)  # domain folders, train_shots / val_fraction against what the folders hold
        trials = [t for t in configs if t.data.root == root]
        splits = {(d, split, t.data.cold_below) for t in trials for d, split in splits_read(t.data)}
        listings = {}
        for domain, split, cold_below in sorted(splits, key=str):
            # listing rules + every file's header, no decoding
            listings[domain, split] = check_headers(root, domain, split, cold_below)
        parts = root_parts(root, listings)  # once per split: stat only
        for t in trials:
            t.runtime.data_fingerprint = data_fingerprint(t.data, parts)
        check_fit_sets(trials)
    return notes


def check_fit_sets(trials: list[TrialConfig]) -> None:
    """What a model needs of its fit images (`ModelConfig.fit_problem`: bank sizes after the p90 gate, PCA components
    vs images, ...), on the fit set each trial will draw: decoded once per (data, seed), only for models with such
    rules. One ConfigError listing the trials that cannot be fitted (the first few)."""
    by_fit_set: dict[tuple, list[TrialConfig]] = {}
    for t in trials:
        if type(t.model).checks_fit_set:
            by_fit_set.setdefault((t.data.model_dump_json(), t.seed), []).append(t)
    problems: list[str] = []
    for group in by_fit_set.values():
        fit = build_trial_data(group[0].data, group[0].seed).fit
        for t in group:
            try:
                check_fit_set(t, fit)
            except ConfigError as exc:
                problems.append(f"trial {t.trial_id} (seed {t.seed}): {exc}")
    if problems:
        more = f"\n(and {len(problems) - MAX_LISTED} more trials)" if len(problems) > MAX_LISTED else ""
        raise ConfigError("\n".join(problems[:MAX_LISTED]) + more)


def check_fresh(plan: Plan, store: ResultStore) -> list[str]:
    """Refuse to resume on changed data: a finished trial (ok or pruned) whose row was computed on other data than
    `check_data` just listed would count as already done and keep stale metrics, and re-running it would replace
    a result. Rows written before rows recorded a fingerprint cannot be checked: a note says how many."""
    current = {t.trial_id: t.runtime.data_fingerprint for t in plan.trials if t.runtime.data_fingerprint}
    if not current and not plan.cells:
        return []
    rows = store.results(["trial_id", "status", "data_fingerprint"] + (["config_json"] if plan.cells else []))
    rows = rows.to_pylist()
    current |= _searched_fingerprints(plan, rows)
    finished = [r for r in rows if r["trial_id"] in current and r["status"] in FINISHED]
    unknown = {r["trial_id"] for r in finished if r["data_fingerprint"] is None}
    stale = {
        r["trial_id"]: changed_parts(r["data_fingerprint"], current[r["trial_id"]])
        for r in finished
        if r["data_fingerprint"] not in (None, current[r["trial_id"]])
    }
    if stale:
        changed = sorted({part for parts in stale.values() for part in parts})
        raise StaleResultsError(
            f"sweep {plan.spec.name}: its output holds {_trials(len(stale))} computed on other data "
            f"({', '.join(changed)} changed since: sizes, modification times or contents); those results are kept, "
            "never replaced: run the sweep into a new output (--set name=NEW_NAME or --set output=DIR), or restore "
            "the data"
        )
    if unknown:
        return [
            f"the store holds {_trials(len(unknown))} without a data fingerprint (written by an older hdmap): "
            "counted as done, whether they used this data cannot be checked"
        ]
    return []


def _searched_fingerprints(plan: Plan, rows: list[dict]) -> dict[str, str]:
    """A search's stored trials (optuna: not planned by id) -> their cell's data fingerprint now."""
    current = {}
    for row in rows if plan.cells else []:
        found = row["config_json"] and plan.cell_of(row["config_json"])
        fingerprint = found and plan.cells[found[0]].config.runtime.data_fingerprint
        if fingerprint:
            current[row["trial_id"]] = fingerprint
    return current


def _trials(n: int) -> str:
    return f"{n} finished trial{'' if n == 1 else 's'}"


def _check_simulated_domains(plan: Plan, root: str) -> None:
    """A root the spec simulates must hold every domain a trial reads (`data.domain: all` reads all four)."""
    from hdmap.data.layout import normalize_domain

    try:
        simulated = {normalize_domain(d) for d in plan.spec.data.simulate.domains}
    except ValueError as exc:
        raise DataLayoutError(f"data.simulate.domains: {exc}") from None
    read = {
        d for t in plan.configs if t.data.root == root for d in t.data.train_domains() + t.data.resolved_test_domains()
    }
    missing = sorted(read - simulated)
    if missing:
        raise DataLayoutError(
            f"trials read {', '.join(missing)} but data.simulate.domains is {plan.spec.data.simulate.domains}; "
            f"add {', '.join(d.removeprefix('domain_') for d in missing)} to data.simulate.domains"
        )
