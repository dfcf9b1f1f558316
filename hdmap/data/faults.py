"""HDMAP synthetic faults: the one module of fault generators for the severity models, their validation and tests.

Two kinds share one output (`FaultBatch`), one random source (a `torch.Generator`) and one severity scale:

- `CutPasteFaults` (DRAEM-SevNet, the paper's scaled CutPaste);
- `HorizontalLineFaults` (severity-aware Dinomaly): thin horizontal bands, as real HDMAP faults look.

Cut-paste: cut a rectangle from the image, normalise it by its own max |value|, scale it by a severity
drawn from [0, severity_max] (or a given range) and *add* it at another location that does not overlap
the source (nor, with several patches, the other pasted patches). Sizes are in model-input pixels (a model
config refuses a range past its input, `patch_range_problem`, rather than have it clamped here):
width from `patch_width_range`, height from `patch_height_range` when given (the paper's scaled CutPaste:
cut_w, cut_h), else height = width / aspect, where aspect = width / height is drawn from `patch_aspect`
(`landscape` 2-4: wide, thin bands like HDMAP faults; `portrait` 0.25-0.5; `square` 1; or a numeric (lo, hi)).
All `patch_count` patches of one image share severity, aspect and size.
Each image is faulted with probability `anomaly_probability`; the others come back unchanged with an
empty mask and severity 0. Everything random comes from one `torch.Generator`, so a seed fixes it.

Horizontal lines: on exactly `round(aug_ratio * B)` images of a batch (at least one when aug_ratio > 0, never the
whole batch; `draw` faults the images it is given, e.g. every image of the synthetic validation set), add
`count` full-width bands of `thickness` rows at value `severity`; count and thickness grow
linearly with severity / severity_max (1 line of 1 row at 0, `max_lines` of `max_thickness` rows at severity_max),
and each line is partly broken with probability `broken_p` (0.3): a stretch [a, b), a in the left half, b in the
right half, is attenuated to `broken_gain` (0.3) of the severity. Overlapping lines do not add up.

Severity scale (both kinds): an image's peak added value equals its severity, in the units of the images the
generator is given. DRAEM-SevNet applies it to its model input (raw HDMAP values with `data.normalization=none`,
resized); severity-aware Dinomaly to the raw 31 x 95 arrays before its transform: the same scale in raw units.
The simulator's sidecar severity is instead a *relative* band contrast (band height / local background,
~0.15-0.8), see `hdmap.data.simulate`: Spearman against it is meaningful, MAE is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hdmap.data.fault_shapes import AspectSpec, aspect_range

_MAX_TRIES = 64


@dataclass
class FaultBatch:
    image: torch.Tensor  # (B, C, H, W) faulted images (unchanged where no fault)
    mask: torch.Tensor  # (B, 1, H, W) 1 where a patch was added
    severity_map: torch.Tensor  # (B, 1, H, W) severity inside the mask, 0 elsewhere
    severity: torch.Tensor  # (B,) severity label (0 for unfaulted images)
    boxes: list[list[tuple[int, int, int, int]]]  # per image: pasted (top, left, height, width)


class CutPasteFaults:
    def __init__(
        self,
        patch_width_range: tuple[int, int] = (8, 32),
        patch_aspect: AspectSpec = "landscape",
        patch_count: int = 1,
        anomaly_probability: float = 0.5,
        severity_max: float = 1.0,
        severity_range: tuple[float, float] | None = None,
        patch_height_range: tuple[int, int] | None = None,
        scaled: bool = True,
    ) -> None:
        lo_w, hi_w = (int(v) for v in patch_width_range)
        if not 1 <= lo_w <= hi_w:
            raise ValueError(f"patch_width_range={patch_width_range!r}: need 1 <= lo <= hi")
        if not 1 <= int(patch_count) <= 3:
            raise ValueError(f"patch_count={patch_count!r}: expected 1, 2 or 3")
        if not 0.0 <= anomaly_probability <= 1.0:
            raise ValueError(f"anomaly_probability={anomaly_probability!r}: expected a value in [0, 1]")
        if severity_range is None:
            if severity_max <= 0:
                raise ValueError(f"severity_max={severity_max!r}: expected > 0")
            severity_range = (0.0, float(severity_max))
        if not 0 <= severity_range[0] <= severity_range[1]:
            raise ValueError(f"severity_range={severity_range!r}: need 0 <= lo <= hi")
        if patch_height_range is not None and not 1 <= int(patch_height_range[0]) <= int(patch_height_range[1]):
            raise ValueError(f"patch_height_range={patch_height_range!r}: need 1 <= lo <= hi")
        self.width_range = (lo_w, hi_w)
        # the paper's scaled CutPaste draws height directly (cut_h); otherwise height = width / aspect
        self.height_range = None if patch_height_range is None else tuple(int(v) for v in patch_height_range)
        self.aspect_range = aspect_range(patch_aspect)
        self.patch_count = int(patch_count)
        self.anomaly_probability = float(anomaly_probability)
        self.severity_range = (float(severity_range[0]), float(severity_range[1]))
        self.scaled = bool(scaled)  # False: the original CutPaste, the patch copied as it is (severity 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> FaultBatch:
        """images: (B, C, H, W) or (B, H, W). Random draws happen on the CPU generator; tensors stay on their device."""
        x = images.unsqueeze(1) if images.dim() == 3 else images
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) or (B, H, W) images, got shape {tuple(images.shape)}")
        b, _, h, w = x.shape
        out = x.clone()
        mask = torch.zeros((b, 1, h, w), dtype=x.dtype, device=x.device)
        severity = torch.zeros(b, dtype=x.dtype, device=x.device)
        boxes: list[list[tuple[int, int, int, int]]] = []
        faulted = torch.rand(b, generator=generator) < self.anomaly_probability
        for i in range(b):
            boxes.append([])
            if not faulted[i]:
                continue
            sev = _uniform(*self.severity_range, generator) if self.scaled else 1.0
            ph, pw = self._patch_size(h, w, generator)
            taken: list[tuple[int, int, int, int]] = []
            for k in range(self.patch_count):
                placed = self._place(h, w, ph, pw, taken, generator, must=(k == 0))
                if placed is None:  # no room for another non-overlapping patch: fewer patches, never overlap
                    break
                (st, sl), (tt, tl) = placed
                patch = x[i, :, st : st + ph, sl : sl + pw]
                if self.scaled:
                    peak = patch.abs().amax().clamp_min(1e-8)
                    out[i, :, tt : tt + ph, tl : tl + pw] += patch / peak * sev
                else:
                    out[i, :, tt : tt + ph, tl : tl + pw] = patch
                mask[i, :, tt : tt + ph, tl : tl + pw] = 1.0
                taken.append((tt, tl, ph, pw))
            severity[i] = sev
            boxes[i] = taken
        severity_map = mask * severity.view(b, 1, 1, 1)
        if images.dim() == 3:
            out = out.squeeze(1)
        return FaultBatch(image=out, mask=mask, severity_map=severity_map, severity=severity, boxes=boxes)

    # ------------------------------------------------------------------ helpers

    def _patch_size(self, h: int, w: int, generator: torch.Generator | None) -> tuple[int, int]:
        """(height, width) inside the image, small enough that source and target can sit side by side."""
        width = _randint(*self.width_range, generator)
        if self.height_range is not None:
            height = _randint(*self.height_range, generator)
        else:
            height = max(1, round(width / _uniform(*self.aspect_range, generator)))
        width, height = min(width, w), min(height, h)
        if 2 * width > w and 2 * height > h:  # too big for two disjoint rectangles: shrink the looser side
            if w / width >= h / height:
                width = max(1, w // 2)
            else:
                height = max(1, h // 2)
        return height, width

    def _place(self, h, w, ph, pw, taken, generator, must: bool):
        """(source (top, left), target (top, left)); target disjoint from its source and from `taken`."""
        for _ in range(_MAX_TRIES):
            src = (_randint(0, h - ph, generator), _randint(0, w - pw, generator))
            tgt = (_randint(0, h - ph, generator), _randint(0, w - pw, generator))
            if not _overlap(src, tgt, ph, pw) and not any(_overlap(tgt, t[:2], ph, pw) for t in taken):
                return src, tgt
        if must:  # always possible by construction (_patch_size): put them in opposite halves
            if 2 * pw <= w:
                left = _randint(0, w // 2 - pw, generator)
                top_s, top_t = _randint(0, h - ph, generator), _randint(0, h - ph, generator)
                return (top_s, left), (top_t, left + w // 2)
            top = _randint(0, h // 2 - ph, generator)
            left_s, left_t = _randint(0, w - pw, generator), _randint(0, w - pw, generator)
            return (top, left_s), (top + h // 2, left_t)
        return None


class HorizontalLineFaults:
    """Horizontal bands whose count, thickness and value grow with severity (module docstring), on a fixed share of
    each batch. `boxes` lists each band as (top, 0, thickness, width)."""

    def __init__(
        self,
        aug_ratio: float = 0.3,
        severity_max: float = 0.5,
        max_lines: int = 3,
        max_thickness: int = 2,
        broken_p: float = 0.3,
        broken_gain: float = 0.3,
    ) -> None:
        if not 0.0 <= aug_ratio <= 1.0:
            raise ValueError(f"aug_ratio={aug_ratio!r}: expected a value in [0, 1]")
        if severity_max <= 0:
            raise ValueError(f"severity_max={severity_max!r}: expected > 0")
        if int(max_lines) < 1 or int(max_thickness) < 1:
            raise ValueError(f"max_lines={max_lines!r}, max_thickness={max_thickness!r}: expected >= 1")
        if not 0.0 <= broken_p <= 1.0 or not 0.0 <= broken_gain <= 1.0:
            raise ValueError(f"broken_p={broken_p!r}, broken_gain={broken_gain!r}: expected values in [0, 1]")
        self.aug_ratio = float(aug_ratio)
        self.severity_max = float(severity_max)
        self.max_lines, self.max_thickness = int(max_lines), int(max_thickness)
        self.broken_p, self.broken_gain = float(broken_p), float(broken_gain)

    def count(self, batch: int) -> int:
        """Images of a batch of `batch` that get lines: round(aug_ratio * batch), >= 1 if aug_ratio > 0, but never
        the whole batch (Dinomaly's reconstruction loss trains on the clean ones; a batch of one stays clean)."""
        k = round(self.aug_ratio * batch)
        if self.aug_ratio > 0:
            k = max(k, 1)
        return max(0, min(k, batch - 1))

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> FaultBatch:
        """images: (B, C, H, W) or (B, H, W). Random draws happen on the CPU generator; tensors stay on their device."""
        b = len(images)
        chosen = torch.randperm(b, generator=generator)[: self.count(b)].tolist()
        return self.draw(images, chosen, generator)

    def draw(self, images: torch.Tensor, indices: list[int], generator: torch.Generator | None = None) -> FaultBatch:
        """Lines on the images at `indices` (in that order of draws), the others unchanged: `__call__` picks the
        batch's share; a validation set that faults every image passes them all."""
        x = images.unsqueeze(1) if images.dim() == 3 else images
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) or (B, H, W) images, got shape {tuple(images.shape)}")
        b, _, h, w = x.shape
        pattern = torch.zeros((b, 1, h, w), dtype=x.dtype)
        severity = torch.zeros(b, dtype=x.dtype)
        boxes: list[list[tuple[int, int, int, int]]] = [[] for _ in range(b)]
        for i in indices:
            sev = _uniform(0.0, self.severity_max, generator)
            grow = sev / self.severity_max
            lines = 1 + round(grow * (self.max_lines - 1))
            thickness = min(h, 1 + round(grow * (self.max_thickness - 1)))
            for _ in range(lines):
                top = _randint(0, h - thickness, generator)
                band = torch.full((thickness, w), sev, dtype=x.dtype)
                if float(torch.rand(1, generator=generator)) < self.broken_p and w > 1:
                    start, stop = _randint(0, w // 2 - 1, generator), _randint(w // 2, w - 1, generator)
                    band[:, start:stop] *= self.broken_gain
                pattern[i, 0, top : top + thickness] = band  # overlapping lines replace, never add up
                boxes[i].append((top, 0, thickness, w))
            severity[i] = sev
        pattern, severity = pattern.to(x.device), severity.to(x.device)
        mask = (pattern > 0).to(x.dtype)
        out = x + pattern  # broadcast over channels: a gray fault in every channel
        if images.dim() == 3:
            out = out.squeeze(1)
        return FaultBatch(
            image=out, mask=mask, severity_map=mask * severity.view(b, 1, 1, 1), severity=severity, boxes=boxes
        )


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=generator))


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


def _overlap(a: tuple[int, int], b: tuple[int, int], ph: int, pw: int) -> bool:
    return abs(a[0] - b[0]) < ph and abs(a[1] - b[1]) < pw
