"""The report's search section on a hand-made search whose picks are known in advance.

Two grid cells (draem, domain_A, seed 0, model.batch_size 4 | 8) x 6 searched configs (model.lr, model.epochs).
Batch 4: the objective picks trial 3 (val_synth_auroc 0.95, test AUROC 0.90), the test-best is trial 5 (0.93):
gap 0.03. Batch 8: the objective picks the test-best trial 2 (0.92): gap 0.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from hdmap.metric_catalogue import label
from hdmap.results import results_schema, to_table
from sweeps.meta import SearchMeta, SweepMeta
from sweeps.report import build_report
from sweeps.report import search as S
from sweeps.report.analysis import from_table

LR = [1e-5, 3e-4, 1e-3, 5e-3, 1e-2, 2e-5]  # spans three decades: a log x axis
EPOCHS = [5, 10, 5, 20, 10, 20]
CELLS = {  # batch size -> (val_synth_auroc, test image AUROC) per trial, in start order
    4: ([0.70, 0.80, 0.95, 0.60, 0.85, 0.75], [0.72, 0.81, 0.90, 0.65, 0.93, 0.70]),
    8: ([0.60, 0.90, 0.70, 0.65, 0.80, 0.50], [0.60, 0.92, 0.70, 0.66, 0.81, 0.55]),
}
T0 = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


def _schema() -> pa.Schema:
    schema = results_schema()
    if "val_synth_auroc" not in schema.names:  # the column lands with the synthetic validation faults
        schema = schema.append(pa.field("val_synth_auroc", pa.float64()))
    return schema


def _rows() -> list[dict]:
    rows = []
    for i in range(6):
        for b, (objective, auroc) in CELLS.items():
            rows.append(
                {
                    "trial_id": f"b{b}-t{i + 1}",
                    "sweep": "search-sweep",
                    "status": "ok",
                    "model": "draem",
                    "train_domain": "domain_A",
                    "test_domain": "domain_A",
                    "seed": 0,
                    "started_at": T0 + dt.timedelta(minutes=2 * i + (b == 8)),  # the cells' trials interleaved
                    "image_auroc": auroc[i],
                    "accuracy": auroc[i] - 0.1,
                    "val_synth_auroc": objective[i],
                    "data.domain": "domain_A",
                    "model.name": "draem",
                    "model.batch_size": b,
                    "model.lr": LR[i],
                    "model.epochs": EPOCHS[i],
                }
            )
    return rows[::-1]  # stored out of start order: the report orders by started_at


def _meta(search: SearchMeta | None) -> SweepMeta:
    return SweepMeta(name="search-sweep", axes={"model.batch_size": [4, 8]}, search=search)


def _search(**overrides) -> SearchMeta:
    fields = dict(
        method="random", objective="val_synth_auroc", mode="max", params=["model.lr", "model.epochs"], num_samples=6
    )
    return SearchMeta(**{**fields, **overrides})


def _data(search: SearchMeta | None, rows: list[dict] | None = None):
    return from_table(to_table(rows or _rows(), _schema()), _meta(search), "/tmp/search-sweep")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return build_report(_data(_search()), tmp_path_factory.mktemp("search"))


def test_picks_and_gap_per_cell():
    data = _data(_search())
    picks = S.picks(data, S.trials(data)).set_index("model.batch_size")
    assert list(picks["n_trials"]) == [6, 6]
    b4, b8 = picks.loc["4"], picks.loc["8"]
    assert (b4["selected_trial"], b4["oracle_trial"]) == ("b4-t3", "b4-t5")
    assert b4["selected_image_auroc"] == pytest.approx(0.90) and b4["oracle_image_auroc"] == pytest.approx(0.93)
    assert b4["gap"] == pytest.approx(0.93 - 0.90)
    assert b4["selected_params"] == "model.lr=0.001, model.epochs=5"
    assert b8["selected_trial"] == b8["oracle_trial"] == "b8-t2" and b8["gap"] == pytest.approx(0.0)
    # mode min picks the lowest objective instead
    lowest = _data(_search(mode="min"))
    low = S.picks(lowest, S.trials(lowest)).set_index("model.batch_size")
    assert low.loc["4", "selected_trial"] == "b4-t4"


def test_trials_in_start_order_with_best_so_far():
    frame = S.trials(_data(_search()))
    cell = frame[frame["model.batch_size"] == "4"]
    assert list(cell["index"]) == [1, 2, 3, 4, 5, 6]
    assert list(cell["objective"]) == CELLS[4][0]
    assert list(cell["best_so_far"]) == [0.70, 0.80, 0.95, 0.95, 0.95, 0.95]


def test_spearman_per_model_pools_the_cells():
    corr = S.objective_tracks_test(S.trials(_data(_search()))).set_index("model")
    objective = pd.Series(CELLS[4][0] + CELLS[8][0])
    auroc = pd.Series(CELLS[4][1] + CELLS[8][1])
    assert corr.loc["draem", "n"] == 12
    assert corr.loc["draem", "rho"] == pytest.approx(objective.corr(auroc, method="spearman"))
    within = [pd.Series(o).corr(pd.Series(a), method="spearman") for o, a in CELLS.values()]
    assert corr.loc["draem", "within_rho"] == pytest.approx(sum(within) / 2)
    assert corr.loc["draem", "n_cells"] == 2


def test_html_and_markdown_show_both_picks_and_the_gap(report):
    html, md = report.html.read_text(), report.markdown.read_text()
    assert 'id="search"' in html and "ORACLE: test-best trial" in html
    assert "random, 6 samples per grid cell and model, objective val_synth_auroc (max)" in html  # the header fact
    row_b4 = next(line for line in md.splitlines() if line.startswith("| draem | domain_A | 4 |"))
    assert row_b4 == (
        "| draem | domain_A | 4 | 0 | 6 | model.lr=0.001, model.epochs=5 | 0.950 | 0.900 | 0.800 "
        "| ORACLE model.lr=0.01, model.epochs=10 | ORACLE 0.850 | ORACLE 0.930 | ORACLE 0.830 | +0.030 |"
    )
    row_b8 = next(line for line in md.splitlines() if line.startswith("| draem | domain_A | 8 |"))
    assert row_b8.endswith("| ORACLE 0.920 | ORACLE 0.820 | 0.000 |")
    assert "In 1 of 2 cells the selected config is not the test-best one; mean gap 0.015, largest 0.030" in md
    rho = pd.Series(CELLS[4][0] + CELLS[8][0]).corr(pd.Series(CELLS[4][1] + CELLS[8][1]), method="spearman")
    assert f"| draem | 12 | {rho:.2f} |" in md
    assert "test-selected" not in md  # the objective needs no test labels


def test_plots_in_html_only(report):
    html, md = report.html.read_text(), report.markdown.read_text()
    assert 'id="fig-search-trace"' in html
    objective = label("val_synth_auroc")  # the catalogue's name, where it has one
    assert f"model.lr: {objective} and test image AUROC" in html
    assert f"model.epochs: {objective} and test image AUROC" in html
    assert '"type":"log"' in html  # model.lr spans three decades
    assert "fig-search" not in md


def test_grid_sweep_has_no_search_section(tmp_path):
    r = build_report(_data(None), tmp_path)
    html, md = r.html.read_text(), r.markdown.read_text()
    assert 'id="search"' not in html and "fig-search" not in html
    assert "Search" not in md and "ORACLE: test-best trial" not in md


def test_oracle_objective_is_called_test_selected(tmp_path):
    r = build_report(_data(_search(objective="image_auroc", oracle=True)), tmp_path)
    html, md = r.html.read_text(), r.markdown.read_text()
    assert "selected: test-selected (ORACLE)" in html
    assert "the selected config is test-selected too, an ORACLE pick" in md
    assert "reads TEST labels: every pick is an ORACLE one" in md  # the header says it too
    row_b4 = next(line for line in md.splitlines() if line.startswith("| draem | domain_A | 4 |"))
    assert "| ORACLE model.lr=0.01, model.epochs=10 | ORACLE 0.930 | ORACLE 0.930 |" in row_b4  # picks agree
    assert row_b4.endswith("| 0.000 |")


def test_rows_without_the_objective_say_so(tmp_path):
    rows = [{**r, "val_synth_auroc": None} for r in _rows()]
    md = build_report(_data(_search(), rows), tmp_path).markdown.read_text()
    assert "No successful trial has a value for the objective val_synth_auroc." in md


def _asha_rows(pruned_epochs: list[int | None]) -> list[dict]:
    """The search's rows (each ran its model.epochs) and trials ASHA stopped after `pruned_epochs` of 10."""
    rows = [{**r, "epochs_run": r["model.epochs"]} for r in _rows()]
    for i, epochs in enumerate(pruned_epochs):
        stopped = {**rows[0], "trial_id": f"pruned-{i}", "status": "pruned", "image_auroc": None, "accuracy": None}
        rows.append({**stopped, "val_synth_auroc": None, "epochs_run": epochs, "model.epochs": 10})
    return rows


def test_asha_search_says_what_stopping_early_saved(tmp_path):
    data = _data(_search(method="asha"), _asha_rows([3, 3]))
    md = build_report(data, tmp_path).markdown.read_text()
    full = 2 * sum(EPOCHS) + 2 * 10
    assert (
        f"ASHA stopped 2 of 14 trials early on the objective per epoch; they trained {2 * sum(EPOCHS) + 6} epochs, "
        f"{(2 * sum(EPOCHS) + 6) / full:.0%} of the {full} run to the end would train." in md
    )
    picks = S.picks(data, S.trials(data))
    assert not picks["selected_trial"].str.startswith("pruned").any()  # a stopped trial is never selected
    # a pruned row from before rows recorded their epochs: the counts alone
    older = build_report(_data(_search(method="asha"), _asha_rows([3, None])), tmp_path / "older")
    assert "ASHA stopped 2 of 14 trials early on the objective per epoch. A stopped trial" in older.markdown.read_text()
