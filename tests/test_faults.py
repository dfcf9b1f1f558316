"""The cut-paste synthetic fault generator: shapes, probability, severity bounds, aspect, determinism."""

import pytest
import torch

from hdmap.data.fault_shapes import ASPECT_PRESETS, aspect_range
from hdmap.data.faults import CutPasteFaults, HorizontalLineFaults


def _images(b=16, c=1, h=32, w=96, seed=0):
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(seed)) * 0.3 + 0.1


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(8, 1, 32, 96), (8, 3, 32, 96), (8, 32, 96), (4, 1, 31, 95)])
def test_shapes(shape):
    x = torch.rand(shape)
    out = CutPasteFaults(patch_count=2)(x, _gen())
    assert out.image.shape == x.shape and out.image.dtype == x.dtype
    b, h, w = shape[0], shape[-2], shape[-1]
    assert out.mask.shape == (b, 1, h, w) and out.severity_map.shape == (b, 1, h, w) and out.severity.shape == (b,)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}


def test_probability_within_tolerance():
    faults = CutPasteFaults(anomaly_probability=0.3)
    x = _images(b=2000, h=16, w=48)
    out = faults(x, _gen(1))
    faulted = out.mask.flatten(1).amax(1) > 0
    assert abs(faulted.float().mean().item() - 0.3) < 0.04
    # the others are returned unchanged, with an empty mask and zero severity
    assert torch.equal(out.image[~faulted], x[~faulted])
    assert (out.severity[~faulted] == 0).all() and (out.severity_map[~faulted] == 0).all()
    for p in (0.0, 1.0):
        got = (CutPasteFaults(anomaly_probability=p)(x[:50], _gen()).mask.flatten(1).amax(1) > 0).float().mean()
        assert got.item() == p


def test_severity_bounds_and_change_equals_severity():
    x = _images(b=200)
    out = CutPasteFaults(anomaly_probability=1.0, severity_max=0.7)(x, _gen(2))
    assert (out.severity >= 0).all() and (out.severity <= 0.7).all() and out.severity.max() > 0.5
    # the added patch is normalised by its own max |value|: peak change = severity, only inside the mask
    delta = (out.image - x).abs()
    assert torch.allclose(delta.flatten(1).amax(1), out.severity, atol=1e-5)
    assert (delta * (1 - out.mask) == 0).all()
    assert torch.allclose(out.severity_map.flatten(1).amax(1), out.severity)
    ranged = CutPasteFaults(anomaly_probability=1.0, severity_range=(0.2, 0.4))(x, _gen(3)).severity
    assert ranged.min() >= 0.2 and ranged.max() <= 0.4


@pytest.mark.parametrize("aspect", ["landscape", "portrait", "square", (1.5, 1.5)])
def test_aspect_honoured(aspect):
    lo, hi = aspect_range(aspect)
    faults = CutPasteFaults(patch_width_range=(8, 16), patch_aspect=aspect, patch_count=3, anomaly_probability=1.0)
    out = faults(_images(b=64, h=64, w=96), _gen(4))
    for boxes in out.boxes:
        assert 1 <= len(boxes) <= 3
        assert len({(bh, bw) for _, _, bh, bw in boxes}) == 1  # patches of one image share size
        for _, _, bh, bw in boxes:
            # height = round(width / aspect) with aspect in [lo, hi]: consistent up to rounding the height
            assert 8 <= bw <= 16 and bw / (bh + 0.5) <= hi + 1e-9 and (bh <= 0.5 or bw / (bh - 0.5) >= lo - 1e-9)


def test_presets_orientation():
    assert ASPECT_PRESETS["landscape"] == (2.0, 4.0) and ASPECT_PRESETS["portrait"] == (0.25, 0.5)
    out = CutPasteFaults(patch_width_range=(12, 12), patch_aspect="landscape", anomaly_probability=1.0)(
        _images(b=8), _gen()
    )
    assert all(bw > bh for boxes in out.boxes for _, _, bh, bw in boxes)
    out = CutPasteFaults(patch_width_range=(4, 4), patch_aspect="portrait", anomaly_probability=1.0)(
        _images(b=8), _gen()
    )
    assert all(bh > bw for boxes in out.boxes for _, _, bh, bw in boxes)


def test_patches_never_overlap_and_stay_inside():
    out = CutPasteFaults(patch_width_range=(10, 40), patch_aspect="square", patch_count=3, anomaly_probability=1.0)(
        _images(b=100, h=32, w=96), _gen(5)
    )
    for i, boxes in enumerate(out.boxes):
        area = sum(bh * bw for _, _, bh, bw in boxes)
        assert out.mask[i].sum().item() == area  # disjoint targets
        for top, left, bh, bw in boxes:
            assert top >= 0 and left >= 0 and top + bh <= 32 and left + bw <= 96


def test_boundary_safe_with_huge_patches():
    x = _images(b=20, h=8, w=12)
    out = CutPasteFaults(patch_width_range=(50, 60), patch_aspect="square", patch_count=3, anomaly_probability=1.0)(
        x, _gen()
    )
    assert all(len(b) >= 1 for b in out.boxes) and torch.isfinite(out.image).all()
    assert (out.mask.flatten(1).amax(1) == 1).all()


def test_deterministic_under_seed():
    x = _images()
    f = CutPasteFaults(patch_count=2)
    a, b, c = f(x, _gen(7)), f(x, _gen(7)), f(x, _gen(8))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and torch.equal(a.severity, b.severity)
    assert not torch.equal(a.image, c.image)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patch_count=4),
        dict(patch_count=0),
        dict(anomaly_probability=1.5),
        dict(patch_aspect="wide"),
        dict(patch_aspect=(0.5, 0.2)),
        dict(patch_width_range=(5, 2)),
        dict(severity_max=0),
    ],
)
def test_bad_settings_rejected(kwargs):
    with pytest.raises(ValueError):
        CutPasteFaults(**kwargs)


def test_unscaled_cutpaste_copies_the_patch_as_it_is():
    """The original CutPaste (`scaled=False`): the target rectangle becomes the source rectangle, no amplitude."""
    x = _images(b=6)
    out = CutPasteFaults(patch_width_range=(10, 10), patch_height_range=(4, 4), anomaly_probability=1.0, scaled=False)(
        x, _gen(3)
    )
    for i, boxes in enumerate(out.boxes):
        (top, left, ph, pw) = boxes[0]
        target = out.image[i, :, top : top + ph, left : left + pw]
        changed = out.mask[i, 0].bool()
        assert changed.sum() == ph * pw and out.severity[i] == 1.0
        # the pasted values all come from the same image, and the untouched pixels are the original ones
        assert torch.isin(target, x[i]).all() and not torch.equal(target, x[i, :, top : top + ph, left : left + pw])
        assert torch.equal(out.image[i, 0][~changed], x[i, 0][~changed])


# --------------------------------------------------------------------------- horizontal lines (sev_dinomaly)


def test_horizontal_lines_share_count_peak_and_growth():
    x = _images(b=400, h=31, w=95)
    faults = HorizontalLineFaults(aug_ratio=0.3, severity_max=0.5, max_lines=3, max_thickness=2)
    out = faults(x, _gen(11))
    faulted = torch.tensor([bool(b) for b in out.boxes])
    assert faulted.sum() == 120 and faults.count(8) == 2 and faults.count(1) == 0  # exactly round(0.3 * B)
    assert torch.equal(out.image[~faulted], x[~faulted]) and (out.severity[~faulted] == 0).all()
    sev = out.severity[faulted]
    assert (sev >= 0).all() and (sev <= 0.5).all() and sev.max() > 0.45
    delta = out.image - x
    # the same severity scale as the cut-paste faults: peak added value = severity, added only on the bands
    assert torch.allclose(delta.flatten(1).amax(1), out.severity, atol=1e-6)
    assert (delta * (1 - out.mask) == 0).all() and (delta >= 0).all()
    for i in faulted.nonzero().flatten().tolist():
        rows = out.mask[i, 0].amax(1).nonzero().flatten()
        grow = out.severity[i].item() / 0.5
        assert len(out.boxes[i]) == 1 + round(grow * 2)  # count and thickness grow with severity
        assert all(top + th <= 31 and th == 1 + round(grow) and w == 95 for top, _, th, w in out.boxes[i])
        assert len(rows) <= len(out.boxes[i]) * out.boxes[i][0][2]  # bands: whole rows, nothing else
    # about 30% of the lines are partly broken: a stretch at 0.3 x severity
    lines = [(i, top) for i in faulted.nonzero().flatten().tolist() for top, *_ in out.boxes[i]]
    broken = sum(bool(((delta[i, 0, top] > 0) & (delta[i, 0, top] < out.severity[i] * 0.9)).any()) for i, top in lines)
    assert 0.2 < broken / len(lines) < 0.4


def test_horizontal_lines_deterministic_and_rejects_bad_settings():
    x = _images(b=8, h=31, w=95)
    f = HorizontalLineFaults()
    assert torch.equal(f(x, _gen(3)).image, f(x, _gen(3)).image) and not torch.equal(
        f(x, _gen(3)).image, f(x, _gen(4)).image
    )
    for kwargs in (dict(aug_ratio=1.5), dict(severity_max=0), dict(max_lines=0), dict(broken_p=2)):
        with pytest.raises(ValueError):
            HorizontalLineFaults(**kwargs)
