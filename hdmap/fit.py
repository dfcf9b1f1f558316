"""The Lightning half of a trial (hdmap.trial): build the model, fit it, predict every split. Imported when a trial
runs, not when one is planned or its results are read (torch, Lightning and the model's own imports load here).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hdmap.cache import DiskCache
from hdmap.config import TrialConfig
from hdmap.data.arrays import SplitArrays, concat_splits
from hdmap.data.splits import TrialData
from hdmap.data.synthetic_val import faulted_copies
from hdmap.data.transforms import HdmapTransform
from hdmap.features import FeatureLookup, cached_features
from hdmap.metrics import val_synth_auroc
from hdmap.models.registry import MODELS


@dataclass
class FitOutputs:
    """What the fit and the predictions of one trial produced: per split, the model's outputs as numpy arrays."""

    val: dict[str, np.ndarray]
    val_synth: dict[str, np.ndarray]  # the validation normals' faulted copies (hdmap.data.synthetic_val), in order
    tests: dict[str, dict[str, np.ndarray]]  # test domain -> outputs
    epochs_run: int
    device: str
    features_s: float
    fit_s: float
    predict_s: float
    cache: DiskCache | None


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


def seed_and_quiet(cfg: TrialConfig) -> None:
    """Before anything of a trial is drawn: quiet expected library chatter, seed every generator."""
    _quiet_libraries(cfg.runtime.progress)
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def fit_and_predict(cfg: TrialConfig, data: TrialData, callbacks: list | None = None) -> FitOutputs:
    """Build the configured model, fit it on `data.fit` (validating on `data.val` if it uses validation) and predict
    the validation normals, their faulted copies (hdmap.data.synthetic_val) and every test split."""
    module = MODELS[cfg.model.name].build(cfg.model, HdmapTransform.for_data(cfg.data), cfg.seed)
    cache = DiskCache(cfg.runtime.feature_cache) if cfg.runtime.feature_cache else None
    faulted = faulted_copies(data.val, cfg.eval.val_synth)
    per_epoch = []
    if cfg.model.max_epochs() > 1:  # images made here have no cached features: the callback's loader goes without
        both = concat_splits([data.val, faulted], data.val.domain)
        per_epoch.append(ValSynthAuroc(_loader(cfg, both, None), n_normal=len(data.val)))
    trainer = _trainer(cfg, module, per_epoch + (callbacks or []))
    t_features = time.perf_counter()
    features = _features(cfg, module, cache, trainer.strategy.root_device)
    features_s = time.perf_counter() - t_features

    t_fit = time.perf_counter()
    if len(data.fit):  # a zero-shot model (data.train_shots = 0) has nothing to fit
        fit_loader = _loader(cfg, data.fit, features, shuffle=True)
        trainer.fit(module, fit_loader, _loader(cfg, data.val, features) if module.uses_validation else None)
    fit_s = time.perf_counter() - t_fit
    t_pred = time.perf_counter()
    val = _predict(trainer, module, _loader(cfg, data.val, features), cfg)
    tests = {
        domain: _predict(trainer, module, _loader(cfg, split, features), cfg) for domain, split in data.tests.items()
    }
    val_synth = _predict(trainer, module, _loader(cfg, faulted, None), cfg)  # last: the tests draw as before
    predict_s = time.perf_counter() - t_pred
    return FitOutputs(
        val,
        val_synth,
        tests,
        trainer.current_epoch,
        str(trainer.strategy.root_device),
        features_s,
        fit_s,
        predict_s,
        cache,
    )


def _loader(cfg: TrialConfig, split: SplitArrays, features: FeatureLookup | None, shuffle: bool = False) -> DataLoader:
    """Batches of `split` (with its cached backbone features, if any), shuffled by the trial's own generator."""
    return DataLoader(
        _ArrayDataset(split, features),
        batch_size=cfg.model.batch_size,
        shuffle=shuffle,
        num_workers=cfg.runtime.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def _trainer(cfg: TrialConfig, module, callbacks: list) -> L.Trainer:
    return L.Trainer(
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
        callbacks=callbacks,
        **module.trainer_kwargs(),
    )


class ValSynthAuroc(L.Callback):
    """`val_synth_auroc` once per epoch into `trainer.callback_metrics`, where a sweep's per-epoch reporter reads it.

    Measured when that reporter reads: after each validation pass for a module that validates (its epochs, or
    Dinomaly's validation rounds; the sanity check excepted), at each training epoch's end for the others; so the
    trainer must hold this callback before any other. The model scores through its own predict path (batch hooks,
    `on_predict_start`, `predict_step`) in eval mode without gradients; every submodule's train / eval mode is then
    restored as it was (a frozen backbone stays in eval)."""

    def __init__(self, loader: DataLoader, n_normal: int) -> None:
        self.loader = loader  # validation normals, then their faulted copies
        self.n_normal = n_normal

    def on_validation_epoch_end(self, trainer: L.Trainer, module) -> None:
        if module.uses_validation and not trainer.sanity_checking:
            self._measure(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        if not module.uses_validation:
            self._measure(trainer, module)

    @torch.no_grad()
    def _measure(self, trainer: L.Trainer, module) -> None:
        modes = {sub: sub.training for sub in module.modules()}
        module.eval()
        try:
            module.on_predict_start()
            scores = torch.cat([self._score(module, batch, i) for i, batch in enumerate(self.loader)]).cpu().numpy()
            module.on_predict_end()
        finally:
            for sub, training in modes.items():
                sub.training = training
        value = val_synth_auroc(scores[: self.n_normal], scores[self.n_normal :])
        if value is None:  # a diverged epoch: no figure rather than the last epoch's
            trainer.callback_metrics.pop("val_synth_auroc", None)
        else:
            trainer.callback_metrics["val_synth_auroc"] = torch.tensor(value)

    @staticmethod
    def _score(module, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = module.on_before_batch_transfer(batch, 0)
        batch = module.transfer_batch_to_device(batch, module.device, 0)
        batch = module.on_after_batch_transfer(batch, 0)
        return module.predict_step(batch, batch_idx)["score"].float()


def _features(cfg: TrialConfig, module, cache: DiskCache | None, device: torch.device) -> FeatureLookup | None:
    """Backbone features of every split from the disk cache (computed once per split), where the model declares
    them; the cache also memoises the module's other pure work (`disk_cache`)."""
    if cache is None:
        return None
    module.disk_cache = cache
    model_key = module.feature_key()
    if model_key is None:
        return None
    return cached_features(cache, module, model_key, cfg.data, device, cfg.model.batch_size)


def _predict(trainer: L.Trainer, module, dataloader: DataLoader, cfg: TrialConfig) -> dict[str, np.ndarray]:
    batches = trainer.predict(module, dataloader)
    declared = {"score"} | cfg.model.outputs()
    if set(batches[0]) != declared:  # the model contract: what a row reports is what the config declares
        raise RuntimeError(
            f"model {cfg.model.name!r} predicts {sorted(batches[0])}, its config declares {sorted(declared)}"
        )
    return {key: torch.cat([b[key] for b in batches]).float().cpu().numpy() for key in batches[0]}


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
