"""Metrics every trial reports, computed from per-image arrays.

One entry point, :func:`evaluate`, returns a flat ``dict[str, float | None]`` whose
keys are always exactly :data:`METRIC_KEYS` (in that order), so every results row
has the same columns. A metric that is undefined for the inputs (one class only,
no gate predictions, fewer than three severity points, ...) is ``None``, never NaN.
All values, counts included, are plain Python ``float`` so the Parquet column
types never depend on which trial happened to be written first.

The decision threshold is calibrated from *validation normal* scores only: a real
deployment never sees test labels, so a threshold tuned on them would overstate
accuracy. The test-optimal ("oracle") accuracy is reported separately and named
as such, only so results can be compared with older tables that used it.

Per machine state: ``auroc_cold`` / ``auroc_warm`` rank each condition's faults against its own
normals; the cross-condition ``auroc_cold_fault_vs_warm_good`` / ``auroc_warm_fault_vs_cold_good``
rank one condition's faults against the other's normals. On HDMAP warm normals are brighter than
cold faults (domain C), so a low cold-fault-vs-warm-normal AUROC says a single mixed model or bank
scores warm normals above faint cold faults: what condition gating is meant to fix, or fails to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hdmap.data.layout import CONDITIONS

__all__ = ["THRESHOLD_METHODS", "CONDITIONS", "METRIC_KEYS", "calibrate_threshold", "evaluate", "val_synth_auroc"]

THRESHOLD_METHODS = ("val_percentile", "val_max", "val_mean_std")

METRIC_KEYS: tuple[str, ...] = (
    "image_auroc",
    "threshold",
    "accuracy",
    "f1",
    "precision",
    "recall",
    "accuracy_cold",
    "accuracy_warm",
    "auroc_cold",
    "auroc_warm",
    "auroc_cold_fault_vs_warm_good",
    "auroc_warm_fault_vs_cold_good",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_5pct",
    "gating_accuracy",
    "severity_mae",
    "severity_spearman",
    "score_severity_spearman",
    "oracle_accuracy",
    "oracle_threshold",
    "n_test",
    "n_test_good",
    "n_test_fault",
    "n_val",
)


# --------------------------------------------------------------------------- validation


def _finite_1d(x: Any, name: str, *, allow_nan: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        what = "infinite" if allow_nan else "non-finite (NaN/inf)"
        raise ValueError(f"{name} contains {int(bad.sum())} {what} value(s)")
    return arr


def _conditions_1d(x: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(x, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"{name} has length {len(arr)} but scores has length {n}")
    arr = np.array([str(v) for v in arr], dtype=object)
    unknown = sorted(set(arr) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"{name} must contain only {CONDITIONS}, got {unknown}")
    return arr


def _as_float(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


# --------------------------------------------------------------------------- threshold


def calibrate_threshold(
    val_normal_scores: Any,
    method: str = "val_percentile",
    percentile: float = 99.0,
    n_std: float = 3.0,
) -> float:
    """Decision threshold from VALIDATION NORMAL scores only (never test labels).

    Calibrating on held-out normals mimics deployment, where only good parts are
    available for setting the alarm level; an image is predicted a fault when its
    score is strictly greater than the threshold.

    - ``val_percentile``: ``np.percentile(scores, percentile)`` (linear interpolation)
    - ``val_max``: ``max(scores)`` (no validation normal would raise an alarm)
    - ``val_mean_std``: ``mean + n_std * std`` (population std, ``ddof=0``)
    """
    scores = _finite_1d(val_normal_scores, "val_scores")
    if scores.size == 0:
        raise ValueError("val_scores must be non-empty to calibrate a threshold")
    if method == "val_percentile":
        if not 0.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        return float(np.percentile(scores, float(percentile)))
    if method == "val_max":
        return float(np.max(scores))
    if method == "val_mean_std":
        return float(np.mean(scores) + float(n_std) * np.std(scores))
    raise ValueError(f"unknown threshold method {method!r}; expected one of {THRESHOLD_METHODS}")


# --------------------------------------------------------------------------- pieces


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score  # sklearn and scipy load in ~1 s: only where a metric is computed

    if np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, scores))


def val_synth_auroc(normal_scores: Any, faulted_scores: Any) -> float | None:
    """AUROC of the synthetic validation set (hdmap.data.synthetic_val): validation normals (label 0) against their
    faulted copies (label 1). None where undefined: an empty side, or a non-finite score (a diverged epoch)."""
    normal, faulted = np.asarray(normal_scores, dtype=float), np.asarray(faulted_scores, dtype=float)
    scores = np.concatenate([normal, faulted])
    if not np.isfinite(scores).all():
        return None
    return _auroc(np.concatenate([np.zeros(normal.size, int), np.ones(faulted.size, int)]), scores)


def _tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """Largest TPR among sklearn roc_curve points (all thresholds kept) with FPR <= target."""
    from sklearn.metrics import roc_curve

    if np.unique(labels).size < 2:
        return None
    # drop_intermediate=False: a collinear point dropped by sklearn may be the best one under the target.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max())  # the (0, 0) point always qualifies


def _oracle(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best test accuracy over every distinct cut of the scores (uses test labels: an oracle).

    Candidates are each unique score ``t`` (predict fault iff score > t) plus the value just
    below the minimum (everything predicted fault). Ties go to the lowest threshold.
    """
    uniq = np.unique(scores)
    cands = np.concatenate(([np.nextafter(uniq[0], -np.inf)], uniq))
    good = np.sort(scores[labels == 0])
    fault = np.sort(scores[labels == 1])
    tn = np.searchsorted(good, cands, side="right")  # goods with score <= t
    tp = fault.size - np.searchsorted(fault, cands, side="right")  # faults with score > t
    acc = (tn + tp) / scores.size
    best = int(np.argmax(acc))
    return float(acc[best]), float(cands[best])


def _severity(sev_pred: np.ndarray, sev_true: np.ndarray) -> tuple[float | None, float | None]:
    mask = ~np.isnan(sev_true)
    if not mask.any():
        return None, None
    p, t = sev_pred[mask], sev_true[mask]
    if np.isnan(p).any():
        raise ValueError("severity_pred is NaN where severity_true is known")
    return float(np.mean(np.abs(p - t))), _spearman(p, t)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho; None for a constant ranking (undefined) or < 3 points (meaningless) or NaNs."""
    from scipy.stats import spearmanr

    if a.size < 3 or np.isnan(a).any() or np.isnan(b).any() or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return _as_float(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class _Inputs:
    """`evaluate`'s arguments, checked: 1-D float arrays of one length (labels 0/1 as int)."""

    scores: np.ndarray
    labels: np.ndarray
    val_scores: np.ndarray
    conditions: np.ndarray | None
    gates: np.ndarray | None
    severity_pred: np.ndarray | None
    severity_true: np.ndarray | None


def _checked(scores, labels, conditions, val_scores, gate_pred, severity_pred, severity_true) -> _Inputs:
    """ValueError naming the argument for anything `evaluate` cannot score: a wrong result row is worse than none."""
    s = _finite_1d(scores, "scores")
    n = s.size
    if n == 0:
        raise ValueError("scores must be non-empty")
    y_raw = _finite_1d(labels, "labels")
    if y_raw.size != n:
        raise ValueError(f"labels has length {y_raw.size} but scores has length {n}")
    if not np.isin(y_raw, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 (good) or 1 (fault), got {sorted(set(y_raw.tolist()) - {0.0, 1.0})}")
    v = _finite_1d(val_scores, "val_scores")
    if v.size == 0:
        raise ValueError("val_scores must be non-empty")
    cond = None if conditions is None else _conditions_1d(conditions, "conditions", n)
    gate = None if gate_pred is None else _conditions_1d(gate_pred, "gate_pred", n)
    if gate is not None and cond is None:
        raise ValueError("gate_pred needs conditions (the true condition) to score gating accuracy")
    if severity_true is not None and severity_pred is None:
        raise ValueError("severity_true needs severity_pred (the model's severity output)")
    sev_p = None if severity_pred is None else _finite_1d(severity_pred, "severity_pred", allow_nan=True)
    sev_t = None if severity_true is None else _finite_1d(severity_true, "severity_true", allow_nan=True)
    for name, arr in (("severity_pred", sev_p), ("severity_true", sev_t)):
        if arr is not None and arr.size != n:
            raise ValueError(f"{name} has length {arr.size} but scores has length {n}")
    return _Inputs(s, y_raw.astype(int), v, cond, gate, sev_p, sev_t)


def _decision_metrics(y: np.ndarray, s: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """AUROC and the metrics of the thresholded decision `pred`."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {
        "image_auroc": _auroc(y, s),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
    }


def _condition_metrics(y: np.ndarray, s: np.ndarray, pred: np.ndarray, cond: np.ndarray) -> dict[str, float | None]:
    """Per machine state, and each state's faults ranked against the other state's normals."""
    from sklearn.metrics import accuracy_score

    out: dict[str, float | None] = {}
    for c in CONDITIONS:
        m = cond == c
        if m.any():
            out[f"accuracy_{c}"] = float(accuracy_score(y[m], pred[m]))
            out[f"auroc_{c}"] = _auroc(y[m], s[m])
    for fault_c, good_c in (("cold", "warm"), ("warm", "cold")):
        m = ((cond == fault_c) & (y == 1)) | ((cond == good_c) & (y == 0))
        out[f"auroc_{fault_c}_fault_vs_{good_c}_good"] = _auroc(y[m], s[m])
    return out


def _output_metrics(x: _Inputs) -> dict[str, float | None]:
    """What a model's extra outputs score: its gate against the true condition, its severity against the truth
    and against its own anomaly score."""
    out: dict[str, float | None] = {}
    if x.gates is not None:
        out["gating_accuracy"] = float(np.mean(x.gates == x.conditions))
    if x.severity_true is not None:
        out["severity_mae"], out["severity_spearman"] = _severity(x.severity_pred, x.severity_true)
    if x.severity_pred is not None:  # consistency of the two outputs, on every test image (no ground truth needed)
        out["score_severity_spearman"] = _spearman(x.scores, x.severity_pred)
    return out


def evaluate(
    scores: Any,
    labels: Any,
    conditions: Any = None,
    *,
    val_scores: Any,
    threshold_method: str = "val_percentile",
    threshold_percentile: float = 99.0,
    threshold_n_std: float = 3.0,
    gate_pred: Any = None,
    severity_pred: Any = None,
    severity_true: Any = None,
) -> dict[str, float | None]:
    """Every metric of one trial; keys are exactly ``METRIC_KEYS``, undefined ones ``None``.

    ``scores``: higher = more anomalous. ``labels``: 0 good / 1 fault. ``conditions``:
    "cold"/"warm" per test image (or None). ``val_scores``: validation NORMAL scores, the
    only input the threshold sees. ``gate_pred``: predicted condition per image (gated
    models). ``severity_pred``: predicted severity (severity models); ``score_severity_spearman`` ranks it against
    the score. ``severity_true`` (needs ``severity_pred``) may be NaN for images without ground truth (real faults).
    """
    x = _checked(scores, labels, conditions, val_scores, gate_pred, severity_pred, severity_true)
    y, s = x.labels, x.scores
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    thr = calibrate_threshold(x.val_scores, threshold_method, percentile=threshold_percentile, n_std=threshold_n_std)
    pred = (s > thr).astype(int)
    out["threshold"] = thr
    out.update(_decision_metrics(y, s, pred))
    if x.conditions is not None:
        out.update(_condition_metrics(y, s, pred, x.conditions))
    out["tpr_at_fpr_1pct"] = _tpr_at_fpr(y, s, 0.01)
    out["tpr_at_fpr_5pct"] = _tpr_at_fpr(y, s, 0.05)
    out.update(_output_metrics(x))
    out["oracle_accuracy"], out["oracle_threshold"] = _oracle(y, s)
    out["n_test"] = float(s.size)
    out["n_test_good"] = float((y == 0).sum())
    out["n_test_fault"] = float((y == 1).sum())
    out["n_val"] = float(x.val_scores.size)
    return out
