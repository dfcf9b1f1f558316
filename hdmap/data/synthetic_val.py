"""The synthetic validation set: a trial's validation normals and the same normals, each with one seeded fault.

A model that ranks every faulted copy above the normals it came from scores `val_synth_auroc` = 1; computed from
train normals only, it lets a search select configs (and ASHA rank epochs) without test labels.
The faults (hdmap.data.faults) are added to the raw 31 x 95 arrays, before any model transform, from a generator
seeded by `eval.val_synth.seed`, not the trial seed: every trial that shares the validation split sees the same
faulted set, whatever its model or its seed for training.
"""

from __future__ import annotations

import numpy as np
import torch

from hdmap.data.arrays import SplitArrays
from hdmap.data.faults import CutPasteFaults, FaultBatch, HorizontalLineFaults

# cut-paste patches that fit a 31 x 95 raw array: 8-32 columns wide, landscape (2-4x wider than tall)
_CUTPASTE_WIDTHS = (8, 32)


def faulted_copies(val: SplitArrays, val_synth_cfg) -> SplitArrays:
    """`val` with one fault added to every image (labels 1, severity the fault's), in the same order."""
    generator = torch.Generator().manual_seed(val_synth_cfg.seed)
    faulted = _faults(val_synth_cfg, torch.from_numpy(np.require(val.images, np.float32)), generator)
    return SplitArrays(
        val.domain,
        faulted.image.numpy(),
        np.ones(len(val), dtype=val.labels.dtype),
        val.conditions,
        np.array([f"{file}#val_synth" for file in val.files], dtype=object),  # never a clean image's cached features
        faulted.severity.double().numpy(),
    )


def _faults(val_synth_cfg, images: torch.Tensor, generator: torch.Generator) -> FaultBatch:
    """Every image faulted once by the configured kind; `severity_max` None keeps the generator's own default."""
    severity = {} if val_synth_cfg.severity_max is None else {"severity_max": val_synth_cfg.severity_max}
    if val_synth_cfg.kind == "lines":
        return HorizontalLineFaults(**severity).draw(images, list(range(len(images))), generator)
    return CutPasteFaults(patch_width_range=_CUTPASTE_WIDTHS, anomaly_probability=1.0, **severity)(images, generator)
