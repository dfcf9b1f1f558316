"""Which images a trial fits on, calibrates on and is evaluated on — the evaluation-hygiene rules.

- Validation = a seeded fraction of train normals: thresholds and early stopping never see test.
- Fit images = train shots (seeded) from the remaining train normals, by default.
- `reference_source: test` takes references from test/good and removes them from evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdmap.data.arrays import SplitArrays, load_split


@dataclass(frozen=True)
class TrialData:
    fit: SplitArrays
    val: SplitArrays
    tests: dict[str, SplitArrays]  # test domain -> evaluated images
    references_removed: int  # test/good images used as references and excluded from evaluation


def build_trial_data(data_cfg, seed: int) -> TrialData:
    rng = np.random.default_rng(seed)
    train = load_split(data_cfg.root, data_cfg.domain, "train")
    order = rng.permutation(len(train))
    n_val = max(1, int(round(data_cfg.val_fraction * len(train))))
    if n_val >= len(train):
        raise ValueError(f"data.val_fraction={data_cfg.val_fraction} leaves no train image to fit on ({len(train)} in train)")
    val = train.take(np.sort(order[:n_val]))
    remaining = order[n_val:]

    tests = {d: load_split(data_cfg.root, d, "test") for d in data_cfg.resolved_test_domains()}
    removed = 0
    if data_cfg.reference_source == "train":
        shots = _check_shots(data_cfg.train_shots, len(remaining), "train (after the validation split)")
        fit = train.take(np.sort(remaining[:shots]))
    else:
        source_test = load_split(data_cfg.root, data_cfg.domain, "test")
        good = np.flatnonzero(source_test.labels == 0)
        shots = _check_shots(data_cfg.train_shots, len(good), "test/good")
        refs = np.sort(rng.choice(good, size=shots, replace=False))
        fit = source_test.take(refs)
        if data_cfg.domain in tests:
            keep = np.setdiff1d(np.arange(len(source_test)), refs)
            tests[data_cfg.domain] = source_test.take(keep)
            removed = len(refs)
    return TrialData(fit=fit, val=val, tests=tests, references_removed=removed)


def _check_shots(shots: int | None, available: int, where: str) -> int:
    if shots is None:
        return available
    if shots > available:
        raise ValueError(f"data.train_shots={shots} but only {available} images are available in {where}")
    return shots
