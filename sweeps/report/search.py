"""Numbers behind the report's search section (a sweep whose sweep.json has a `search` record).

A search runs several configs (the searched `params`) in each grid cell: model x grid-axis values x seed x test
domain (test domain as :func:`analysis.tested_on` labels it, so it also says what the model was fitted on). Per
cell the search's pick is the trial best on the objective, which needs no test labels unless the search was told
an `oracle:` objective; beside it the trial best on test image AUROC (the ORACLE pick, never deployable) and the
AUROC the pick gave away. The Spearman correlation of objective and test AUROC says whether the objective can be
trusted to select on this sweep.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from sweeps.report.analysis import NULL, SweepData, metric_values, tested_on, value_key

TEST_METRIC = "image_auroc"  # what the ORACLE pick is best on, and what the objective should track
SHOWN_METRICS = ("image_auroc", "accuracy")  # test figures shown for both picks
MIN_CORRELATED = 3  # fewer trials: no Spearman correlation


def cell_axes(data: SweepData) -> list[str]:
    """The grid axes that tell cells apart; `data.domain` is already in the test-domain label (`tested_on`)."""
    return [a for a in data.axes if a != "data.domain"]


def trials(data: SweepData) -> pd.DataFrame:
    """One row per ok result row (trial x test domain), in started_at order, with its cell, the objective and its
    running best within the cell (`index`: the trial's place in its cell, from 1), the test figures and the
    searched values.

    Columns: cell, model, test_domain, <cell axes>, seed, trial_id, index, objective, best_so_far, <SHOWN_METRICS>,
    <searched params>."""
    search = data.search
    ok = data.ok
    if "started_at" in ok.columns:
        ok = ok.sort_values("started_at", kind="stable", na_position="first")
    keys = data.keys.loc[ok.index]
    axes = cell_axes(data)
    frame = pd.DataFrame({"model": ok["model"].astype(str), "test_domain": tested_on(ok)}, index=ok.index)
    for a in axes:
        frame[a] = keys[a]
    frame["seed"] = keys["seed"] if "seed" in keys.columns else NULL
    frame["cell"] = [cell_label(r, axes) for r in frame.to_dict("records")]
    frame["trial_id"] = ok["trial_id"]
    frame["index"] = frame.groupby("cell", sort=False).cumcount() + 1
    frame["objective"] = metric_values(ok, search.objective)
    best = frame.groupby("cell", sort=False)["objective"]
    frame["best_so_far"] = (best.cummax() if search.mode == "max" else best.cummin()).groupby(frame["cell"]).ffill()
    for m in SHOWN_METRICS:
        frame[m] = metric_values(ok, m)
    for p in searched_params(data):
        frame[p] = ok[p]
    return frame.reset_index(drop=True)


def cell_label(row: dict, axes: list[str]) -> str:
    """`patchcore · domain_A · model.k=1 · seed 0`: the axes that apply to the model, the seed if there is one."""
    parts = [row["model"], row["test_domain"]] + [f"{a}={row[a]}" for a in axes if row[a] != NULL]
    if row["seed"] != NULL:
        parts.append(f"seed {row['seed']}")
    return " · ".join(parts)


def searched_params(data: SweepData) -> list[str]:
    """The searched config paths that are results columns (every one, unless the rows are older than the spec)."""
    return [p for p in data.search.params if p in data.ok.columns]


def param_text(row: pd.Series | dict, params: list[str]) -> str:
    """`model.lr=0.00123, model.epochs=5`: the searched values a trial ran with (those that apply to its model)."""
    parts = []
    for p in params:
        v = row[p]
        if value_key(v) == NULL:
            continue
        parts.append(f"{p}={v:.3g}" if isinstance(v, (float, np.floating)) else f"{p}={value_key(v)}")
    return ", ".join(parts)


def picks(data: SweepData, frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: its trials, the pick on the objective (`selected_*`) and the test-best one (`oracle_*`), and `gap`
    = ORACLE test AUROC - selected test AUROC (>= 0; 0 where the objective picked the test-best trial).

    Columns: cell, model, test_domain, <cell axes>, seed, n_trials, then per pick in (selected, oracle): _trial,
    _params, _objective, _<SHOWN_METRICS>; gap. A cell with no finite objective has no selected pick (NaN)."""
    params = searched_params(data)
    descr = ["cell", "model", "test_domain", *cell_axes(data), "seed"]
    figures = ["objective", *SHOWN_METRICS]
    rows = []
    for _, g in frame.groupby("cell", sort=True):
        row = {**g.iloc[0][descr].to_dict(), "n_trials": int(g["trial_id"].nunique())}
        scored = g["objective"].dropna()
        chosen = {
            "selected": None if scored.empty else (scored.idxmax() if data.search.mode == "max" else scored.idxmin()),
            "oracle": g[TEST_METRIC].idxmax() if g[TEST_METRIC].notna().any() else None,
        }
        for pick, idx in chosen.items():
            r = None if idx is None else g.loc[idx]
            row[f"{pick}_trial"] = None if r is None else r["trial_id"]
            row[f"{pick}_params"] = "" if r is None else param_text(r, params)
            row.update({f"{pick}_{m}": np.nan if r is None else float(r[m]) for m in figures})
        row["gap"] = row[f"oracle_{TEST_METRIC}"] - row[f"selected_{TEST_METRIC}"]
        rows.append(row)
    picked = ["n_trials"] + [f"{p}_{c}" for p in ("selected", "oracle") for c in ("trial", "params", *figures)]
    return pd.DataFrame(rows, columns=descr + picked + ["gap"])


def spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    """(rho, p, n) over the pairs where both are finite; NaN under MIN_CORRELATED pairs or with a constant side."""
    both = pd.DataFrame({"x": x, "y": y}).dropna()
    n = len(both)
    if n < MIN_CORRELATED or both["x"].nunique() < 2 or both["y"].nunique() < 2:
        return math.nan, math.nan, n
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = spearmanr(both["x"], both["y"])
    return float(res.statistic), float(res.pvalue), n


def objective_tracks_test(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: Spearman rho of the objective and test image AUROC over its ok result rows (cells pooled, so cell
    differences count too), and the mean rho within cells (trials of one cell only: what selection sees).

    Columns: model, n, rho, p, within_rho, n_cells (the cells with a within-cell rho)."""
    rows = []
    for model, g in frame.groupby("model", sort=True):
        rho, p, n = spearman(g["objective"], g[TEST_METRIC])
        within = [spearman(c["objective"], c[TEST_METRIC])[0] for _, c in g.groupby("cell", sort=False)]
        within = [r for r in within if math.isfinite(r)]
        rows.append(
            {
                "model": model,
                "n": n,
                "rho": rho,
                "p": p,
                "within_rho": float(np.mean(within)) if within else math.nan,
                "n_cells": len(within),
            }
        )
    return pd.DataFrame(rows, columns=["model", "n", "rho", "p", "within_rho", "n_cells"])


def early_stops(data: SweepData) -> dict[str, int | None]:
    """An asha search's trials (ok or stopped early), how many the scheduler stopped, and the epochs they trained
    against the epochs all of them would have trained run to the end (`model.epochs`): what stopping early saved.
    The epoch figures are None where a row lacks them (pruned rows written before they recorded their epochs)."""
    rows = data.rows
    finished = rows[rows["status"].isin(["ok", "pruned"])].drop_duplicates("trial_id")
    counts: dict[str, int | None] = {
        "trials": len(finished),
        "pruned": int((finished["status"] == "pruned").sum()),
        "epochs": None,
        "full": None,
    }
    columns = ["epochs_run", "model.epochs"]
    if len(finished) and set(columns) <= set(finished.columns) and finished[columns].notna().all(axis=None):
        counts["epochs"], counts["full"] = (int(finished[c].sum()) for c in columns)
    return counts


def spans_decades(values: pd.Series, decades: float = 2.0) -> bool:
    """Positive numbers whose max / min exceeds 10**decades: a log axis shows them better."""
    x = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(x) and (x > 0).all() and x.max() / x.min() > 10**decades)
