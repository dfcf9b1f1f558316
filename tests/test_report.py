"""Sweep report on a hand-made sweep directory whose numbers are known in advance.

Synthetic sweep: models patchcore / cpd_patchcore x domains A / C x model.k in {1, 3} x seeds {0, 1, 2}.
    accuracy = BASE[model][domain] + 0.02 * seed - (DROP[model] if k == 3 else 0)
so k=3 is worse than k=1 by exactly 0.06 (patchcore) and 0.04 (cpd_patchcore): mean paired delta -0.05.
Plus one failed trial.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeps.report import ORACLE_HEADING, ReportPaths, build_report
from sweeps.report.analysis import (
    VERDICT_BETTER,
    VERDICT_FEW,
    VERDICT_UNCLEAR,
    VERDICT_WORSE,
    bootstrap_ci,
    first_error_line,
    load,
    sort_values,
    value_key,
    verdict,
)
from sweeps.store import ResultStore

BASE = {"patchcore": {"domain_A": 0.90, "domain_C": 0.80}, "cpd_patchcore": {"domain_A": 0.93, "domain_C": 0.85}}
DROP = {"patchcore": 0.06, "cpd_patchcore": 0.04}
FAILED_ID = "deadbeef0001"


def accuracy(model, domain, k, seed):
    return BASE[model][domain] + 0.02 * seed - (DROP[model] if k == 3 else 0.0)


def _rows():
    rows = []
    for model in BASE:
        for domain in ("domain_A", "domain_C"):
            for k in (1, 3):
                for seed in (0, 1, 2):
                    acc = accuracy(model, domain, k, seed)
                    rows.append(
                        {
                            "trial_id": f"{model[:3]}-{domain[-1]}-k{k}-s{seed}",
                            "sweep": "unit-sweep",
                            "status": "ok",
                            "error": None,
                            "model": model,
                            "train_domain": domain,
                            "test_domain": domain,
                            "seed": seed,
                            "image_auroc": 0.5 + acc / 2,
                            "accuracy": acc,
                            "accuracy_cold": acc - 0.05,
                            "accuracy_warm": acc + 0.01,
                            "auroc_cold": 0.5 + acc / 2 - 0.03,
                            "auroc_warm": 0.5 + acc / 2 + 0.01,
                            "tpr_at_fpr_1pct": acc - 0.3,
                            "gating_accuracy": None,
                            "oracle_accuracy": acc + 0.02,
                            "total_s": 1.5,
                            "data.root": "/data/1000_tiff_minmax",
                            "data.domain": domain,
                            "data.train_shots": 16,
                            "model.name": model,
                            "model.k": k,
                            "model.layers": '["blocks.8", "blocks.11"]',
                            "eval.threshold_percentile": 99.0,
                        }
                    )
    rows.append(
        {
            **{key: None for key in rows[0]},
            "trial_id": FAILED_ID,
            "sweep": "unit-sweep",
            "status": "error",
            "error": 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA out of memory',
            "model": "patchcore",
            "train_domain": "domain_C",
            "test_domain": "domain_C",
            "seed": 7,
            "data.root": "/data/1000_tiff_minmax",
            "data.domain": "domain_C",
            "data.train_shots": 16,
            "model.name": "patchcore",
            "model.k": 9,
            "model.layers": '["blocks.8", "blocks.11"]',
            "eval.threshold_percentile": 99.0,
        }
    )
    return rows


TYPES = {
    "trial_id": pa.string(),
    "sweep": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "model": pa.string(),
    "train_domain": pa.string(),
    "test_domain": pa.string(),
    "seed": pa.int64(),
    "data.root": pa.string(),
    "data.domain": pa.string(),
    "data.train_shots": pa.int64(),
    "model.name": pa.string(),
    "model.k": pa.int64(),
    "model.layers": pa.string(),
}


def make_sweep(path, spec: dict | None = None):
    path.mkdir(parents=True, exist_ok=True)
    rows = _rows()
    table = pa.table({c: pa.array([r[c] for r in rows], type=TYPES.get(c, pa.float64())) for c in rows[0]})
    pq.write_table(table, path / "results.parquet")
    pq.write_table(
        pa.table(
            {
                "trial_id": ["pat-A-k1-s0"] * 2,
                "test_domain": ["domain_A"] * 2,
                "file": ["a.tiff", "b.tiff"],
                "label": pa.array([0, 1], pa.int8()),
                "condition": ["cold", "warm"],
                "score": [0.1, 0.9],
            }
        ),
        path / "scores.parquet",
    )
    if spec is not None:
        (path / "sweep.json").write_text(json.dumps(spec))
    return path


def report_of(d, out=None) -> ReportPaths:
    """The report of a sweep folder, read through its store, written into `out` (default: beside the results)."""
    return build_report(load(ResultStore(d)), out or d)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> ReportPaths:
    d = make_sweep(
        tmp_path_factory.mktemp("sweep") / "unit",
        {"name": "unit-sweep", "axes": {"data.domain": ["domain_A", "domain_C"], "model.k": [1, 3]}},
    )
    return report_of(d)


def _std(xs):
    return float(np.std(xs, ddof=1))


def test_files_and_self_contained(report):
    assert report.html.exists() and report.markdown.exists()
    assert report.html.parent == report.markdown.parent
    html = report.html.read_text()
    assert "plotly.js v" in html  # the bundle itself, inline
    assert html.count("plotly.js v") == 1  # ... exactly once
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)  # no external scripts at all
    # (the bundle mentions https://cdn.plot.ly/un/ as its default topojson URL for geo maps: not a script load)
    assert not re.search(r"src\s*=\s*[\"']https?://", html, re.I)
    assert "Plotly.newPlot" in html
    assert "unit-sweep" in html
    assert "24 ok / 1 error" in html and "24 ok / 1 error" in report.markdown.read_text()


def test_summary_and_main_table(report):
    s = report.summary
    assert list(s.columns) == ["model", "test_domain", "metric", "mean", "std", "n"]
    main = {"image_auroc", "accuracy", "accuracy_cold", "accuracy_warm", "tpr_at_fpr_1pct", "val_synth_auroc"}
    assert set(s["metric"]) == main
    # patchcore on domain_A, pooled over k and seeds: 0.90 0.92 0.94 0.84 0.86 0.88
    xs = [0.90, 0.92, 0.94, 0.84, 0.86, 0.88]
    row = s[(s.model == "patchcore") & (s.test_domain == "domain_A") & (s.metric == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(0.89) and row["n"] == 6
    assert row["std"] == pytest.approx(_std(xs))
    cell = f"0.890 ± {_std(xs):.3f}"
    assert cell in report.html.read_text()
    assert cell in report.markdown.read_text()
    # cpd_patchcore on domain_C, accuracy_cold: (0.85 + 0.02 + 0.81 + 0.02) - 0.05 averages
    ys = [accuracy("cpd_patchcore", "domain_C", k, sd) - 0.05 for k in (1, 3) for sd in (0, 1, 2)]
    cell2 = f"{np.mean(ys):.3f} ± {_std(ys):.3f}"
    assert cell2 in report.html.read_text() and cell2 in report.markdown.read_text()


def test_k3_worse_than_k1_with_ci_and_verdict(report):
    c = report.comparisons
    allrow = c[(c.axis == "model.k") & (c.metric == "accuracy") & (c.scope == "all")].iloc[0]
    assert allrow["value"] == "3" and allrow["baseline"] == "1"
    assert allrow["n_pairs"] == 12
    assert allrow["mean_delta"] == pytest.approx(-0.05)
    assert -0.06 - 1e-9 <= allrow["ci_low"] < allrow["mean_delta"] < allrow["ci_high"] <= -0.04 + 1e-9
    assert allrow["verdict"] == VERDICT_WORSE
    auroc = c[(c.axis == "model.k") & (c.metric == "image_auroc") & (c.scope == "all")].iloc[0]
    assert auroc["mean_delta"] == pytest.approx(-0.025) and auroc["verdict"] == VERDICT_WORSE
    per = c[(c.axis == "model.k") & (c.metric == "accuracy") & (c.scope == "patchcore · domain_C")].iloc[0]
    assert per["n_pairs"] == 3 and per["mean_delta"] == pytest.approx(-0.06) and per["verdict"] == VERDICT_WORSE
    # single-domain sweep: data.domain is never paired, so it is not compared
    assert "data.domain" not in set(c.axis)

    html, md = report.html.read_text(), report.markdown.read_text()
    ci = f"[{allrow['ci_low']:+.3f}, {allrow['ci_high']:+.3f}]"
    for text in (html, md):
        assert "-0.050" in text and ci in text
    assert "v-worse" in html and "▼ worse" in html
    assert "**▼ WORSE**" in md
    # the negative result is in the key comparisons box at the top, before the main table
    assert html.index("▼ worse") < html.index('id="main"')


def test_oracle_and_failures(report):
    html, md = report.html.read_text(), report.markdown.read_text()
    assert ORACLE_HEADING == "ORACLE (test-optimal threshold — not a deployable figure)"
    assert ORACLE_HEADING in html and ORACLE_HEADING in md
    # oracle numbers only inside the oracle section
    oracle_start = html.index('id="oracle"')
    ys = [accuracy("patchcore", "domain_A", k, sd) + 0.02 for k in (1, 3) for sd in (0, 1, 2)]
    assert html.index(f"{np.mean(ys):.3f} ± {_std(ys):.3f}") > oracle_start
    assert "oracle" not in set(report.summary["metric"])
    for text in (html, md):
        assert FAILED_ID in text
        assert "RuntimeError: CUDA out of memory" in text
    assert "Traceback" not in html


def test_ablation_plot_and_cold_warm(report):
    html = report.html.read_text()
    assert 'id="axis-model.k"' in html
    assert "Single-domain sweep" in html  # data.domain axis: no meaningless plot
    assert "fig-coldwarm" in html
    assert "accuracy cold" in report.markdown.read_text()
    assert "AUROC cold faults vs warm normals" not in html  # results written before the cross-condition AUROCs


def test_domain_all_rows_get_their_own_cells_and_pair_with_single_domain(tmp_path):
    """`data.domain: [C, all]`: a model fitted on every domain is never pooled with one fitted on C; the axis
    pairs them on test domain C (baseline C, the spec's first value although results spell it domain_C)."""
    rows = []
    for train in ("domain_C", "all"):
        for seed in (0, 1, 2):
            for test in ["domain_C"] if train == "domain_C" else ["domain_A", "domain_B", "domain_C", "domain_D"]:
                acc = (0.85 if train == "all" else 0.80) + 0.01 * seed
                rows.append(
                    {
                        "trial_id": f"{train}-s{seed}",
                        "sweep": "multi",
                        "status": "ok",
                        "model": "patchcore",
                        "train_domain": train,
                        "test_domain": test,
                        "seed": seed,
                        "image_auroc": acc,
                        "accuracy": acc,
                        "accuracy_cold": acc,
                        "accuracy_warm": acc,
                        "auroc_cold": acc,
                        "auroc_warm": acc,
                        "auroc_cold_fault_vs_warm_good": acc - 0.4,
                        "auroc_warm_fault_vs_cold_good": 0.99,
                        "data.root": "/data",
                        "data.domain": train,
                    }
                )
    d = tmp_path / "multi"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "results.parquet")
    (d / "sweep.json").write_text(json.dumps({"name": "multi", "axes": {"data.domain": ["C", "all"]}}))
    r = report_of(d)
    s = r.summary[r.summary.metric == "accuracy"].set_index("test_domain")
    on_all = [f"domain_{x} (trained on all)" for x in "ABCD"]
    assert list(s.index) == [*on_all[:2], "domain_C", *on_all[2:]]
    assert s.loc["domain_C", "mean"] == pytest.approx(0.81) and s.loc["domain_C", "n"] == 3
    assert s.loc["domain_C (trained on all)", "mean"] == pytest.approx(0.86)
    c = r.comparisons
    pooled = c[(c.axis == "data.domain") & (c.metric == "accuracy") & (c.scope == "all")].iloc[0]
    assert (pooled["value"], pooled["baseline"], pooled["n_pairs"]) == ("all", "domain_C", 3)
    assert pooled["mean_delta"] == pytest.approx(0.05) and pooled["verdict"] == VERDICT_BETTER
    html, md = r.html.read_text(), r.markdown.read_text()
    for text in (html, md):
        assert "domain_C (trained on all)" in text
        assert "AUROC cold faults vs warm normals" in text and "AUROC warm faults vs cold normals" in text
        assert "0.460 ± 0.010" in text  # cold faults vs warm normals of domain_C (trained on all): 0.45, .46, .47


def test_axis_order_sets_the_baseline_and_out_dir(tmp_path):
    """The first value of an axis in sweep.json is its baseline (k=3 first flips the delta's sign); out_dir honoured."""
    axes = {"model.k": [3, 1], "data.domain": ["domain_A", "domain_C"]}
    d = make_sweep(tmp_path / "s2", {"name": "flip", "axes": axes})
    out = tmp_path / "out"
    r = report_of(d, out)
    assert r.html == out / "report.html" and r.markdown.exists()
    assert not (d / "report.html").exists()
    c = r.comparisons
    row = c[(c.axis == "model.k") & (c.metric == "accuracy") & (c.scope == "all")].iloc[0]
    assert (row["value"], row["baseline"]) == ("1", "3")
    assert row["mean_delta"] == pytest.approx(0.05) and row["verdict"] == VERDICT_BETTER
    html = r.html.read_text()
    assert "model.k" in html and "data.domain" in html
    assert "no paired trials" not in html


def test_without_sweep_json_and_all_failed(tmp_path):
    d = make_sweep(tmp_path / "s3")
    r = report_of(d)
    html = r.html.read_text()
    assert "unit-sweep" in html  # name from the `sweep` column
    assert re.search(r"data\.domain, model\.k[^<]*\(inferred\)", html)  # axes: config columns with > 1 value
    # every trial failed: the report still builds, shows the failures, inlines no plotly
    t = pq.read_table(d / "results.parquet").to_pandas()
    t["status"] = "error"
    t["error"] = "ValueError: boom"
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), d / "results.parquet")
    r = report_of(d)
    html = r.html.read_text()
    assert "0 ok / 25 error" in html and "ValueError: boom" in html
    assert r.summary.empty


def test_statistics_helpers():
    mean, lo, hi = bootstrap_ci(np.array([-0.01, 0.01, -0.02, 0.02, 0.0]))
    assert mean == pytest.approx(0.0) and lo < 0 < hi
    assert verdict("accuracy", 5, lo, hi) == VERDICT_UNCLEAR
    assert verdict("accuracy", 1, np.nan, np.nan) == VERDICT_FEW
    assert verdict("accuracy", 2, 0.01, 0.02) == VERDICT_FEW  # 2 pairs: no verdict
    assert verdict("severity_mae", 5, 0.1, 0.2) == VERDICT_WORSE  # lower is better
    assert bootstrap_ci([0.1, 0.2, 0.3]) == bootstrap_ci([0.1, 0.2, 0.3])  # seeded
    assert value_key(3.0) == value_key(3) == "3"
    assert value_key('["a","b"]') == value_key(["a", "b"])
    assert value_key(None) == value_key(float("nan"))
    assert sort_values(["0.02", "0", "0.05"], ["0", "0", "0.05", "0.02", "0.02"]) == ["0", "0.05", "0.02"]  # zip rows
    assert first_error_line("Traceback (most recent call last):\n  x\nKeyError: 'k'") == "KeyError: 'k'"
    assert first_error_line("bad config\nmore") == "bad config"


def test_optional_metric_only_in_axis_tables_where_it_applies(tmp_path):
    """Gating accuracy (reported by cpd_patchcore only) is a column of an axis table only if a row there has it."""
    from sweeps.report.analysis import axis_summary

    path = make_sweep(tmp_path / "gated")
    table = pq.read_table(path / "results.parquet")
    models = table["model"].to_pylist()
    gated = [0.9 if m == "cpd_patchcore" else None for m in models]
    layers = ['["layer2"]' if m == "patchcore" else None for m in models]  # an axis of patchcore only
    table = table.set_column(table.schema.get_field_index("gating_accuracy"), "gating_accuracy", pa.array(gated))
    table = table.set_column(table.schema.get_field_index("model.layers"), "model.layers", pa.array(layers))
    pq.write_table(table, path / "results.parquet")
    data = load(ResultStore(path))
    assert "gating_accuracy" in set(axis_summary(data, "model.k")["metric"])  # both models; cpd reports it
    patchcore_only = axis_summary(data, "model.layers")
    assert set(patchcore_only["model"]) == {"patchcore"}
    assert "gating_accuracy" not in set(patchcore_only["metric"])


def test_an_added_catalogue_entry_shows_in_every_view_it_names(tmp_path, monkeypatch):
    """The report's metric choices come from the catalogue: a new metric in the main, ablation and comparison views
    is a main-table column, an ablation panel and a compared metric, with no edit here."""
    from hdmap.metric_catalogue import METRICS, Metric
    from sweeps.report.analysis import from_table

    views = frozenset({"main", "ablation", "comparison"})
    monkeypatch.setitem(METRICS, "new_score", Metric("new_score", "new score", "detection", views=views))
    store = ResultStore(make_sweep(tmp_path / "new", {"name": "new", "axes": {"model.k": [1, 3]}}))
    results = store.results()
    new_score = [None if acc is None else 1 - acc for acc in results["accuracy"].to_pylist()]
    data = from_table(results.append_column("new_score", pa.array(new_score)), store.meta(), store.uri)
    r = build_report(data, tmp_path / "out")
    assert "new_score" in set(r.summary["metric"])
    assert set(r.comparisons.loc[r.comparisons.metric == "new_score", "verdict"]) >= {VERDICT_BETTER}
    md = r.markdown.read_text()
    main_header = next(line for line in md.splitlines() if line.startswith("| model | test domain | configs | n |"))
    assert main_header.endswith(
        "| TPR @ 1% FPR | val synthetic-fault AUROC | new score |"
    )  # a column after the others, in catalogue order
    assert "new score @ model.k=3" in md and "new score by model.k" in r.html.read_text()  # the ablation table
    assert "| 3 vs 1 | new score | all | 12 | +0.050 |" in md  # compared: 1 - accuracy is 0.05 higher at k=3
