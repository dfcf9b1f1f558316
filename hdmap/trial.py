"""One trial: config -> data -> Lightning fit + predict -> metrics -> rows. No Ray, no W&B here.

`hdmap trial` calls `run_trial`; so does every trial of a sweep, so a debugged trial is the trial.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import socket
import subprocess
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from hdmap.cache import DiskCache
from hdmap.config import TrialConfig
from hdmap.data.arrays import SplitArrays
from hdmap.data.fingerprint import changed_parts, data_fingerprint
from hdmap.data.splits import build_trial_data
from hdmap.data.transforms import HdmapTransform
from hdmap.errors import ConfigError, DataLayoutError, OutputError
from hdmap.features import FeatureLookup, cached_features
from hdmap.io import atomic_write, atomic_write_table
from hdmap.metrics import evaluate
from hdmap.models.registry import MODELS
from hdmap.results import SCORE_SCHEMA, flatten_config, results_schema, to_table


@dataclass
class TrialResult:
    rows: list[dict]  # one per test domain (one error row if the trial failed)
    scores: pa.Table  # one row per scored test image

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def results_table(self) -> pa.Table:
        return to_table(self.rows, results_schema())


class _ArrayDataset(Dataset):
    def __init__(self, split: SplitArrays, features: FeatureLookup | None = None) -> None:
        self.files = split.files
        self.features = features
        self.images = torch.from_numpy(np.require(split.images, np.float32, ["C", "W"]))
        self.labels = torch.from_numpy(split.labels)
        self.conditions = torch.tensor([{"cold": 0, "warm": 1}.get(c, -1) for c in split.conditions], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        # condition: 0 cold, 1 warm, -1 unknown (train/val normals) — for oracle gating only
        item = {"raw": self.images[i], "label": self.labels[i], "index": i, "condition": self.conditions[i]}
        if self.features is not None:
            item["features"] = self.features[self.files[i]]
        return item


def check_fit_set(cfg: TrialConfig, fit: SplitArrays) -> None:
    """ConfigError when the model cannot be fitted on this fit set (`ModelConfig.fit_problem`: bank sizes after the
    p90 gate, PCA components vs images, ...); the trial and `sweep plan` check it before any model is built."""
    problem = cfg.model.fit_problem(fit.images, cfg.data.model_input_size)
    if problem:
        raise ConfigError(f"{problem} (model {cfg.model.name}: {len(fit)} fit images from {cfg.data.domain})")


def run_trial(cfg: TrialConfig, callbacks: list | None = None) -> TrialResult:
    """Fit and evaluate one config. Raises on failure; `failed_trial` turns an exception into a row."""
    memory = PeakMemory()
    try:
        return _fit_and_evaluate(cfg, callbacks, memory)
    finally:  # a trial that raises too: the fallback sampler thread must not outlive it in a reused actor
        memory.stop()


def _fit_and_evaluate(cfg: TrialConfig, callbacks: list | None, memory: PeakMemory) -> TrialResult:
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    _quiet_libraries(cfg.runtime.progress)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data = build_trial_data(cfg.data, cfg.seed)
    check_fit_set(cfg, data.fit)
    transform = HdmapTransform.for_data(cfg.data)
    module = MODELS[cfg.model.name].build(cfg.model, transform, cfg.seed)
    cache = DiskCache(cfg.runtime.feature_cache) if cfg.runtime.feature_cache else None
    features: FeatureLookup | None = None

    def loader(split: SplitArrays, shuffle: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(
            _ArrayDataset(split, features),
            batch_size=cfg.model.batch_size,
            shuffle=shuffle,
            num_workers=cfg.runtime.num_workers,
            generator=generator,
        )

    trainer = L.Trainer(
        accelerator=cfg.runtime.accelerator,
        devices=1,
        max_epochs=module.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.runtime.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if module.uses_validation else 0,
        deterministic="warn",
        callbacks=callbacks or [],
        **module.trainer_kwargs(),
    )
    t_features = time.perf_counter()
    if cache is not None:
        module.disk_cache = cache
        model_key = module.feature_key()
        if model_key is not None:
            features = cached_features(
                cache, module, model_key, cfg.data, trainer.strategy.root_device, cfg.model.batch_size
            )
    features_s = time.perf_counter() - t_features
    t_fit = time.perf_counter()
    if len(data.fit):  # a zero-shot model (data.train_shots = 0) has nothing to fit
        trainer.fit(module, loader(data.fit, shuffle=True), loader(data.val) if module.uses_validation else None)
    fit_s = time.perf_counter() - t_fit

    t_pred = time.perf_counter()
    val_out = _predict(trainer, module, loader(data.val), cfg)
    test_out = {domain: _predict(trainer, module, loader(split), cfg) for domain, split in data.tests.items()}
    predict_s = time.perf_counter() - t_pred

    base = _base_row(cfg)
    base.update(
        status="ok",
        n_fit=len(data.fit),
        epochs_run=trainer.current_epoch,
        references_removed=data.references_removed,
        pretrained_weights=cfg.model.weights_label(),
        features_s=features_s,
        fit_s=fit_s,
        cache_hits=cache.hits if cache else None,
        cache_misses=cache.misses if cache else None,
        predict_s=predict_s,
        **memory.stop(),
        device=str(trainer.strategy.root_device),
        started_at=started,
    )
    rows, score_parts = [], []
    for domain, split in data.tests.items():
        out = test_out[domain]
        gates = None if out.get("gate") is None else np.where(out["gate"] > 0.5, "warm", "cold")
        severity_pred = out.get("severity")
        has_truth = severity_pred is not None and np.isfinite(split.severity).any()
        metrics = evaluate(
            out["score"],
            split.labels,
            split.conditions,
            val_scores=val_out["score"][data.val_for[domain]],
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


class PeakMemory:
    """Peak RSS and GPU memory of this trial alone, also when a Ray actor runs many trials in one process.

    The process high-water marks are reset at the start: Linux's VmHWM through /proc/self/clear_refs ("5"),
    CUDA's through reset_peak_memory_stats. Where clear_refs is unavailable a 50 ms sampling thread stands in."""

    def __init__(self) -> None:
        self._sampled = 0
        self._sampler: threading.Thread | None = None
        self._done = threading.Event()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._done.wait(0.05):
            self._sampled = max(self._sampled, process.memory_info().rss)

    def stop(self) -> dict[str, float | None]:
        """The trial's peaks; ends the sampler (calling it again is harmless)."""
        self._done.set()
        if self._sampler is None:
            status = Path("/proc/self/status").read_text()
            rss_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
        else:
            self._sampler.join()
            rss_mb = self._sampled / 2**20
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return {"peak_rss_mb": rss_mb, "peak_gpu_mb": gpu_mb}


def _quiet_libraries(progress: bool) -> None:
    """Keep a trial's output readable: library chatter that is expected here is not news."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (
        ".*configure_optimizers` returned `None`.*",
        ".*module\\(s\\) in eval mode.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*does not have many workers.*",
        ".*but have no logger configured.*",
        ".*`validation_step` but have no `val_dataloader`.*",
        ".*infer the `batch_size` from an ambiguous collection.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)\..*")


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


def _predict(trainer: L.Trainer, module, dataloader: DataLoader, cfg: TrialConfig) -> dict[str, np.ndarray]:
    batches = trainer.predict(module, dataloader)
    declared = {"score"} | cfg.model.outputs()
    if set(batches[0]) != declared:  # the model contract: what a row reports is what the config declares
        raise RuntimeError(
            f"model {cfg.model.name!r} predicts {sorted(batches[0])}, its config declares {sorted(declared)}"
        )
    return {key: torch.cat([b[key] for b in batches]).float().cpu().numpy() for key in batches[0]}


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
