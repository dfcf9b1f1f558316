"""The one metric catalogue: how every metric column of the results schema (hdmap.results) is named, ranked,
grouped, formatted and where it is shown, so adding a metric touches this file only.

The order of :data:`METRICS` is the order every table, plot and panel lists them in. A metric's ``views`` say where
it is shown:

- ``trial``: the table `hdmap trial` prints;
- ``main``: the report's model x test-domain table (and the W&B report's bars per model x domain);
- ``ablation``: the report's plot per ablation axis; ``ablation-when-reported``: there too, where a trial of the
  axis reports it;
- ``comparison``: the paired comparisons (bootstrap CIs and a better / worse verdict per ``higher_is_better``).

The cold / warm sections show the groups ``cold-warm``, ``cross-condition`` and ``gating``: a condition pair's
cold metric comes just before its warm twin (:func:`condition_pairs`) and names the panel they share.

A metric's group also says whether it is computed from test labels (``Metric.needs_test_labels``): a sweep's search
selects configs on the others (the ``validation`` group: validation normals and their synthetic faults only).
"""

from __future__ import annotations

from dataclasses import dataclass

VIEWS = ("trial", "main", "ablation", "ablation-when-reported", "comparison")
# the groups whose figures are computed from test labels: a search may not select on them (unless named oracle)
TEST_LABEL_GROUPS = frozenset({"detection", "cold-warm", "cross-condition", "severity", "gating", "oracle"})
# group -> its metrics' direction and decimals, unless an entry says otherwise
GROUPS: dict[str, tuple[bool | None, int]] = {
    "detection": (True, 3),
    "cold-warm": (True, 3),
    "cross-condition": (True, 3),
    "severity": (True, 3),
    "gating": (True, 3),
    "oracle": (True, 3),
    "validation": (True, 3),
    "thresholds": (None, 4),
    "counts": (None, 0),
    "cost": (False, 1),
}


@dataclass(frozen=True)
class Metric:
    column: str  # the results column
    label: str  # short, for table headers and plot titles
    group: str  # one of GROUPS
    higher_is_better: bool | None = True  # None: not a figure of merit (a threshold, a count)
    digits: int = 3  # decimals the report prints
    detail: str = ""  # how the figure is obtained, where there is room for it (the trial table)
    views: frozenset[str] = frozenset()
    pair_title: str = ""  # cold metric of a condition pair: the report's panel for the pair
    gap_label: str = ""  # cold metric of a condition pair: the report's warm - cold column ("": none)

    @property
    def needs_test_labels(self) -> bool:
        """Whether the figure is computed from test labels (a search that selects on it peeks at the test set)."""
        return self.group in TEST_LABEL_GROUPS

    @property
    def title(self) -> str:
        """The label with its detail, e.g. `accuracy (val threshold)`."""
        return f"{self.label} ({self.detail})" if self.detail else self.label


def _metric(column: str, label: str, group: str, *views: str, **fields) -> Metric:
    """An entry with its group's direction and decimals unless `fields` say otherwise."""
    higher_is_better, digits = GROUPS[group]
    fields = {"higher_is_better": higher_is_better, "digits": digits, **fields}
    return Metric(column, label, group, views=frozenset(views), **fields)


METRICS: dict[str, Metric] = {
    m.column: m
    for m in (
        _metric("image_auroc", "image AUROC", "detection", "trial", "main", "ablation", "comparison"),
        _metric("accuracy", "accuracy", "detection", "trial", "main", "ablation", "comparison", detail="val threshold"),
        _metric(
            "accuracy_cold",
            "accuracy cold",
            "cold-warm",
            "trial",
            "main",
            pair_title="accuracy (calibrated threshold)",
            gap_label="acc gap warm−cold",
        ),
        _metric("accuracy_warm", "accuracy warm", "cold-warm", "trial", "main"),
        _metric(
            "auroc_cold", "AUROC cold", "cold-warm", "trial", pair_title="image AUROC", gap_label="AUROC gap warm−cold"
        ),
        _metric("auroc_warm", "AUROC warm", "cold-warm", "trial"),
        _metric(
            "auroc_cold_fault_vs_warm_good",
            "AUROC cold faults vs warm normals",
            "cross-condition",
            "trial",
            pair_title="cross-condition AUROC (bar: the faults' condition)",
        ),
        _metric("auroc_warm_fault_vs_cold_good", "AUROC warm faults vs cold normals", "cross-condition", "trial"),
        _metric("f1", "F1", "detection", "trial"),
        _metric("precision", "precision", "detection", "trial"),
        _metric("recall", "recall", "detection", "trial"),
        _metric("tpr_at_fpr_1pct", "TPR @ 1% FPR", "detection", "trial", "main"),
        _metric("tpr_at_fpr_5pct", "TPR @ 5% FPR", "detection", "trial"),
        _metric(
            "val_synth_auroc",
            "val synthetic-fault AUROC",
            "validation",
            "trial",
            "main",
            "ablation",
            detail="val normals vs their synthetic faults",
        ),
        _metric("severity_mae", "severity MAE", "severity", "trial", "ablation-when-reported", higher_is_better=False),
        _metric("severity_spearman", "severity Spearman", "severity", "trial"),
        _metric("score_severity_spearman", "score vs severity Spearman", "severity", "trial"),
        _metric("gating_accuracy", "gating accuracy", "gating", "trial", "ablation-when-reported"),
        _metric("threshold", "threshold", "thresholds", "trial", detail="from val normals"),
        _metric("oracle_accuracy", "ORACLE accuracy", "oracle", "trial", detail="test-optimal threshold"),
        _metric("oracle_threshold", "ORACLE threshold", "thresholds"),
        _metric("n_fit", "images fitted", "counts", "trial"),
        _metric("n_test", "test images", "counts", "trial"),
        _metric("n_test_good", "normal test images", "counts"),
        _metric("n_test_fault", "faulty test images", "counts"),
        _metric("n_val", "validation images", "counts"),
        _metric("features_s", "features s", "cost"),
        _metric("fit_s", "fit s", "cost", "trial"),
        _metric("predict_s", "predict s", "cost", "trial"),
        _metric("total_s", "total s", "cost"),
        _metric("peak_rss_mb", "peak RSS MB", "cost", digits=0),
        _metric("peak_gpu_mb", "peak GPU MB", "cost", digits=0),
    )
}


def columns(*, view: str | None = None, group: str | None = None) -> list[str]:
    """The metric columns shown in `view` and/or of `group`, in catalogue order."""
    if view is not None and view not in VIEWS:
        raise ValueError(f"unknown metric view {view!r}; known: {', '.join(VIEWS)}")
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}; known: {', '.join(GROUPS)}")
    return [
        m.column for m in METRICS.values() if (view is None or view in m.views) and (group is None or m.group == group)
    ]


def label(column: str) -> str:
    """A metric's label; any other column keeps its name."""
    metric = METRICS.get(column)
    return metric.label if metric else column


def lower_is_better(column: str) -> bool:
    """Whether a smaller value is the better one (an error, a cost); unknown columns rank higher-is-better."""
    metric = METRICS.get(column)
    return metric is not None and metric.higher_is_better is False


def condition_pairs(group: str) -> list[tuple[Metric, Metric]]:
    """The group's (cold, warm) metric pairs: each cold metric is listed just before its warm twin."""
    metrics = [METRICS[c] for c in columns(group=group)]
    return list(zip(metrics[::2], metrics[1::2]))
