"""One trial: config -> data -> Lightning fit + predict (hdmap.fit) -> metrics -> rows. No Ray, no W&B here.

`hdmap trial` calls `run_trial`; so does every trial of a sweep, so a debugged trial is the trial.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hdmap.config import TrialConfig
from hdmap.data.arrays import SplitArrays
from hdmap.data.fingerprint import changed_parts, data_fingerprint
from hdmap.data.splits import TrialData, build_trial_data
from hdmap.errors import ConfigError, DataLayoutError, OutputError
from hdmap.io import atomic_write, atomic_write_table
from hdmap.metrics import evaluate, val_synth_auroc
from hdmap.results import SCORE_SCHEMA, flatten_config, results_schema, to_table

if TYPE_CHECKING:
    from hdmap.fit import FitOutputs


@dataclass
class TrialResult:
    rows: list[dict]  # one per test domain (one error row if the trial failed)
    scores: pa.Table  # one row per scored test image

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def results_table(self) -> pa.Table:
        return to_table(self.rows, results_schema())


def check_fit_set(cfg: TrialConfig, fit: SplitArrays) -> None:
    """ConfigError when the model cannot be fitted on this fit set (`ModelConfig.fit_problem`: bank sizes after the
    p90 gate, PCA components vs images, ...); the trial and `sweep plan` check it before any model is built."""
    problem = cfg.model.fit_problem(fit.images, cfg.data.model_input_size)
    if problem:
        raise ConfigError(f"{problem} (model {cfg.model.name}: {len(fit)} fit images from {cfg.data.domain})")


def import_trial_code(cfg: TrialConfig) -> None:
    """Import what fitting `cfg` runs (torch, Lightning, the model's module, in seconds): `hdmap trial` does so before
    it says the trial started (a signal then meets the fit, not an import), a sweep worker before it freezes what its
    imports created."""
    import hdmap.fit  # noqa: F401 - imported for its imports
    from hdmap.models.registry import MODELS

    MODELS[cfg.model.name].build  # noqa: B018 - resolving the builder imports the model's module


def run_trial(cfg: TrialConfig, callbacks: list | None = None) -> TrialResult:
    """Fit and evaluate one config. Raises on failure; `failed_trial` turns an exception into a row."""
    from hdmap.fit import PeakMemory, fit_and_predict, seed_and_quiet  # torch, Lightning: only trials that fit

    memory = PeakMemory()
    try:
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        seed_and_quiet(cfg)
        data = build_trial_data(cfg.data, cfg.seed)
        check_fit_set(cfg, data.fit)
        outputs = fit_and_predict(cfg, data, callbacks)
        base = _base_row(cfg)
        base.update(
            status="ok",
            n_fit=len(data.fit),
            epochs_run=outputs.epochs_run,
            references_removed=data.references_removed,
            val_synth_auroc=val_synth_auroc(outputs.val["score"], outputs.val_synth["score"]),
            pretrained_weights=cfg.model.weights_label(),
            features_s=outputs.features_s,
            fit_s=outputs.fit_s,
            cache_hits=outputs.cache.hits if outputs.cache else None,
            cache_misses=outputs.cache.misses if outputs.cache else None,
            predict_s=outputs.predict_s,
            **memory.stop(),
            device=outputs.device,
            started_at=started,
        )
        return _result(cfg, data, outputs, base, t0)
    finally:  # a trial that raises too: the fallback sampler thread must not outlive it in a reused actor
        memory.stop()


def _result(cfg: TrialConfig, data: TrialData, outputs: FitOutputs, base: dict, t0: float) -> TrialResult:
    """One row per test domain (`base` + its metrics) and its per-image scores."""
    rows, score_parts = [], []
    for domain, split in data.tests.items():
        out = outputs.tests[domain]
        gates = None if out.get("gate") is None else np.where(out["gate"] > 0.5, "warm", "cold")
        severity_pred = out.get("severity")
        has_truth = severity_pred is not None and np.isfinite(split.severity).any()
        metrics = evaluate(
            out["score"],
            split.labels,
            split.conditions,
            val_scores=outputs.val["score"][data.val_for[domain]],
            threshold_method=cfg.eval.threshold_method,
            threshold_percentile=cfg.eval.threshold_percentile,
            threshold_n_std=cfg.eval.threshold_n_std,
            gate_pred=gates,
            severity_pred=severity_pred,
            severity_true=split.severity if has_truth else None,
        )
        rows.append({**base, **metrics, "test_domain": domain})
        score_parts.append(_score_table(cfg.trial_id, domain, split, out, gates))
    total = time.perf_counter() - t0
    for row in rows:
        row["total_s"] = total
    return TrialResult(rows=rows, scores=pa.concat_tables(score_parts))


def failed_trial(cfg: TrialConfig, exc: BaseException) -> TrialResult:
    """The error row recorded for a trial that raised: same schema, status=error, the traceback's tail."""
    row = _base_row(cfg)
    tail = "".join(traceback.format_exception(exc))[-4000:]
    row.update(
        status="error", error=f"{type(exc).__name__}: {exc}\n{tail}", started_at=dt.datetime.now(dt.timezone.utc)
    )
    return TrialResult(rows=[row], scores=SCORE_SCHEMA.empty_table())


def stamp_data(cfg: TrialConfig) -> None:
    """Record the fingerprint of the data `cfg` reads: its rows carry it, `prepare_output_dir` compares it. Data the
    layout rules reject stays unstamped: the trial itself reports the problem, with its error row."""
    try:
        cfg.runtime.data_fingerprint = data_fingerprint(cfg.data)
    except (DataLayoutError, OSError):
        cfg.runtime.data_fingerprint = None


def prepare_output_dir(out_dir: str | Path, trial_id: str, fingerprint: str | None = None) -> Path:
    """Check, before anything is fitted, that `out_dir` can take this trial's results without losing others'.

    A directory holding another trial's results is refused: results are never overwritten by a different trial;
    nor by the same trial on other data (`fingerprint`: `stamp_data`'s), since that is a different result too."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; expected a directory (default runs/<trial_id>)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    held = _held_trial_ids(out / "results.parquet")
    others = sorted(held - {trial_id})
    if others:
        raise OutputError(
            f"--out {out} holds the results of trial {others[0]}, not {trial_id}; results are never "
            f"overwritten by another trial: choose another --out (default runs/<trial_id>)"
        )
    if fingerprint is not None:
        _refuse_other_data(out, trial_id, fingerprint)
    return out


def _refuse_other_data(out: Path, trial_id: str, fingerprint: str) -> None:
    """An ok row of this trial on other data, or on data it cannot be compared with (a row written before rows
    recorded a fingerprint), is a result this run must not replace."""
    for held in _ok_fingerprints(out / "results.parquet"):
        if held == fingerprint:
            continue
        if held is None:
            why = "recorded without a data fingerprint (by an older hdmap): whether it used this data cannot be checked"
            rule = "it is never overwritten: choose another --out"
        else:
            changed = ", ".join(changed_parts(held, fingerprint))
            why = f"computed on other data ({changed} changed since: sizes, modification times or contents)"
            rule = "a result is never overwritten by a run on other data: choose another --out, or restore the data"
        raise OutputError(f"--out {out} holds a result of trial {trial_id} {why}; {rule}")


def write_outputs(result: TrialResult, out_dir: str | Path, cfg: TrialConfig | None = None) -> Path:
    """`results.parquet`, `scores.parquet` (and `config.yaml`) in out_dir; each written atomically, results last:
    like a sweep's results part, it is the commit marker, so a run stopped mid-way (a signal, a full disk) never
    leaves results without their scores.

    A failed run never replaces a successful result of the same trial: its error row goes beside it, to
    `results.failed-<UTC time>.parquet`. Returns the results file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "results.parquet"
    if not result.ok and _has_ok_rows(target):
        target = out / f"results.failed-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}.parquet"
        atomic_write_table(result.results_table(), target)
        return target
    atomic_write_table(result.scores, out / "scores.parquet")
    if cfg is not None:
        import yaml

        atomic_write(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    atomic_write_table(result.results_table(), target)
    return target


def _held_trial_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return set(pq.read_table(path, columns=["trial_id"])["trial_id"].to_pylist())


def _ok_fingerprints(path: Path) -> set[str | None]:
    """The data fingerprints of a results file's ok rows; None for a row without one (an older file)."""
    if not path.is_file():
        return set()
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in ("status", "data_fingerprint") if c in names])
    held = table["data_fingerprint"].to_pylist() if "data_fingerprint" in names else [None] * table.num_rows
    return {fp for status, fp in zip(table["status"].to_pylist(), held) if status == "ok"}


def _has_ok_rows(path: Path) -> bool:
    return path.is_file() and "ok" in pq.read_table(path, columns=["status"])["status"].to_pylist()


def _score_table(trial_id: str, domain: str, split: SplitArrays, out: dict, gates) -> pa.Table:
    n = len(split)
    severity = out.get("severity")
    return pa.table(
        {
            "trial_id": [trial_id] * n,
            "sweep": pa.nulls(n, pa.string()),
            "test_domain": [domain] * n,
            "file": list(split.files),
            "label": split.labels.astype(np.int8),
            "condition": list(split.conditions),
            "score": out["score"].astype(np.float64),
            "gate": list(gates) if gates is not None else pa.nulls(n, pa.string()),
            "severity_pred": severity.astype(np.float64) if severity is not None else pa.nulls(n, pa.float64()),
            "severity_true": np.where(np.isfinite(split.severity), split.severity, np.nan),
        },
        schema=SCORE_SCHEMA,
    )


def _base_row(cfg: TrialConfig) -> dict:
    canonical = cfg.canonical()
    return {
        **flatten_config(canonical),
        "trial_id": cfg.trial_id,
        "model": cfg.model.name,
        "train_domain": cfg.data.domain,
        "seed": cfg.seed,
        "host": socket.gethostname(),
        "git_sha": _git_sha(),
        "versions": json.dumps(_versions(), sort_keys=True),
        "data_fingerprint": cfg.runtime.data_fingerprint,
        "config_json": json.dumps(canonical, sort_keys=True),
    }


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("hdmap-sweeps", "torch", "lightning", "anomalib", "timm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    if os.environ.get("HDMAP_GIT_SHA"):
        return os.environ["HDMAP_GIT_SHA"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
