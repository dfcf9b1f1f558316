"""The metric catalogue (hdmap.metric_catalogue) against the results schema, and as the one place metrics are named.

Its use by the report and the W&B report: tests/test_report.py and tests/test_wandb_report.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from hdmap.metric_catalogue import GROUPS, METRICS, VIEWS, Metric, columns, condition_pairs, label, lower_is_better
from hdmap.metrics import METRIC_KEYS
from hdmap.results import ROW_FIELDS

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "hdmap" / "metric_catalogue.py"


def test_every_metric_column_of_the_results_schema_is_catalogued():
    """Every metric (hdmap.metrics) and every measured figure of a row (its float columns: timings, memory) has an
    entry; every entry is a column of the results schema."""
    measured = {name for name, dtype in ROW_FIELDS if pa.types.is_floating(dtype)}
    assert measured >= {"fit_s", "predict_s", "total_s", "peak_rss_mb"}
    assert set(METRIC_KEYS) | measured <= set(METRICS)
    assert set(METRICS) <= set(METRIC_KEYS) | {name for name, _ in ROW_FIELDS}


def test_entries_are_well_formed():
    labels = [m.label for m in METRICS.values()]
    assert len(set(labels)) == len(labels)
    for column, metric in METRICS.items():
        assert metric.column == column
        assert metric.group in GROUPS and metric.views <= set(VIEWS)
        assert not metric.views >= {"ablation", "ablation-when-reported"}, column
        if "comparison" in metric.views:  # a verdict needs a direction
            assert metric.higher_is_better is not None, column
    assert set(columns(view="comparison")) <= set(columns(view="main"))


@pytest.mark.parametrize("group", ["cold-warm", "cross-condition"])
def test_condition_pairs_are_a_cold_metric_then_its_warm_twin(group):
    members = columns(group=group)
    pairs = condition_pairs(group)
    assert pairs and len(members) == 2 * len(pairs)
    swap = {"cold": "warm", "warm": "cold"}
    for cold, warm in pairs:
        assert re.sub("cold|warm", lambda m: swap[m.group(0)], cold.column) == warm.column
        assert re.search("cold|warm", cold.column).group(0) == "cold"
        assert cold.pair_title and not warm.pair_title and not warm.gap_label


def test_lookups():
    assert columns(view="main")[:2] == ["image_auroc", "accuracy"]  # the catalogue's order
    assert label("image_auroc") == "image AUROC" and label("model.k") == "model.k"
    assert METRICS["accuracy"].title == "accuracy (val threshold)" and METRICS["f1"].title == "F1"
    assert lower_is_better("severity_mae") and lower_is_better("fit_s")
    assert not lower_is_better("image_auroc") and not lower_is_better("threshold") and not lower_is_better("x")
    with pytest.raises(ValueError, match="unknown metric view"):
        columns(view="mian")
    with pytest.raises(ValueError, match="unknown metric group"):
        columns(group="cold")


def test_labels_are_written_in_the_catalogue_only():
    """No other module spells a metric's label as a string of its own (a second list of labels to keep in step):
    they ask the catalogue."""
    own = {m.label for m in METRICS.values() if m.label != m.column}
    sources = [p for d in ("hdmap", "sweeps") for p in (ROOT / d).rglob("*.py") if p != CATALOGUE]
    found = [
        f"{path.relative_to(ROOT)}: {text!r}"
        for path in sources
        for text in re.findall(r"""["']([^"'\n]+)["']""", path.read_text())
        if text in own
    ]
    assert not found


def test_an_added_entry_shows_in_the_trial_table(monkeypatch):
    """`hdmap trial`'s table lists the catalogue's trial view: a new entry there is a new row."""
    from rich.console import Console

    from sweeps.cli import metrics_table

    monkeypatch.setitem(METRICS, "new_score", Metric("new_score", "new score", "detection", views=frozenset({"trial"})))
    row = {"model": "patchcore", "train_domain": "domain_A", "trial_id": "t1", "test_domain": "domain_A"}
    console = Console(width=200, record=True)
    console.print(metrics_table([{**row, "image_auroc": 0.9, "new_score": 0.25, "n_val": 12.0}]))
    text = console.export_text()
    assert "image AUROC" in text and "new score" in text and "0.2500" in text
    assert "validation images" not in text  # catalogued, but not in the trial view
