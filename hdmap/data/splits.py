"""Which images a trial fits on, calibrates on and is evaluated on — the evaluation-hygiene rules.

- Validation = a seeded fraction of train normals: thresholds and early stopping never see test.
- Fit images = train shots (seeded) from the remaining train normals, by default.
- `reference_source: test` takes references from test/good and removes them from evaluation.

`check_sizes` compares `train_shots` and `val_fraction` with the files that exist from the folder listing
alone, so a count that cannot work is one error naming the field before any file is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdmap.data.arrays import SplitArrays, load_split
from hdmap.data.layout import DataLayoutError, scan_split


@dataclass(frozen=True)
class TrialData:
    fit: SplitArrays
    val: SplitArrays
    tests: dict[str, SplitArrays]  # test domain -> evaluated images
    references_removed: int  # test/good images used as references and excluded from evaluation


def check_sizes(data_cfg) -> None:
    """DataLayoutError naming `data.val_fraction` or `data.train_shots` when the data cannot satisfy them."""
    n_train = len(scan_split(data_cfg.root, data_cfg.domain, "train"))
    n_val = _validation_size(data_cfg, n_train)
    if data_cfg.reference_source == "train":
        _check_shots(
            data_cfg,
            n_train - n_val,
            f"{data_cfg.domain}/train/good after holding out {n_val} "
            f"for validation (data.val_fraction={data_cfg.val_fraction})",
        )
    else:
        test = scan_split(data_cfg.root, data_cfg.domain, "test", data_cfg.cold_below)
        _check_shots(data_cfg, sum(e.label == 0 for e in test), f"{data_cfg.domain}/test/good")


def build_trial_data(data_cfg, seed: int) -> TrialData:
    check_sizes(data_cfg)
    rules = (data_cfg.cold_below, data_cfg.allow_negative)
    rng = np.random.default_rng(seed)
    train = load_split(data_cfg.root, data_cfg.domain, "train", *rules)
    order = rng.permutation(len(train))
    n_val = _validation_size(data_cfg, len(train))
    val = train.take(np.sort(order[:n_val]))
    remaining = order[n_val:]

    tests = {d: load_split(data_cfg.root, d, "test", *rules) for d in data_cfg.resolved_test_domains()}
    removed = 0
    if data_cfg.reference_source == "train":
        shots = len(remaining) if data_cfg.train_shots is None else data_cfg.train_shots  # 0: zero-shot, no fit
        fit = train.take(np.sort(remaining[:shots]))
    else:
        source_test = load_split(data_cfg.root, data_cfg.domain, "test", *rules)
        good = np.flatnonzero(source_test.labels == 0)
        refs = np.sort(rng.choice(good, size=data_cfg.train_shots, replace=False))
        fit = source_test.take(refs)
        if data_cfg.domain in tests:
            keep = np.setdiff1d(np.arange(len(source_test)), refs)
            tests[data_cfg.domain] = source_test.take(keep)
            removed = len(refs)
    return TrialData(fit=fit, val=val, tests=tests, references_removed=removed)


def _validation_size(data_cfg, n_train: int) -> int:
    n_val = max(1, int(round(data_cfg.val_fraction * n_train)))
    if n_val >= n_train:
        raise DataLayoutError(
            f"data.val_fraction={data_cfg.val_fraction} holds out {n_val} of the {n_train} images "
            f"in {data_cfg.domain}/train/good and leaves none to fit on; use a smaller fraction"
        )
    return n_val


def _check_shots(data_cfg, available: int, where: str) -> None:
    if data_cfg.train_shots is not None and data_cfg.train_shots > available:
        raise DataLayoutError(
            f"data.train_shots={data_cfg.train_shots} but only {available} images are available "
            f"in {where}; use at most {available}"
        )
