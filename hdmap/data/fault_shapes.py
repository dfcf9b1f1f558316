"""The patch shapes a fault generator (`hdmap.data.faults`) may be asked for, as model configs name them: checked
here without torch, so a config validates before any fault is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

ASPECT_PRESETS: dict[str, tuple[float, float]] = {
    "landscape": (2.0, 4.0),
    "portrait": (0.25, 0.5),
    "square": (1.0, 1.0),
}
AspectSpec = Union[Literal["landscape", "portrait", "square"], float, Sequence[float]]


def patch_range_problem(field: str, value: tuple[int, int], side: int, axis: str) -> str | None:
    """A patch size range reaching past the model input: `CutPasteFaults` would clamp it to the image, silently.
    Model configs check it (`input_size_problem`) so the range a results row records is the range used."""
    if value[1] <= side:
        return None
    return (
        f"model.{field}={list(value)} reaches {value[1]} px but the model input is {side} px in {axis} "
        f"(every larger patch would be clamped to {side}); use an upper end <= {side} or a larger data.image_size"
    )


def aspect_range(aspect: AspectSpec) -> tuple[float, float]:
    """A preset name, a number or a (lo, hi) pair -> (lo, hi) of width / height."""
    if isinstance(aspect, str):
        if aspect not in ASPECT_PRESETS:
            raise ValueError(f"patch_aspect={aspect!r}: expected one of {sorted(ASPECT_PRESETS)} or a numeric [lo, hi]")
        return ASPECT_PRESETS[aspect]
    if isinstance(aspect, (int, float)):
        lo = hi = float(aspect)
    else:
        values = [float(v) for v in aspect]
        if len(values) != 2:
            raise ValueError(f"patch_aspect={aspect!r}: a numeric range is [lo, hi]")
        lo, hi = values
    if not 0 < lo <= hi:
        raise ValueError(f"patch_aspect={aspect!r}: need 0 < lo <= hi")
    return lo, hi
