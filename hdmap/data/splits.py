"""Which images a trial fits on, calibrates on and is evaluated on — the evaluation-hygiene rules.

- Validation = a seeded fraction of train normals: thresholds and early stopping never see test.
- Fit images = train shots (seeded) from the remaining train normals, by default.
- `reference_source: test` takes references from test/good and removes them from evaluation.
- `data.domain: all` applies these rules to each domain and pools the result: one model is fitted on every
  domain's fit images (`train_shots` per domain), early stopping sees every domain's validation normals.
- Thresholds (`TrialData.val_for`): a test domain the model was fitted on is calibrated on that domain's own
  validation normals, as a per-domain deployment of the shared model would set its alarm level; a domain it was
  not fitted on (cross-domain) on the validation normals of the train domain, the only normals such a
  deployment has.

`check_sizes` compares `train_shots` and `val_fraction` with the files that exist from the folder listing
alone, so a count that cannot work is one error naming the field before any file is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdmap.data.arrays import SplitArrays, concat_splits, load_split
from hdmap.data.layout import ALL_DOMAINS, DataLayoutError, scan_split


@dataclass(frozen=True)
class TrialData:
    fit: SplitArrays
    val: SplitArrays  # validation normals of every train domain (early stopping)
    tests: dict[str, SplitArrays]  # test domain -> evaluated images
    val_for: dict[str, np.ndarray]  # test domain -> indices into `val` that calibrate its threshold
    references_removed: int  # test/good images used as references and excluded from evaluation


def check_sizes(data_cfg) -> None:
    """DataLayoutError naming `data.val_fraction` or the shot count as set (`data.train_shots`, winclip's
    `model.k_shot`) when the data cannot satisfy them."""
    _check_all_domains(data_cfg)
    for domain in data_cfg.train_domains():
        n_train = len(scan_split(data_cfg.root, domain, "train"))
        n_val = _validation_size(data_cfg, domain, n_train)
        if data_cfg.reference_source == "train":
            _check_shots(
                data_cfg,
                n_train - n_val,
                f"{domain}/train/good after holding out {n_val} "
                f"for validation (data.val_fraction={data_cfg.val_fraction})",
            )
        else:
            test = scan_split(data_cfg.root, domain, "test", data_cfg.cold_below)
            _check_shots(data_cfg, sum(e.label == 0 for e in test), f"{domain}/test/good")


def build_trial_data(data_cfg, seed: int) -> TrialData:
    check_sizes(data_cfg)
    rules = (data_cfg.cold_below, data_cfg.allow_negative)
    rng = np.random.default_rng(seed)
    tests = {d: load_split(data_cfg.root, d, "test", *rules) for d in data_cfg.resolved_test_domains()}
    fits, vals, removed = [], [], 0
    for domain in data_cfg.train_domains():  # one domain: the draws of a single-domain trial, unchanged
        train = load_split(data_cfg.root, domain, "train", *rules)
        order = rng.permutation(len(train))
        n_val = _validation_size(data_cfg, domain, len(train))
        vals.append(train.take(np.sort(order[:n_val])))
        remaining = order[n_val:]
        if data_cfg.reference_source == "train":
            shots = len(remaining) if data_cfg.train_shots is None else data_cfg.train_shots  # 0: zero-shot, no fit
            fits.append(train.take(np.sort(remaining[:shots])))
            continue
        source_test = load_split(data_cfg.root, domain, "test", *rules)
        good = np.flatnonzero(source_test.labels == 0)
        refs = np.sort(rng.choice(good, size=data_cfg.train_shots, replace=False))
        fits.append(source_test.take(refs))
        if domain in tests:
            tests[domain] = source_test.take(np.setdiff1d(np.arange(len(source_test)), refs))
            removed += len(refs)
    starts = np.cumsum([0] + [len(v) for v in vals])
    own = {v.domain: np.arange(start, start + len(v)) for v, start in zip(vals, starts)}
    every = np.arange(starts[-1])
    return TrialData(
        fit=concat_splits(fits, data_cfg.domain),
        val=concat_splits(vals, data_cfg.domain),
        tests=tests,
        val_for={d: own.get(d, every) for d in tests},
        references_removed=removed,
    )


def _check_all_domains(data_cfg) -> None:
    """`data.domain: all` needs every domain folder: one error naming the missing ones, before any listing."""
    root = Path(data_cfg.root)
    if data_cfg.domain != ALL_DOMAINS or not root.is_dir():  # a missing root: scan_split's own message
        return
    missing = [d for d in data_cfg.train_domains() if not (root / d).is_dir()]
    if missing:
        raise DataLayoutError(
            f"data.domain=all fits one model on every domain, but {root} has no {', '.join(missing)} folder; "
            f"add it, or set data.domain to one of the domains present"
        )


def _validation_size(data_cfg, domain: str, n_train: int) -> int:
    n_val = max(1, int(round(data_cfg.val_fraction * n_train)))
    if n_val >= n_train:
        raise DataLayoutError(
            f"data.val_fraction={data_cfg.val_fraction} holds out {n_val} of the {n_train} images "
            f"in {domain}/train/good and leaves none to fit on; use a smaller fraction"
        )
    return n_val


def _check_shots(data_cfg, available: int, where: str) -> None:
    if data_cfg.train_shots is not None and data_cfg.train_shots > available:
        raise DataLayoutError(
            f"{data_cfg.shots_label} but only {available} images are available "
            f"in {where}; use at most {available}"
            + (" (data.domain=all: train_shots counts per domain)" if data_cfg.domain == ALL_DOMAINS else "")
        )
