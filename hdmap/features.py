"""The feature cache: a frozen backbone's features of a data split, computed once and shared by trials.

Most PatchCore trials of a study differ only in what happens after the backbone (shots, gating, k,
coreset ratio, context). For a model that declares `feature_key()`, the trial asks this module for the
features of every split it touches — (data root, domain, train|test) — and gets a memory-mapped array
computed at most once per node: the entry key holds the split's file listing (paths, sizes, mtimes;
not the cold/warm conditions, which change no feature: features are looked up per file, and nothing
cached downstream — coreset, kNN — is keyed by anything but feature content),
the transform (image size, resize, channels, normalisation, per-image rescaling) and the model's key (backbone, layers,
pooling, a hash of the actual weights — so random-init seeds and weight files never collide).
Concurrency and atomicity come from `hdmap.cache.DiskCache`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hdmap.cache import DiskCache
from hdmap.data.arrays import files_key, load_split


class FeatureLookup:
    """file (relative to the data root) -> its row of a cached feature array."""

    def __init__(self) -> None:
        self._where: dict[str, tuple[np.ndarray, int]] = {}

    def add(self, files, features: np.ndarray) -> None:
        for row, file in enumerate(files):
            self._where[str(file)] = (features, row)

    def __getitem__(self, file: str) -> torch.Tensor:
        features, row = self._where[str(file)]
        return torch.from_numpy(np.array(features[row]))


def cached_features(
    cache: DiskCache, module, model_key: dict, data_cfg, device: torch.device, batch_size: int
) -> FeatureLookup:
    """Features of every split the trial reads (train, or test with test references, of each train domain; test
    of its test domains). Entries are per domain and split, so a `data.domain: all` trial shares them with
    single-domain trials."""
    root = str(Path(data_cfg.root).resolve())
    fit_split = "test" if data_cfg.reference_source == "test" else "train"
    sources = {(domain, split) for domain in data_cfg.train_domains() for split in {"train", fit_split}}
    sources |= {(domain, "test") for domain in data_cfg.resolved_test_domains()}
    transform = {
        "image_size": list(data_cfg.image_size),
        "resize": data_cfg.resize,
        "to_rgb": data_cfg.to_rgb,
        "normalization": data_cfg.normalization,
    }
    if data_cfg.per_image_norm != "none":  # keys of existing entries stay as they were
        transform["per_image_norm"] = data_cfg.per_image_norm
    if data_cfg.center_crop is not None:  # likewise
        transform["center_crop"] = list(data_cfg.center_crop)
    lookup = FeatureLookup()
    pending = {}  # (domain, split) -> (entry key, decoded split): file listings are stat-ed once, not per pass
    for domain, split in sorted(sources):
        arrays = load_split(root, domain, split, data_cfg.cold_below, data_cfg.allow_negative)
        key = {
            "split": f"{root}/{domain}/{split}",
            "files": files_key(root, domain, split, arrays.files),
            "transform": transform,
            "model": model_key,
        }
        pending[(domain, split)] = (key, arrays)
    while pending:  # a split another trial is computing is skipped until the others are done (then waited for)
        before = len(pending)
        for source, (key, arrays) in list(pending.items()):
            entry = cache.get(
                "features",
                key,
                lambda w, a=arrays: _compute(w, module, a.images, device, batch_size),
                wait=len(pending) == 1,
            )
            if entry is not None:
                lookup.add(arrays.files, entry["features"])
                del pending[source]
        if len(pending) == before:
            time.sleep(0.2)  # every remaining split is being computed elsewhere
    return lookup


@torch.no_grad()
def _compute(writer, module, images: np.ndarray, device: torch.device, batch_size: int) -> None:
    module.to(device).eval()
    out = None
    for start in range(0, len(images), batch_size):
        raw = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        feats = module.base_features(module.transform(raw)).float().cpu().numpy()
        if out is None:
            out = writer.array("features", (len(images), *feats.shape[1:]), np.float32)
        out[start : start + len(feats)] = feats
