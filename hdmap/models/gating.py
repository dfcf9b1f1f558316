"""The cold/warm gate of the condition-aware models (`ca_patchcore`, `ca_winclip`): one module, so both families
route and split references by exactly the same rule (docs/research-facts.md#gating: p90 + midpoint, "deployed").

- **p90**: the 90th percentile of the RAW 31x95 image (before any resize or normalisation).
- **Calibration** on FIT images only (train normals carry no cold/warm label; test is never seen): the exact 1-D
  2-means split of their p90 values, threshold = the midpoint of the two cluster means — unless a fixed
  `gate_threshold` is configured.
- **Banks**: the calibrated gate splits the fit images into a cold and a warm bank; `per_bank` images per bank
  are drawn at random (seeded), so every gating mode of a model is built on the same references.
- **Oracle**: the true test condition where a batch carries one; images without one (validation normals,
  condition -1) fall back to the model's own gate.

The rule itself is NumPy, so `sweep plan` checks a fit set's banks without loading torch, and the trial computes
the very same p90 values; only the functions that return tensors import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

COLD, WARM = 0, 1
BANK_NAMES = ("cold", "warm")


def _numpy(array) -> np.ndarray:
    """A NumPy view of an array or a (possibly CUDA) tensor."""
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def p90(raw) -> np.ndarray:
    """(B, 31, 95) raw HDMAP arrays (NumPy or tensor) -> (B,) float32 90th percentile intensity (linear)."""
    flat = _numpy(raw).reshape(len(raw), -1).astype(np.float32, copy=False)
    return np.quantile(flat, 0.9, axis=1).astype(np.float32, copy=False)


def two_means_1d(values) -> tuple[float, float]:
    """Exact 1-D 2-means (best split of the sorted values by within-cluster SSE): (low centre, high centre)."""
    v = np.sort(_numpy(values).astype(np.float64).ravel())
    n = v.size
    if n < 2 or float(v[-1] - v[0]) == 0.0:
        raise ValueError(
            f"cannot calibrate a p90 gate from {n} fit image(s) with p90 range "
            f"{float(v[-1] - v[0]) if n else 0.0:.4g}; set model.gate_threshold"
        )
    csum, csq = np.cumsum(v), np.cumsum(v * v)
    left_n = np.arange(1, n, dtype=np.float64)
    right_n = n - left_n
    left_s, left_q = csum[:-1], csq[:-1]
    right_s, right_q = csum[-1] - left_s, csq[-1] - left_q
    sse = (left_q - left_s**2 / left_n) + (right_q - right_s**2 / right_n)
    i = int(np.argmin(sse))
    return float(left_s[i] / left_n[i]), float(right_s[i] / right_n[i])


def fit_intensities(loader) -> tuple[np.ndarray, np.ndarray]:
    """(p90 of every fit image, its fit-set index) from one pass over the raw fit images (no model involved)."""
    values, indices = [], []
    for batch in loader:
        values.append(p90(batch["raw"]))
        indices.append(_numpy(batch["index"]).astype(np.int64).ravel())
    return np.concatenate(values), np.concatenate(indices)


_LAST_FIT: list = [None, None]  # (fit images, their p90): `sweep plan` checks many trials on one fit set in a row


def _fit_p90(fit_raw: np.ndarray) -> np.ndarray:
    """p90 of each fit image, computed once per fit set (the array is held, so its identity is not reused)."""
    if _LAST_FIT[0] is not fit_raw:
        _LAST_FIT[:] = [fit_raw, p90(fit_raw)]
    return _LAST_FIT[1]


def bank_problem(
    fit_raw: np.ndarray, threshold: float | None, per_bank: int | None, per_bank_field: str, gated: bool
) -> str | None:
    """Why the p90 gate cannot fill a model's banks from these raw fit images, or None: the rules of `calibrate` and
    `draw_banks`, checked on the fit set before any model is built (`sweep plan`, the trial)."""
    gate = P90Gate(threshold)
    values = _fit_p90(fit_raw)
    try:
        gate.calibrate(values)
        gate.check_banks(values, per_bank, per_bank_field, gated)
    except ValueError as exc:
        return str(exc)
    return None


def oracle(condition, fallback: torch.Tensor) -> torch.Tensor:
    """The true condition (0 cold / 1 warm) where known; `fallback` where it is -1 (no label: val normals)."""
    import torch

    cond = torch.as_tensor(condition, device=fallback.device).long()
    return torch.where(cond >= 0, cond, fallback)


class P90Gate:
    """p90 intensity > threshold -> warm. `threshold` fixed by config, else calibrated on the fit images."""

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self.cold_centre: float | None = None
        self.warm_centre: float | None = None

    def centres(self, values: np.ndarray) -> None:
        """The two p90 cluster means of the fit images, where they exist (>= 2 distinct values)."""
        if values.size >= 2 and values.max() > values.min():
            self.cold_centre, self.warm_centre = two_means_1d(values)

    def calibrate(self, values: np.ndarray) -> None:
        """Centres, then the threshold: the configured one, else the midpoint (the precise error if impossible)."""
        self.centres(values)
        if self.threshold is None:
            if self.cold_centre is None:
                two_means_1d(values)  # raises the precise error
            self.threshold = (self.cold_centre + self.warm_centre) / 2

    def route(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 31, 95) raw images -> (B,) long on the images' device: 0 cold, 1 warm."""
        import torch

        return torch.from_numpy(p90(raw) > self.threshold).long().to(raw.device)

    def check_banks(self, values: np.ndarray, per_bank: int | None, per_bank_field: str, gated: bool) -> None:
        """ValueError naming `per_bank_field` unless each bank gets `per_bank` fit images (None: any number) and, for a
        `gated` model (it routes test images to one bank), at least one."""
        warm = values > self.threshold
        sizes = {COLD: int((~warm).sum()), WARM: int(warm.sum())}
        split = f"the p90 gate (threshold {self.threshold:.4f}) puts {sizes[COLD]} cold and {sizes[WARM]} warm"
        if per_bank is not None and min(sizes.values()) < per_bank:
            raise ValueError(
                f"{per_bank_field}={per_bank}: {split} of the {values.size} fit images, each bank needs "
                f"{per_bank}; use {per_bank_field} <= {min(sizes.values())}, or more fit images (data.train_shots)"
            )
        if gated and min(sizes.values()) == 0:
            empty = BANK_NAMES[min(sizes, key=sizes.get)]
            raise ValueError(
                f"{split} fit images: no fit image in the {empty} bank; set model.gate_threshold or use gating=mixed"
            )

    def draw_banks(
        self,
        values: np.ndarray,
        index: np.ndarray,
        per_bank: int | None,
        seed: int,
        per_bank_field: str,
        gated: bool,
    ) -> dict[int, set[int]]:
        """Fit-set indices of each bank's references: `per_bank` drawn at random (seeded) among the fit images the
        gate puts there (None: all of them). `gated`: the model routes test images to one bank, so an empty bank
        is an error; a mixed model only pools both."""
        import torch

        self.check_banks(values, per_bank, per_bank_field, gated)
        warm = values > self.threshold
        generator = torch.Generator().manual_seed(seed)
        selected: dict[int, set[int]] = {}
        for bank in (COLD, WARM):
            members = index[warm == bool(bank)]
            order = members[torch.randperm(members.size, generator=generator).numpy()]
            selected[bank] = set((order if per_bank is None else order[:per_bank]).tolist())
        return selected

    def stats(self, values: np.ndarray | None = None) -> dict:
        """What the gate decided, for inspection: threshold, centres and (given the fit p90s) the bank sizes."""
        out = {"threshold": self.threshold, "cold_centre": self.cold_centre, "warm_centre": self.warm_centre}
        if values is not None and self.threshold is not None:
            warm = values > self.threshold
            out.update(n_cold=int((~warm).sum()), n_warm=int(warm.sum()))
        return out
