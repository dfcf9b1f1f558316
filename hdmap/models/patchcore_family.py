"""Condition-aware PatchCore (`ca_patchcore`): cold/warm memory banks, a gate, horizontal row context (CPD).

One model covers the researcher's PatchCore line (docs/research-facts.md#patchcore, #gating):

- **Backbone**: any timm model through anomalib's `TimmFeatureExtractor` — CNN stages (`layer2`) or ViT
  blocks (`blocks.8`, `blocks.11` of `vit_small_patch14_dinov2` / `vit_base_patch14_dinov2`, patch tokens
  reshaped to the spatial grid, final norm applied). Layers are average-pooled (`feature_pool`, PatchCore's
  local aggregation), resized to the first layer's grid and concatenated.
- **Gate** (`p90`, `hdmap.models.gating`, shared with `ca_winclip`): the 90th percentile of the RAW 31x95 image
  against a threshold. The threshold is `gate_threshold` if given, else calibrated from the FIT images only (train
  normals; test never seen): the exact 1-D 2-means split of their p90 values, threshold = midpoint between the two
  cluster means.
- **Banks**: train images carry no condition, so the p90 gate splits the fit images into a cold and a warm
  bank (every gating mode, so modes differ only in how TEST images are routed). `shots_per_bank` images
  per bank are drawn at random (seeded); `mixed` is one bank holding exactly the union of those images,
  so gated-vs-mixed compares the same references (`mixed` with `shots_per_bank: null` = every fit image,
  no gate computed). Each bank is coreset-subsampled by `coreset_ratio`.
- **Gating** of scored images: `mixed` (one bank, no gate), `oracle` (true test condition from the batch;
  images without one — the validation normals — fall back to p90), `p90`, `random` (fair coin, seeded),
  `soft` (both banks; score = w * warm + (1 - w) * cold, w = sigmoid((p90 - thr) / T) with
  T = `soft_temperature` x |warm centre - cold centre| of the train p90 clusters). `predict_step` returns
  `gate` (0 cold / 1 warm; soft: w) for every mode but `mixed`, so rows carry `gating_accuracy`.
- **Context (CPD)**: `context_k` = k or a list of k; each patch feature f[i, j] is concatenated with the
  `context_agg` (mean / max) of its row neighbours f[i, j-k .. j+k] — the horizontal axis, the HDMAP
  time axis. `context_include_self` (default true, as in the researcher's CPD) keeps j itself in the
  window; at the left/right edges the window is truncated to the patches that exist. A list concatenates
  one context block per k: [f | ctx_k1 | ctx_k2].
- **Score**: nearest-neighbour Euclidean distance of each patch to its bank (`knn`: faiss `IndexFlatL2`,
  exact, the default; `faiss_ivf`, approximate; dense `torch.cdist`); image score = the max patch distance,
  reweighted as in PatchCore (anomalib's `compute_anomaly_score`) by its nearest bank patch's `k` neighbours
  (`k: 1` = the plain max). Hard gates search every image of a batch in each bank any of them is routed
  to (the same work as one mixed bank), so gating modes and cached runs make identical search calls.
- **Sweep speed**: with a feature cache (`runtime.feature_cache`, on in sweeps) the backbone features of
  each data split are computed once and arrive in batches (`base_features`, before context); the coreset
  selection and the patch search are memoised by content hash, so trials that differ only in `k` or the
  gating mode reuse them (context, shots and coreset ratio change the bank or the queries, so those
  trials share the features only). `k` never changes the patch search (k=1); its own support search is
  over one patch per image.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from hdmap.cache import hash_array
from hdmap.models.backbones import load_pretrained
from hdmap.models.base import AnomalyModule
from hdmap.models.configs.patchcore_family import CAPatchCoreConfig
from hdmap.models.coreset import check_neighbours, subsample
from hdmap.models.gating import COLD, WARM, P90Gate, fit_intensities, oracle, p90
from hdmap.models.knn import knn_search

# ---------------------------------------------------------------- row context


def row_context(features: torch.Tensor, k: int, agg: str = "mean", include_self: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): aggregate of each patch's row neighbours j-k..j+k (edges truncated)."""
    offsets = [d for d in range(-k, k + 1) if include_self or d != 0]
    width = features.shape[-1]
    acc = None
    count = torch.zeros(width, device=features.device, dtype=features.dtype)
    for d in offsets:
        lo, hi = max(0, -d), min(width, width - d)  # output columns j whose neighbour j + d exists
        if lo >= hi:
            continue
        shifted = torch.full_like(features, float("-inf") if agg == "max" else 0.0)
        shifted[..., lo:hi] = features[..., lo + d : hi + d]
        count[lo:hi] += 1
        acc = shifted if acc is None else (torch.maximum(acc, shifted) if agg == "max" else acc + shifted)
    if acc is None:
        raise ValueError(f"row context k={k} without self on a grid of width {width} has no neighbours")
    if agg == "max":
        return torch.where(torch.isinf(acc), torch.zeros_like(acc), acc)  # a column with no neighbour -> 0
    return acc / count.clamp_min(1)


def add_context(features: torch.Tensor, ks: list[int], agg: str = "mean", include_self: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * (1 + len(ks)), H, W): [f | ctx_k for k in ks]."""
    if not ks:
        return features
    return torch.cat([features] + [row_context(features, k, agg, include_self) for k in ks], dim=1)


# ---------------------------------------------------------------- model


class CAPatchCoreModule(AnomalyModule):
    def __init__(self, cfg: CAPatchCoreConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        from anomalib.models.components import TimmFeatureExtractor

        self.cfg = cfg
        self.seed = seed
        # pre_trained=False: anomalib would otherwise download; weights are loaded below from local files.
        self.extractor = TimmFeatureExtractor(backbone=cfg.backbone, layers=cfg.layers, pre_trained=False).eval()
        if cfg.pretrained:  # a ViT's `feature_extractor` is the full timm model, a CNN's the features_only wrapper
            load_pretrained(self.extractor.feature_extractor, cfg.backbone, cfg.weights)
        self.automatic_optimization = False
        self.gate = P90Gate(cfg.gate_threshold)  # the gate shared with ca_winclip (hdmap.models.gating)
        self.temperature: float | None = None
        self.selected: dict[int, set[int]] = {}  # bank -> fit-set indices whose features are stored
        self._store: dict[int, list[torch.Tensor]] = {COLD: [], WARM: []}
        self.banks: dict[int, torch.Tensor] = {}
        self._bank_keys: dict[int, str] = {}  # content hashes of the banks: keys of memoised searches
        self.gate_stats: dict = {}

    def configure_optimizers(self) -> None:
        return None

    # ---- features

    def feature_key(self) -> dict:
        weights = hashlib.sha1()
        for name, tensor in self.extractor.state_dict().items():
            weights.update(name.encode())
            weights.update(hash_array(tensor.detach().cpu().numpy()).encode())
        return {
            "backbone": self.cfg.backbone,
            "layers": self.cfg.layers,
            "feature_pool": self.cfg.feature_pool,
            "weights_sha1": weights.hexdigest(),
        }

    @torch.no_grad()
    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, h, w): layers pooled, resized to the first layer's grid, concatenated."""
        self.extractor.eval()
        feats = self.extractor(images)
        pool = self.cfg.feature_pool
        maps = [F.avg_pool2d(feats[name], pool, 1, pool // 2) if pool > 1 else feats[name] for name in self.cfg.layers]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, dim=1)

    def embed(self, batch: dict, rows: list[int] | None = None) -> torch.Tensor:
        """Patch features of a batch (or its `rows`), (B, D, h, w): cached base features if given, + row context."""
        if "features" in batch:
            base = batch["features"] if rows is None else batch["features"][rows]
        else:
            base = self.base_features(batch["image"] if rows is None else batch["image"][rows])
        return add_context(base.float(), self.cfg.context_ks(), self.cfg.context_agg, self.cfg.context_include_self)

    # ---- fit: gate the fit images (raw only, one cheap pass), pick the references, then embed only those

    @property
    def threshold(self) -> float | None:
        return self.gate.threshold

    def on_train_start(self) -> None:
        values, index = fit_intensities(self.trainer.train_dataloader)
        if not self.cfg.gates_fit_set():  # one bank of every fit image: no gate
            self.gate.centres(values)
            self.selected = {COLD: set(index.tolist()), WARM: set()}
            self.gate_stats = {**self.gate.stats(), "threshold": None}
            return
        gate = self.gate
        gate.calibrate(values)
        gap = (
            (gate.warm_centre - gate.cold_centre)
            if gate.cold_centre is not None
            else max(abs(self.threshold) * 0.1, 1e-6)
        )
        self.temperature = self.cfg.soft_temperature * gap
        self.selected = gate.draw_banks(
            values, index, self.cfg.shots_per_bank, self.seed, "model.shots_per_bank", self.cfg.gating != "mixed"
        )
        self.gate_stats = gate.stats(values)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        index = torch.as_tensor(batch["index"]).tolist()
        rows = {bank: [i for i, idx in enumerate(index) if idx in self.selected[bank]] for bank in (COLD, WARM)}
        wanted = rows[COLD] + rows[WARM]
        if not wanted:
            return
        emb = self.embed(batch, wanted)  # one backbone pass for both banks' references
        emb = emb.permute(0, 2, 3, 1).reshape(len(wanted), -1, emb.shape[1])
        n_cold = len(rows[COLD])
        for bank, part in ((COLD, emb[:n_cold]), (WARM, emb[n_cold:])):
            if part.shape[0]:
                self._store[bank].append(part.reshape(-1, part.shape[-1]).cpu())

    def on_train_end(self) -> None:
        stores = {b: torch.cat(s) if s else torch.empty(0) for b, s in self._store.items()}
        self._store = {COLD: [], WARM: []}
        if self.cfg.gating == "mixed":
            stores = {COLD: torch.cat([s for s in stores.values() if s.numel()])}
        self.banks = {b: self._coreset(s) for b, s in stores.items()}
        for b, bank in self.banks.items():
            check_neighbours(self.cfg.k, bank, "memory bank" if len(self.banks) == 1 else f"{('cold', 'warm')[b]} bank")
        self._bank_keys = {b: hash_array(bank.numpy()) for b, bank in self.banks.items()} if self.disk_cache else {}

    def _coreset(self, features: torch.Tensor) -> torch.Tensor:
        if self.disk_cache is None or self.cfg.coreset_ratio == 1:
            return subsample(features, self.cfg.coreset_ratio, self.seed)
        key = {"features": hash_array(features.numpy()), "ratio": self.cfg.coreset_ratio, "seed": self.seed}
        entry = self.disk_cache.get(
            "coreset", key, lambda w: w.put("bank", subsample(features, self.cfg.coreset_ratio, self.seed).numpy())
        )
        return torch.from_numpy(np.array(entry["bank"]))

    # ---- predict

    def on_predict_start(self) -> None:
        self._coin = torch.Generator().manual_seed(self.seed + 7919)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        emb = self.embed(batch)
        b, d = emb.shape[:2]
        patches = emb.permute(0, 2, 3, 1).reshape(b, -1, d)
        if self.cfg.gating == "mixed":
            return {"score": self._score(patches, COLD)}
        raw_p90 = torch.from_numpy(p90(batch["raw"])).to(emb.device)
        if self.cfg.gating == "soft":
            w = torch.sigmoid((raw_p90 - self.threshold) / self.temperature)
            return {"score": w * self._score(patches, WARM) + (1 - w) * self._score(patches, COLD), "gate": w}
        gate = (raw_p90 > self.threshold).long()
        if self.cfg.gating == "oracle":
            cond = batch.get("condition")
            if cond is None:
                warnings.warn(
                    "gating=oracle but batches carry no 'condition'; falling back to the p90 gate", stacklevel=2
                )
            else:
                gate = oracle(cond, gate)  # -1 (no condition: val normals) -> p90
        elif self.cfg.gating == "random":
            gate = (torch.rand(b, generator=self._coin) < 0.5).long().to(emb.device)
        score = torch.empty(b, device=emb.device)
        for bank in (COLD, WARM):
            routed = gate == bank
            if routed.any():  # the whole batch against this bank: one search call, shared by every gating mode
                score = torch.where(routed, self._score(patches, bank), score)
        return {"score": score, "gate": gate.float()}

    def _score(self, patches: torch.Tensor, bank_id: int) -> torch.Tensor:
        """(B, P, D) patches -> (B,) PatchCore image scores against one bank (anomalib's reweighting for k > 1)."""
        bank = self.banks[bank_id].to(patches.device)
        b, p, d = patches.shape
        flat = patches.reshape(-1, d)
        distances, locations = self._nearest(flat, bank_id)
        patch_scores, locations = distances.reshape(b, p), locations.reshape(b, p)
        if self.cfg.k == 1:
            return patch_scores.amax(dim=1)
        rows = torch.arange(b, device=patches.device)
        worst = patch_scores.argmax(dim=1)  # m^test,* of the PatchCore paper
        score = patch_scores[rows, worst]
        nearest = bank[locations[rows, worst]]  # m^*
        _, support = knn_search(nearest, bank, self.cfg.k, self.cfg.knn, self.cfg.ivf_nprobe, self.seed)  # N_b(m^*)
        to_support = torch.linalg.vector_norm(patches[rows, worst].unsqueeze(1) - bank[support], dim=-1)
        return (1 - torch.softmax(to_support, dim=1)[:, 0]) * score

    def _nearest(self, flat: torch.Tensor, bank_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's nearest bank patch (distance, index); memoised by content in the trial's disk cache."""

        def search():
            d, i = knn_search(flat, self.banks[bank_id], 1, self.cfg.knn, self.cfg.ivf_nprobe, self.seed)
            return d[:, 0], i[:, 0]

        if self.disk_cache is None:
            return search()
        key = {"bank": self._bank_keys[bank_id], "queries": hash_array(flat.cpu().numpy()), "knn": self.cfg.knn}
        if self.cfg.knn == "faiss_ivf":
            key.update(nprobe=self.cfg.ivf_nprobe, seed=self.seed)

        def compute(writer):
            d, i = search()
            writer.put("distance", d.cpu().numpy())
            writer.put("index", i.cpu().numpy())

        entry = self.disk_cache.get("knn", key, compute)
        return (
            torch.from_numpy(np.array(entry["distance"])).to(flat.device),
            torch.from_numpy(np.array(entry["index"])).to(flat.device),
        )

    def score(self, images: torch.Tensor) -> torch.Tensor:  # gate-free scoring is not defined here
        raise NotImplementedError("ca_patchcore scores through predict_step (it needs the raw image for the gate)")


def build(cfg: CAPatchCoreConfig, transform: torch.nn.Module, seed: int = 0) -> CAPatchCoreModule:
    return CAPatchCoreModule(cfg, transform, seed)
