"""Synthetic HDMAP data: the real folder layout with statistics calibrated to the private dataset.

The real data is private, so everything in the product runs and is tested on this simulator. It writes exactly
the layout in `hdmap.data.layout` and reproduces what matters for the studies
(docs/research-facts.md#data-statistics): per-domain intensity levels, cold/warm machine states that differ in
brightness *and* structure, faults as thin broken horizontal bands, sharp peaks in warm faults, fault images
that are brighter (A, C) or darker (B, D) than normals, and domain C's faint cold faults overlapping warm
normals in intensity.

Model of one image (all in "scaled units", where the expected train maximum is about 1):

    image = level * exp(s * P) / mean(exp(s * P)) + hot spots

P is a standardised field mixing a fixed per-domain, per-condition structure (row profile, column
meshing harmonics, and for warm an extra diagonal meshing term) with smooth random texture. Faulty
recordings get a whole-image gain, then an additive band, and in warm state a few sharp peaks.
Finally everything is multiplied by the domain's raw sensor unit and divided by the train maximum,
as the real preparation script did (min-max, not clipped).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile

from hdmap.data.layout import CONDITIONS, DOMAINS, IMAGE_SHAPE, condition_of, normalize_domain

GENERATOR_VERSION = "1"
GROUND_TRUTH_FILE = "ground_truth.csv"
SIMULATION_FILE = "simulation.json"
GROUND_TRUTH_COLUMNS = ("domain", "split", "file", "label", "condition", "fault_row", "severity")

H, W = IMAGE_SHAPE


@dataclass(frozen=True)
class ConditionParams:
    """One machine state (cold or warm) of one domain, in scaled units."""

    level: float  # mean of the image mean
    level_sd: float  # sd of the image mean across images
    cv: float  # within-image pixel std / mean
    max_mean: float  # image max, one meshing hot spot (docs/research-facts.md#domain-c-by-condition: ~2.6-2.8x mean)
    max_sd: float  # warm: max_mean + 2.94 * max_sd ~ 1, so the train max lands near 1 for any n_train
    fault_gain: float  # fault recordings are globally brighter (A, C) or darker (B, D)
    fault_cv: float  # multiplier on cv for fault recordings


@dataclass(frozen=True)
class DomainParams:
    """Everything that differs between domains; see docs/research-facts.md#data-statistics for the targets."""

    raw_unit: float  # raw sensor max (docs/research-facts.md#data-format user_max); undone by the min-max scaling
    warm_share: float  # share of warm images in train; puts the train mean above the test-normal mean
    cold: ConditionParams
    warm: ConditionParams
    contrast: tuple[float, float]  # band contrast above local background (= severity), uniform range
    peak: tuple[float, float, float]  # warm-fault image max (mean, sd, floor), scaled units; 0s = no peaks
    transient_share: float  # warm test normals with one spike just above the train max


# One table for all domains. Levels/cv come from docs/research-facts.md#data-statistics and #cold-vs-warm (cold/warm
# split of the test-normal mean, p90 gaps); gains, hot spots and peaks were tuned by measuring the written files.
DOMAIN_PARAMS: dict[str, DomainParams] = {
    "domain_A": DomainParams(
        raw_unit=0.324670,
        warm_share=0.73,
        cold=ConditionParams(0.153, 0.012, 0.22, 0.36, 0.07, 1.06, 0.90),
        warm=ConditionParams(0.282, 0.012, 0.33, 0.75, 0.085, 1.04, 0.85),
        contrast=(0.25, 0.60),
        peak=(0.95, 0.15, 0.6),
        transient_share=0.01,
    ),
    "domain_B": DomainParams(
        raw_unit=1.324418,
        warm_share=0.70,
        cold=ConditionParams(0.150, 0.011, 0.30, 0.40, 0.08, 0.86, 0.90),
        warm=ConditionParams(0.2966, 0.016, 0.31, 0.735, 0.09, 0.85, 0.90),
        contrast=(0.30, 0.70),
        peak=(0.0, 0.0, 0.0),
        transient_share=0.0,
    ),
    "domain_C": DomainParams(
        raw_unit=0.087341,
        warm_share=0.75,
        cold=ConditionParams(0.190, 0.0145, 0.243, 0.487, 0.11, 1.12, 1.05),
        warm=ConditionParams(0.265, 0.0173, 0.283, 0.748, 0.085, 1.155, 1.10),
        contrast=(0.15, 0.45),
        peak=(1.9, 0.44, 1.08),  # floor > 1: every warm fault in C exceeds the train max
        transient_share=0.02,
    ),
    "domain_D": DomainParams(
        raw_unit=0.418999,
        warm_share=0.70,
        cold=ConditionParams(0.145, 0.010, 0.40, 0.45, 0.10, 0.92, 0.90),
        warm=ConditionParams(0.250, 0.014, 0.34, 0.706, 0.10, 0.92, 0.90),
        contrast=(0.35, 0.80),
        peak=(1.0, 0.2, 0.6),
        transient_share=0.0,
    ),
}

_MAX_Z = 2.94  # hot-spot heights are truncated at this many sds (C warm: 0.748 + 2.94 * 0.085 = 1.0)
_SHOULDER_SHARE = 0.06  # warm hot spots drawn just below the bound (see _hot_spot_z)
_TRAIN_CHUNK = 2000  # train images generated at a time
_FIELD_CAP = 2.2  # texture field soft cap, in sds
_SIGNATURE_SEED = 20240611  # the machine signature (structure) is fixed per domain, independent of seed


# ----------------------------------------------------------------------------------------------
# building blocks


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per image (over the last two axes)."""
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return (x - mean) / np.maximum(std, 1e-12)


def _smooth(x: np.ndarray, axis: int, weights: Sequence[float]) -> np.ndarray:
    """Small symmetric FIR smoothing along one axis with edge padding (numpy only, vectorised)."""
    half = len(weights) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (half, half)
    padded = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for k, w in enumerate(weights):
        out += w * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


@dataclass(frozen=True)
class _Signature:
    """Fixed structure of one domain and condition: what the gearbox looks like in that state."""

    row_profile: np.ndarray  # (H,)
    harmonics: np.ndarray  # column harmonic numbers
    amplitudes: np.ndarray
    phases: np.ndarray
    diagonal: np.ndarray  # (H, W) meshing term, zero for cold


def _signatures(domain: str) -> dict[str, _Signature]:
    """Cold and warm differ in row profile, column harmonics and (warm only) a diagonal meshing term,
    so a brightness-normalised warm image still differs from a cold one (docs/research-facts.md#cold-vs-warm)."""
    rng = np.random.default_rng([_SIGNATURE_SEED, DOMAINS.index(domain)])
    r = np.arange(H)[:, None]
    c = np.arange(W)[None, :]
    rows = np.arange(H) / H
    base = rng.choice(np.arange(2, 11), size=2, replace=False)
    extra = rng.choice(np.arange(11, 25), size=2, replace=False)
    cold_rows = 0.9 * np.cos(2 * np.pi * rows + rng.uniform(0, 2 * np.pi)) + 0.4 * np.cos(
        4 * np.pi * rows + rng.uniform(0, 2 * np.pi)
    )
    warm_rows = 0.6 * np.cos(2 * np.pi * rows + rng.uniform(0, 2 * np.pi)) + 0.7 * np.cos(
        6 * np.pi * rows + rng.uniform(0, 2 * np.pi)
    )
    m, n = rng.integers(3, 8), rng.integers(1, 3)
    diagonal = 0.6 * np.cos(2 * np.pi * (m * c / W + n * r / H) + rng.uniform(0, 2 * np.pi))
    return {
        "cold": _Signature(cold_rows, base, np.array([0.8, 0.5]), rng.uniform(0, 2 * np.pi, 2), np.zeros((H, W))),
        "warm": _Signature(
            warm_rows,
            np.concatenate([base, extra]),
            np.array([0.5, 0.6, 0.6, 0.5]),
            rng.uniform(0, 2 * np.pi, 4),
            diagonal,
        ),
    }


def _truncated_normal(rng: np.random.Generator, n: int, limit: float = 2.2) -> np.ndarray:
    """Standard normal redrawn beyond +-limit: real image means are short-tailed
    (docs/research-facts.md#domain-c-by-condition)."""
    z = rng.standard_normal(n)
    bad = np.abs(z) > limit
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > limit
    return z


def _hot_spot_z(rng: np.random.Generator, n: int, shoulder: bool) -> np.ndarray:
    """Standard scores of hot-spot heights: normal, bounded at _MAX_Z; for warm (which sets the train
    max) with a small shoulder just below the bound. The shoulder makes even a ~100-image train set
    reach the bound, so the scale and every scaled statistic hardly move with n_train (~1-2 %)."""
    z = _truncated_normal(rng, n, _MAX_Z)
    if not shoulder:
        return z
    near_bound = rng.random(n) < _SHOULDER_SHARE
    z[near_bound] = rng.uniform(_MAX_Z - 0.7, _MAX_Z, int(near_bound.sum()))
    return z


def _recordings(
    rng: np.random.Generator, sig: _Signature, p: ConditionParams, n: int, fault: bool, warm: bool
) -> np.ndarray:
    """n normal-like images (n, H, W) in scaled units; fault=True applies the fault recording's gain
    and texture change (the band itself is added by `_add_bands`)."""
    c = np.arange(W)
    shift = rng.normal(0.0, 0.3, (n, 1))  # per-image phase jitter of the meshing pattern
    gain = 1.0 + rng.normal(0.0, 0.1, (n, 1))
    cols = np.zeros((n, W))
    for h, a, ph in zip(sig.harmonics, sig.amplitudes, sig.phases):
        cols += a * gain * np.cos(2 * np.pi * h * c[None, :] / W + ph + shift)
    structure = sig.row_profile[None, :, None] + cols[:, None, :] + sig.diagonal[None]
    texture = rng.standard_normal((n, H, W))
    texture = _smooth(_smooth(texture, 2, (0.25, 0.5, 0.25)), 2, (0.25, 0.5, 0.25))
    texture = _smooth(texture, 1, (0.15, 0.7, 0.15))
    field = _standardise(0.6 * _standardise(structure) + 0.8 * _standardise(texture))
    # soft-cap the bright tail so the image max comes from the hot spot, not from texture outliers
    field = _standardise(np.where(field > 0, _FIELD_CAP * np.tanh(field / _FIELD_CAP), field))
    cv = p.cv * (p.fault_cv if fault else 1.0)
    sigma = np.sqrt(np.log1p(cv**2)) * (1.0 + 0.1 * _truncated_normal(rng, n)[:, None, None])
    e = np.exp(sigma * field)
    level = p.level + p.level_sd * _truncated_normal(rng, n)
    if fault:
        level = level * p.fault_gain
    img = level[:, None, None] * e / e.mean(axis=(1, 2), keepdims=True)
    # one meshing hot spot per image sets the image max; its height is a short-tailed draw so the
    # train max (the scale) hardly depends on n_train
    target = (p.max_mean + p.max_sd * _hot_spot_z(rng, n, warm)) * (p.fault_gain if fault else 1.0)
    rr, cc = np.mgrid[0:H, 0:W]
    for i in range(n):
        r0, c0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        height = max(0.0, target[i] - img[i, r0, c0])
        img[i] += height * np.exp(-0.5 * (((rr - r0) / 0.6) ** 2 + ((cc - c0) / 1.0) ** 2))
    return img


@dataclass(frozen=True)
class _Fault:
    row: int
    severity: float


def _add_bands(
    rng: np.random.Generator,
    imgs: np.ndarray,
    d: DomainParams,
    warm: bool,
    ceiling: float,
) -> list[_Fault]:
    """Add one thin horizontal band (1-2 rows) broken into 2-4 segments to each image, in place.

    Band height = severity x the horizontally smoothed local background (additive). Warm faults also
    get a few sharp peaks in the band; their height is drawn in units of the train maximum
    (`ceiling`) so the image max lands at ~1.9 after scaling whatever n_train is.
    """
    faults = []
    for img in imgs:
        severity = float(rng.uniform(*d.contrast))
        thickness = int(rng.integers(1, 3))
        row = int(rng.integers(1, H - thickness))
        n_seg = int(rng.integers(2, 5))
        coverage = rng.uniform(0.3, 0.7)
        lengths = np.maximum(2, np.round(rng.dirichlet(np.ones(n_seg)) * coverage * W)).astype(int)
        gaps = rng.dirichlet(np.ones(n_seg + 1)) * max(0, W - lengths.sum())
        mask = np.zeros(W)
        start = 0.0
        for length, gap in zip(lengths, gaps[:-1]):
            s = int(start + gap)
            mask[s : s + length] = 1.0
            for edge in (s - 1, s + length):  # soft segment ends
                if 0 <= edge < W and mask[edge] == 0:
                    mask[edge] = 0.5
            start = s + length
        background = _smooth(img, 1, np.full(9, 1 / 9))
        for k in range(thickness):
            weight = 1.0 if k == 0 else rng.uniform(0.6, 1.0)
            img[row + k] += weight * severity * background[row + k] * mask
        if warm and d.peak[0] > 0:
            lo, hi = d.contrast
            z = (severity - (lo + hi) / 2) / (hi - lo) * np.sqrt(12)  # severity as a standard score
            target = d.peak[0] + d.peak[1] * (0.45 * z + 0.89 * rng.standard_normal())
            target = max(target, d.peak[2]) * ceiling
            cols = np.flatnonzero(mask == 1.0)
            n_peaks = int(rng.integers(2, 6))
            for j, col in enumerate(rng.choice(cols, size=min(n_peaks, cols.size), replace=False)):
                height = target if j == 0 else target * rng.uniform(0.35, 0.85)
                r = row + int(rng.integers(0, thickness))
                excess = max(0.0, height - img[r, col])
                img[r, col] += excess
                for nb in (col - 1, col + 1):
                    if 0 <= nb < W:
                        img[r, nb] += 0.45 * excess * rng.uniform(0.6, 1.0)
        faults.append(_Fault(row, severity))
    return faults


# ----------------------------------------------------------------------------------------------
# public API


def _write(folder: Path, images: np.ndarray, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images, start):
        tifffile.imwrite(folder / f"{i:06d}.tiff", np.ascontiguousarray(img, dtype=np.float32))


def _prepare_root(root: Path) -> None:
    """Never overwrite real data: only a root that is empty, new or a previous simulation is used."""
    previous = root / SIMULATION_FILE
    if previous.is_file():
        for name in DOMAINS:
            shutil.rmtree(root / name, ignore_errors=True)
        (root / GROUND_TRUTH_FILE).unlink(missing_ok=True)
        return
    existing = [name for name in DOMAINS if (root / name).exists()]
    if existing:
        raise FileExistsError(
            f"{root} already holds {', '.join(existing)} but no {SIMULATION_FILE}; "
            "refusing to overwrite what may be real data — choose an empty directory"
        )


def simulate(
    root: str | Path,
    n_train: int = 200,
    n_test: int = 100,
    domains: Sequence[str] = ("A", "B", "C", "D"),
    seed: int = 0,
) -> Path:
    """Write a synthetic HDMAP root and return its path.

    Per domain: n_train train/good files (cold/warm mix, unlabelled) and n_test files in each of
    test/good and test/fault (first half cold, second half warm, as `layout.condition_of`). All
    files are divided by the domain's train maximum. Also writes `ground_truth.csv` (one row per
    test file with fault row and severity) and `simulation.json` (the parameters).
    """
    if n_train < 1 or n_test < 2:
        raise ValueError(f"need n_train >= 1 and n_test >= 2, got n_train={n_train}, n_test={n_test}")
    names = list(dict.fromkeys(normalize_domain(d) for d in domains))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _prepare_root(root)
    rows: list[dict] = []
    for name in names:
        rows.extend(_simulate_domain(root, name, n_train, n_test, seed))
    with open(root / GROUND_TRUTH_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GROUND_TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "generator": "hdmap.data.simulate",
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "domains": names,
        "seed": seed,
        "domain_params": {name: asdict(DOMAIN_PARAMS[name]) for name in names},
    }
    (root / SIMULATION_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _train_chunk(seq: np.random.SeedSequence, n: int, d: DomainParams, sigs: dict) -> np.ndarray:
    """n train images: normal only, cold/warm mixed at the domain's warm share (no label is kept)."""
    rng = np.random.default_rng(seq)
    warm = rng.random(n) < d.warm_share
    out = np.empty((n, H, W))
    for cond, sel in (("cold", ~warm), ("warm", warm)):
        if sel.any():
            params = getattr(d, cond)
            out[sel] = _recordings(rng, sigs[cond], params, int(sel.sum()), False, cond == "warm")
    return out


def _simulate_domain(root: Path, name: str, n_train: int, n_test: int, seed: int) -> list[dict]:
    d = DOMAIN_PARAMS[name]
    sigs = _signatures(name)
    train_seq, test_seq = np.random.SeedSequence([seed, DOMAINS.index(name)]).spawn(2)
    rng = np.random.default_rng(test_seq)

    # Train in chunks with their own seeds: pass 1 finds the train max, pass 2 regenerates and writes,
    # so 100,000-image roots never sit in memory.
    chunks = train_seq.spawn(-(-n_train // _TRAIN_CHUNK))
    sizes = [min(_TRAIN_CHUNK, n_train - k * _TRAIN_CHUNK) for k in range(len(chunks))]
    first = _train_chunk(chunks[0], sizes[0], d, sigs)
    ceiling = float(first.max())  # train max in scaled units (~1); test peaks are drawn relative to it
    for seq, n in zip(chunks[1:], sizes[1:]):
        ceiling = max(ceiling, float(_train_chunk(seq, n, d, sigs).max()))
    scale = ceiling * d.raw_unit  # the same max in raw sensor units

    # min-max scaling as the real preparation: raw sensor units / train max, never clipped
    train_dir = root / name / "train" / "good"
    _write(train_dir, first * d.raw_unit / scale)
    for k, (seq, n) in enumerate(zip(chunks[1:], sizes[1:]), 1):
        _write(train_dir, _train_chunk(seq, n, d, sigs) * d.raw_unit / scale, start=k * _TRAIN_CHUNK)

    conditions = [condition_of(i, n_test) for i in range(n_test)]
    n_cold = conditions.count("cold")
    good = np.empty((n_test, H, W))
    fault = np.empty((n_test, H, W))
    faults: list[_Fault] = []
    for cond, sl in (("cold", slice(0, n_cold)), ("warm", slice(n_cold, n_test))):
        n = sl.stop - sl.start
        p = getattr(d, cond)
        good[sl] = _recordings(rng, sigs[cond], p, n, False, cond == "warm")
        if cond == "warm" and d.transient_share > 0:  # a few test-session spikes just above train max
            for img in good[sl]:
                if rng.random() < d.transient_share:
                    r, c = rng.integers(0, H), rng.integers(0, W)
                    img[r, c] = max(img[r, c], ceiling * rng.uniform(1.005, 1.09))
        fault[sl] = _recordings(rng, sigs[cond], p, n, True, cond == "warm")
        faults.extend(_add_bands(rng, fault[sl], d, cond == "warm", ceiling))

    _write(root / name / "test" / "good", good * d.raw_unit / scale)
    _write(root / name / "test" / "fault", fault * d.raw_unit / scale)

    rows = []
    for label, sub in ((0, "good"), (1, "fault")):
        for i in range(n_test):
            f = faults[i] if label else None
            rows.append(
                {
                    "domain": name,
                    "split": "test",
                    "file": f"{name}/test/{sub}/{i:06d}.tiff",
                    "label": label,
                    "condition": conditions[i],
                    "fault_row": "" if f is None else f.row,
                    "severity": 0.0 if f is None else round(f.severity, 6),
                }
            )
    return rows


def read_ground_truth(root: str | Path) -> dict[str, dict] | None:
    """Ground truth of a simulated root keyed by relative file path, or None for real data.

    Values: {label: int, condition: "cold"|"warm", fault_row: int | None, severity: float}.
    """
    path = Path(root) / GROUND_TRUTH_FILE
    if not path.is_file():
        return None
    out: dict[str, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["condition"] not in CONDITIONS:
                raise ValueError(f"{path}: bad condition {row['condition']!r} for {row['file']}")
            out[row["file"]] = {
                "label": int(row["label"]),
                "condition": row["condition"],
                "fault_row": int(row["fault_row"]) if row["fault_row"] != "" else None,
                "severity": float(row["severity"]),
            }
    return out
