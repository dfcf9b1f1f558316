"""Sweep report rendering: one self-contained HTML file (plotly.js inlined once) and a Markdown twin."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from hdmap.metric_catalogue import METRICS, columns, condition_pairs, label
from sweeps.report import analysis as A
from sweeps.report import search as S
from sweeps.report.tables import Cell, Table, fmt, fmt_ci, fmt_mean_std, fmt_signed

ORACLE_HEADING = "ORACLE (test-optimal threshold — not a deployable figure)"
ORACLE_PICK = "ORACLE: test-best trial (not a deployable pick)"

# Line colours avoid pure green/red: those mean better/worse in this report.
PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#8c6d31"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]
VERDICT_COLOR = {
    A.VERDICT_BETTER: "#1a7f37",
    A.VERDICT_WORSE: "#c62828",
    A.VERDICT_UNCLEAR: "#6b7280",
    A.VERDICT_FEW: "#b7791f",
}
VERDICT_CLASS = {
    A.VERDICT_BETTER: "v-better",
    A.VERDICT_WORSE: "v-worse",
    A.VERDICT_UNCLEAR: "v-unclear",
    A.VERDICT_FEW: "v-few",
}
VERDICT_MD = {
    A.VERDICT_BETTER: "**▲ BETTER**",
    A.VERDICT_WORSE: "**▼ WORSE**",
    A.VERDICT_UNCLEAR: "● no clear difference",
    A.VERDICT_FEW: "○ too few pairs",
}
VERDICT_HTML = {
    A.VERDICT_BETTER: "▲ better",
    A.VERDICT_WORSE: "▼ worse",
    A.VERDICT_UNCLEAR: "● no clear difference",
    A.VERDICT_FEW: "○ too few pairs",
}


def metric_cell(metric: str, stats: pd.Series, row_n: int | None) -> str:
    """One summary row (mean, std, n) of `metric` as a table cell, to the metric's catalogue digits."""
    return fmt_mean_std(stats["mean"], stats["std"], int(stats["n"]), row_n, digits=METRICS[metric].digits)


@dataclass
class Section:
    id: str
    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    css: str = ""

    def text(self, s: str, md: str | None = None, cls: str = "note") -> None:
        self.html.append(f'<p class="{cls}">{html.escape(s)}</p>')
        self.md.append(s if md is None else md)

    def table(self, t: Table) -> None:
        self.html.append(t.html())
        self.md.append(t.markdown())


# --------------------------------------------------------------------------- figures


def _fig_html(fig, div_id: str, height: int) -> str:
    import plotly.io as pio

    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _layout(fig, height: int, legend_rows: int = 1) -> None:
    """Common look; the legend sits just under the x-axis title whatever the figure height."""
    top, bottom = 40, 64 + 22 * legend_rows
    plot_h = max(height - top - bottom, 50)
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=60, r=20, t=top, b=bottom),
        legend=dict(orientation="h", yanchor="top", y=-56 / plot_h, xanchor="left", x=0),
        font=dict(size=12),
        hoverlabel=dict(namelength=-1),
    )


def axis_figure(axsum: pd.DataFrame, axis: str, values: list[str]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(dict.fromkeys(axsum["metric"]))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[label(m) for m in metrics], horizontal_spacing=0.08)
    domains = sorted(axsum["test_domain"].unique())
    models = sorted(axsum["model"].unique())
    order = {v: i for i, v in enumerate(values)}
    n_traces = 0
    for (model, td), g in axsum.groupby(["model", "test_domain"], sort=True):
        name = f"{model} · {td}" if len(models) > 1 else str(td)
        color = PALETTE[domains.index(td) % len(PALETTE)]
        mi = models.index(model)
        n_traces += 1
        for j, m in enumerate(metrics):
            gm = g[g["metric"] == m].copy()
            gm["_o"] = gm["value"].map(lambda v: order.get(v, len(order)))
            gm = gm.sort_values("_o")
            fig.add_trace(
                go.Scatter(
                    x=gm["value"].tolist(),
                    y=gm["mean"].tolist(),
                    error_y=dict(type="data", array=gm["std"].fillna(0).tolist(), visible=True, thickness=1.2, width=5),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=j == 0,
                    line=dict(color=color, dash=DASHES[mi % len(DASHES)], width=2),
                    marker=dict(symbol=SYMBOLS[mi % len(SYMBOLS)], size=8),
                    customdata=gm["n"].tolist(),
                    hovertemplate=f"{html.escape(name)}<br>{html.escape(axis)}=%{{x}}<br>{label(m)} %{{y:.3f}}"
                    "<br>n seeds=%{customdata}<extra></extra>",
                ),
                row=1,
                col=j + 1,
            )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=values, title_text=axis)
    _layout(fig, 400, legend_rows=1 + n_traces // 6)
    return fig


def cold_warm_figure(cw: pd.DataFrame, cross: bool = False):
    """Grouped bars cold vs warm per model x test domain; panels side by side, or stacked when there are many cells.

    `cross`: a third panel, the cross-condition AUROCs, each bar coloured by its faults' condition."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pairs = condition_pairs("cold-warm") + (condition_pairs("cross-condition") if cross else [])
    cw = cw.copy()
    cw["cell"] = cw["model"].astype(str) + "<br>" + cw["test_domain"].astype(str)
    cells = list(dict.fromkeys(cw.sort_values(["model", "test_domain"])["cell"]))
    stacked = len(cells) > 6
    if stacked:
        fig = make_subplots(
            rows=len(pairs), cols=1, subplot_titles=[cold.pair_title for cold, _ in pairs], vertical_spacing=0.16
        )
    else:
        fig = make_subplots(
            rows=1, cols=len(pairs), subplot_titles=[cold.pair_title for cold, _ in pairs], horizontal_spacing=0.08
        )
    colors = {"cold": "#2b6cb0", "warm": "#dd6b20"}
    for j, (cold, warm) in enumerate(pairs):
        for cond, m in (("cold", cold.column), ("warm", warm.column)):
            g = cw[cw["metric"] == m].set_index("cell").reindex(cells)
            fig.add_trace(
                go.Bar(
                    x=cells,
                    y=g["mean"].tolist(),
                    error_y=dict(type="data", array=g["std"].fillna(0).tolist(), visible=True, thickness=1.2),
                    name=cond,
                    legendgroup=cond,
                    showlegend=j == 0,
                    marker_color=colors[cond],
                    customdata=g["n"].tolist(),
                    hovertemplate=f"%{{x}}<br>{cond} {label(m)} %{{y:.3f}}<br>n=%{{customdata}}<extra></extra>",
                ),
                row=j + 1 if stacked else 1,
                col=1 if stacked else j + 1,
            )
    fig.update_layout(barmode="group")
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(tickangle=0, tickfont=dict(size=11))
    height = 380 * len(pairs) if stacked else 440
    _layout(fig, height)
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.04, xanchor="left", x=0))
    return fig, height


def forest_figure(cmp_axis: pd.DataFrame, axis: str):
    """Mean paired delta with its CI, one marker per comparison row, coloured by verdict."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(dict.fromkeys(cmp_axis["metric"]))
    rows = cmp_axis.copy()
    rows["ylab"] = rows["value"].astype(str) + " vs " + rows["baseline"].astype(str) + " · " + rows["scope"].astype(str)
    ylabs = list(dict.fromkeys(rows["ylab"]))
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        subplot_titles=[f"Δ {label(m)}" for m in metrics],
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    shown = set()
    for j, m in enumerate(metrics):
        gm = rows[rows["metric"] == m]
        for v, g in gm.groupby("verdict", sort=False):
            lo = (g["mean_delta"] - g["ci_low"]).fillna(0).clip(lower=0)
            hi = (g["ci_high"] - g["mean_delta"]).fillna(0).clip(lower=0)
            fig.add_trace(
                go.Scatter(
                    x=g["mean_delta"].tolist(),
                    y=g["ylab"].tolist(),
                    mode="markers",
                    name=v,
                    legendgroup=v,
                    showlegend=v not in shown,
                    marker=dict(
                        color=VERDICT_COLOR.get(v, "#000"),
                        size=10,
                        symbol="diamond" if v in (A.VERDICT_BETTER, A.VERDICT_WORSE) else "circle",
                    ),
                    error_x=dict(
                        type="data",
                        symmetric=False,
                        array=hi.tolist(),
                        arrayminus=lo.tolist(),
                        color=VERDICT_COLOR.get(v, "#000"),
                        thickness=2,
                        width=6,
                    ),
                    customdata=list(zip(g["n_pairs"], g["ci_low"].round(4), g["ci_high"].round(4))),
                    hovertemplate="%{y}<br>Δ=%{x:.4f}  95% CI [%{customdata[1]}, %{customdata[2]}]"
                    "<br>n pairs=%{customdata[0]}<extra>" + v + "</extra>",
                ),
                row=1,
                col=j + 1,
            )
            shown.add(v)
        fig.add_vline(x=0, line=dict(color="#111", width=1.5), row=1, col=j + 1)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=ylabs[::-1], automargin=True)
    fig.update_xaxes(zeroline=False, title_text=f"{axis}: value − baseline")
    height = 170 + 26 * len(ylabs)
    _layout(fig, height)
    return fig, height


def objective_trace_figure(frame: pd.DataFrame, objective: str):
    """The objective of each cell's trials in the order they started, and its best so far; one panel per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = sorted(frame["model"].unique())
    cols = min(len(models), 3)
    rows = math.ceil(len(models) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=models, horizontal_spacing=0.08, vertical_spacing=0.18)
    n_cells = 0
    for mi, model in enumerate(models):
        for ci, (cell, g) in enumerate(frame[frame["model"] == model].groupby("cell", sort=True)):
            color = PALETTE[ci % len(PALETTE)]
            at = dict(row=mi // cols + 1, col=mi % cols + 1)
            n_cells += 1
            fig.add_trace(
                go.Scatter(
                    x=g["index"].tolist(),
                    y=g["objective"].tolist(),
                    mode="markers",
                    name=cell,
                    legendgroup=cell,
                    showlegend=False,
                    marker=dict(color=color, size=7, opacity=0.6, symbol=SYMBOLS[mi % len(SYMBOLS)]),
                    customdata=list(zip(g["trial_id"], g[S.TEST_METRIC].round(4))),
                    hovertemplate=f"{html.escape(cell)}<br>trial %{{x}} (%{{customdata[0]}})<br>{objective} %{{y:.4f}}"
                    f"<br>{label(S.TEST_METRIC)} %{{customdata[1]}}<extra></extra>",
                ),
                **at,
            )
            fig.add_trace(
                go.Scatter(
                    x=g["index"].tolist(),
                    y=g["best_so_far"].tolist(),
                    mode="lines",
                    name=cell,
                    legendgroup=cell,
                    line=dict(color=color, width=2, shape="hv"),
                    hovertemplate=f"{html.escape(cell)}<br>best of the first %{{x}}: %{{y:.4f}}<extra></extra>",
                ),
                **at,
            )
    fig.update_xaxes(title_text="trial (in start order)", rangemode="tozero")
    fig.update_yaxes(title_text=objective)
    legend_rows = 1 + n_cells // 3  # cell names are long: about three to a legend row
    height = 360 * rows + 22 * legend_rows
    _layout(fig, height, legend_rows=legend_rows)
    return fig, height


def param_figure(frame: pd.DataFrame, param: str, objective: str):
    """The objective and test image AUROC against one searched parameter, a colour per model; a log x axis where
    the values span more than two decades."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = frame[frame[param].map(A.value_key) != A.NULL]
    numeric = pd.to_numeric(rows[param], errors="coerce")
    x = numeric if numeric.notna().all() else rows[param].map(A.value_key)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"objective: {objective}", f"TEST: {label(S.TEST_METRIC)}"],
        horizontal_spacing=0.08,
    )
    for mi, (model, g) in enumerate(rows.groupby("model", sort=True)):
        for j, y in enumerate(("objective", S.TEST_METRIC)):
            fig.add_trace(
                go.Scatter(
                    x=x[g.index].tolist(),
                    y=g[y].tolist(),
                    mode="markers",
                    name=model,
                    legendgroup=model,
                    showlegend=j == 0,
                    marker=dict(color=PALETTE[mi % len(PALETTE)], size=8, symbol=SYMBOLS[mi % len(SYMBOLS)]),
                    text=g["cell"].tolist(),
                    hovertemplate=f"%{{text}}<br>{html.escape(param)}=%{{x}}<br>{label(y)} %{{y:.4f}}<extra></extra>",
                ),
                row=1,
                col=j + 1,
            )
    log = numeric.notna().all() and S.spans_decades(numeric)
    fig.update_xaxes(title_text=param, type="log" if log else None)
    _layout(fig, 380)
    return fig


# --------------------------------------------------------------------------- sections


def _search_fact(search) -> str:
    """The header's line on a search (sweeps.meta.SearchMeta): an oracle objective is said, not hidden."""
    oracle = " — reads TEST labels: every pick is an ORACLE one" if search.oracle else ""
    return (
        f"{search.method}, {search.num_samples} samples per grid cell and model, objective "
        f"{search.objective} ({search.mode}){oracle}; see Search"
    )


def header_section(data: A.SweepData, cmp: pd.DataFrame, generated: str) -> Section:
    s = Section("overview", f"Sweep report: {data.name}")
    models = sorted(data.ok["model"].unique()) if not data.ok.empty else []
    domains = sorted(data.ok["test_domain"].astype(str).unique()) if not data.ok.empty else []
    facts = [
        ("Sweep", data.name),
        ("Directory", str(data.sweep_dir)),
        ("Generated", generated),
        ("Trials", f"{data.n_trials_ok} ok / {data.n_trials_error} error"),
        ("Result rows", f"{len(data.ok)} (one per trial × test domain)"),
        ("Models", ", ".join(models) or "—"),
        ("Test domains", ", ".join(domains) or "—"),
        ("Ablation axes", (", ".join(data.axes) or "none") + f" ({data.axes_source})"),
    ]
    if data.search is not None:
        facts.append(("Search", _search_fact(data.search)))
    if data.n_trials_missing:
        facts.insert(
            4,
            (
                "Incomplete",
                f"{data.n_trials_missing} of {data.n_trials_planned} trials have no result "
                "(interrupted or still running; `hdmap sweep run SPEC` runs them)",
            ),
        )
    bad = {"Incomplete"} | ({"Trials"} if data.n_trials_error else set())
    bad |= {"Search"} if data.search is not None and data.search.oracle else set()
    s.html.append(
        '<table class="facts">'
        + "".join(
            f'<tr><th>{html.escape(k)}</th><td class="{"bad" if k in bad else ""}">{html.escape(v)}</td></tr>'
            for k, v in facts
        )
        + "</table>"
    )
    s.md.append("\n".join(f"- **{k}:** {v}" for k, v in facts))
    for note in data.notes:
        s.text(note, f"> Note: {note}")

    overall = cmp[cmp["scope"] == "all"] if not cmp.empty else cmp
    if not overall.empty:
        tally = {v: int((overall["verdict"] == v).sum()) for v in VERDICT_HTML}
        tally_txt = ", ".join(f"{n} {v}" for v, n in tally.items() if n)
        items_html, items_md = [], []
        for _, r in overall.iterrows():
            digits = METRICS[r["metric"]].digits
            txt = (
                f"{r['axis']} = {r['value']} vs {r['baseline']} — {label(r['metric'])}: "
                f"Δ {fmt_signed(r['mean_delta'], digits)} 95% CI {fmt_ci(r['ci_low'], r['ci_high'], digits)} "
                f"(n={int(r['n_pairs'])} pairs)"
            )
            cells = cmp[
                (cmp["axis"] == r["axis"])
                & (cmp["value"] == r["value"])
                & (cmp["metric"] == r["metric"])
                & (cmp["scope"] != "all")
            ]
            if len(cells):
                per = {v: int((cells["verdict"] == v).sum()) for v in VERDICT_HTML}
                txt += "; per model × domain: " + ", ".join(f"{n} {v}" for v, n in per.items() if n)
            cls = VERDICT_CLASS.get(r["verdict"], "")
            items_html.append(
                f'<li class="{cls}"><span class="badge {cls}">'
                f"{html.escape(VERDICT_HTML.get(r['verdict'], r['verdict']))}"
                f"</span> {html.escape(txt)}</li>"
            )
            items_md.append(f"- {VERDICT_MD.get(r['verdict'], r['verdict'])} — {txt}")
        s.html.append(
            '<div class="keybox"><h3>Key comparisons (all pairs pooled; details in '
            '<a href="#comparisons">Comparisons</a>)</h3>'
            f'<p class="note">{html.escape(tally_txt)}. A worse result is shown exactly like a better one.</p>'
            f'<ul class="verdicts">{"".join(items_html)}</ul></div>'
        )
        s.md.append(f"### Key comparisons (all pairs pooled)\n\n{tally_txt}.\n\n" + "\n".join(items_md))
    return s


def main_section(data: A.SweepData, summary: pd.DataFrame) -> Section:
    s = Section("main", "Main results: model × test domain")
    s.text(
        "Mean ± sample std over result rows (seeds and every configuration of the model), n = trials. "
        "Accuracy uses the threshold calibrated on validation normals (no test labels). "
        "Where 'configs' > 1 the cell pools several configurations; per-value numbers are in the ablation section.",
    )
    if summary.empty:
        s.text("No successful trials: nothing to summarise.", cls="note bad")
        return s
    configs = A.configs_per_group(data)
    metrics = list(dict.fromkeys(summary["metric"]))
    t = Table(["model", "test domain", "configs", "n"] + [label(m) for m in metrics], numeric_from=2, css="main")
    for (model, td), g in summary.groupby(["model", "test_domain"], sort=True):
        g = g.set_index("metric")
        row_n = int(g["n"].max())
        cells: list = [model, td, str(configs.get((model, td), "")), str(row_n)]
        cells += [metric_cell(m, g.loc[m], row_n) for m in metrics]
        t.add(cells)
    s.table(t)
    return s


def ablation_section(data: A.SweepData, figs: list[str]) -> Section:
    s = Section("ablations", "Ablations: metric vs axis value")
    s.text(
        "One panel per axis: mean over the other settings, error bars = std across seeds (n = seeds). "
        "Rows where the axis does not apply to a model are left out."
    )
    if not data.axes:
        s.text("No ablation axis (no config column takes more than one value).")
        return s
    single = A.is_single_domain(data)
    for axis in data.axes:
        s.html.append(f'<h3 id="axis-{html.escape(axis)}">{html.escape(axis)}</h3>')
        s.md.append(f"### {axis}")
        if axis == "data.domain" and single:
            s.text("Single-domain sweep (train domain = test domain): see the main table.")
            continue
        axsum = A.axis_summary(data, axis)
        values = data.value_order.get(axis, [])
        if axsum.empty:
            s.text("No successful trial has a value for this axis.")
            continue
        varied = axsum.groupby("model")["value"].nunique()
        if (varied > 1).any() and (varied < 2).any():
            fixed = sorted(varied[varied < 2].index)
            axsum = axsum[axsum["model"].isin(varied[varied > 1].index)]
            s.text(f"Left out (the axis takes a single value for them): {', '.join(fixed)}.")
        fig = axis_figure(axsum, axis, values)
        s.html.append(_fig_html(fig, f"fig-axis-{len(figs)}", 400))
        figs.append(axis)
        metrics = list(dict.fromkeys(axsum["metric"]))
        vals = [v for v in values if v in set(axsum["value"])]
        ns = set(axsum.loc[axsum["n"] > 0, "n"])
        common_n = ns.pop() if len(ns) == 1 else None
        if common_n is not None:
            s.text(f"Every cell: mean ± std over n = {common_n} seed(s).")
        t = Table(
            ["model", "test domain"] + [str(v) for m in metrics for v in vals],
            groups=[("", 2)] + [(f"{label(m)} by {axis}", len(vals)) for m in metrics],
            numeric_from=2,
        )
        md_cols = ["model", "test domain"] + [f"{label(m)} @ {axis}={v}" for m in metrics for v in vals]
        for (model, td), g in axsum.groupby(["model", "test_domain"], sort=True):
            cells: list = [model, td]
            for m in metrics:
                for v in vals:
                    r = g[(g["metric"] == m) & (g["value"] == v)]
                    cells.append(metric_cell(m, r.iloc[0], common_n) if len(r) else "—")
            t.add(cells)
        s.html.append(t.html())
        md_t = Table(md_cols, rows=t.rows, row_classes=t.row_classes, numeric_from=2)
        s.md.append(md_t.markdown())
    return s


def cold_warm_section(data: A.SweepData, figs: list[str]) -> Section:
    s = Section("coldwarm", "Cold vs warm")
    s.text(
        "Per machine state, mean ± std over result rows. Gap = warm − cold (positive: the model does better on warm "
        "images). Cross-condition AUROC ranks one state's faults against the other state's normals: a low 'cold "
        "faults vs warm normals' means warm normals score above cold faults. Gating accuracy is shown for gated models."
    )
    cold_warm, cross, gating = (columns(group=g) for g in ("cold-warm", "cross-condition", "gating"))
    cw = A.summarize(data.ok, cold_warm + cross + gating)
    reported = set(cw.loc[cw["n"] > 0, "metric"])
    if not reported & set(cold_warm):
        s.text("No cold/warm metrics in the results.")
        return s
    has_cross = bool(reported & set(cross))
    shown = cold_warm + (cross if has_cross else [])
    gaps = [
        (cold, warm)
        for cold, warm in condition_pairs("cold-warm") + condition_pairs("cross-condition")
        if cold.gap_label and cold.column in shown
    ]
    gating = [m for m in gating if m in reported]
    cols = ["model", "test domain", "n"] + [label(m) for m in shown] + [cold.gap_label for cold, _ in gaps]
    t = Table(cols + [label(m) for m in gating], numeric_from=2)
    for (model, td), g in cw.groupby(["model", "test_domain"], sort=True):
        g = g.set_index("metric")
        row_n = int(g.loc[cold_warm, "n"].max())
        cells: list = [model, td, str(row_n)] + [metric_cell(m, g.loc[m], row_n) for m in shown]
        for cold, warm in gaps:
            cells.append(fmt_signed(g.loc[warm.column, "mean"] - g.loc[cold.column, "mean"], cold.digits))
        t.add(cells + [metric_cell(m, g.loc[m], row_n) for m in gating])
    s.table(t)
    fig, height = cold_warm_figure(cw[cw["metric"].isin(shown)], cross=has_cross)
    s.html.append(_fig_html(fig, "fig-coldwarm", height))
    figs.append("coldwarm")
    return s


def comparison_section(data: A.SweepData, cmp: pd.DataFrame, cmp_notes: list[str], figs: list[str]) -> Section:
    s = Section("comparisons", "Comparisons: paired deltas")
    s.text(
        f"Δ = metric(value) − metric(baseline), paired over trials identical in every other config column "
        f"(seed and test domain included). Mean Δ with a {int(A.CI_LEVEL * 100)}% percentile bootstrap CI "
        f"({A.N_BOOT} resamples, seeded). Verdict: 'better' / 'worse' when the CI excludes 0, "
        f"'no clear difference' when it spans 0, 'too few pairs' under {A.MIN_PAIRS} pairs. "
        "Scope 'all' pools every pair; the rows below it break it down "
        "per model × test domain."
    )
    for note in cmp_notes:
        s.text(note, f"> Note: {note}")
    if cmp.empty:
        s.text("No comparison could be made (no axis with paired trials).")
        return s
    for axis, ca in cmp.groupby("axis", sort=False):
        base = ca["baseline"].iloc[0]
        s.html.append(f"<h3>{html.escape(axis)} (baseline = {html.escape(str(base))})</h3>")
        s.md.append(f"### {axis} (baseline = {base})")
        t = Table(
            ["comparison", "metric", "scope", "n pairs", "mean Δ", "95% CI", "verdict"], numeric_from=3, css="cmp"
        )
        for _, r in ca.iterrows():
            v = r["verdict"]
            cls = VERDICT_CLASS.get(v, "")
            digits = METRICS[r["metric"]].digits
            t.add(
                [
                    f"{r['value']} vs {r['baseline']}",
                    label(r["metric"]),
                    Cell(r["scope"], cls="scope-all" if r["scope"] == "all" else ""),
                    str(int(r["n_pairs"])),
                    Cell(fmt_signed(r["mean_delta"], digits), cls=cls),
                    Cell(fmt_ci(r["ci_low"], r["ci_high"], digits), cls=cls),
                    Cell(VERDICT_HTML.get(v, v), cls=f"verdict {cls}", md=VERDICT_MD.get(v, v)),
                ],
                cls=("row-all " if r["scope"] == "all" else "") + cls,
            )
        fig, height = forest_figure(ca, axis)
        s.html.append(_fig_html(fig, f"fig-cmp-{len(figs)}", height))
        figs.append(f"cmp-{axis}")
        s.table(t)
    return s


def search_section(data: A.SweepData, figs: list[str]) -> Section | None:
    """The search's pick per grid cell beside the ORACLE pick, the objective over trials, and whether the objective
    tracks test AUROC. None for a grid sweep."""
    search = data.search
    if search is None:
        return None
    s = Section("search", "Search: the pick on the objective vs the ORACLE pick")
    objective = label(search.objective)
    auroc_digits = METRICS[S.TEST_METRIC].digits
    article = "An" if search.method[0] in "aeiou" else "A"  # an asha / an optuna search
    s.text(
        f"{article} {search.method} search, {search.num_samples} samples per grid cell and model (seed {search.seed}), "
        f"over {', '.join(search.params) or 'no parameter'}; objective {search.objective} ({search.mode}). "
        "A cell is model × grid-axis values × seed × test domain. Selected: the cell's trial best on the objective. "
        f"{ORACLE_PICK}: the cell's trial best on test {label(S.TEST_METRIC)}. "
        f"Gap = ORACLE − selected test {label(S.TEST_METRIC)}: what selecting on the objective gave away."
    )
    if search.method == "asha":
        stops = S.early_stops(data)
        epochs, full = stops["epochs"], stops["full"]
        saved = ""
        if full:
            saved = f"; they trained {epochs:,} epochs, {epochs / full:.0%} of the {full:,} run to the end would train"
        s.text(
            f"ASHA stopped {stops['pruned']} of {stops['trials']} trials early on the objective per epoch{saved}. "
            "A stopped trial has no test figures and is never selected."
        )
    if search.oracle:
        s.text(
            f"The objective {search.objective} reads TEST labels (an `oracle:` objective): the selected config is "
            "test-selected too, an ORACLE pick — not a deployable figure, and its gap says nothing about selection "
            "without test labels.",
            f"> **ORACLE:** the objective {search.objective} reads TEST labels: the selected config is test-selected "
            "too, an ORACLE pick — not a deployable figure.",
            cls="note bad",
        )
    frame = S.trials(data)
    if frame.empty or frame["objective"].isna().all():
        s.text(f"No successful trial has a value for the objective {search.objective}.", cls="note bad")
        return s
    picks = S.picks(data, frame)
    html_table, md_table = _picks_tables(data, picks)
    s.html.append(html_table.html())
    s.md.append(md_table.markdown())
    gaps = picks["gap"].dropna()
    if len(gaps):
        s.text(
            f"In {int((gaps > 0).sum())} of {len(gaps)} cells the selected config is not the test-best one; "
            f"mean gap {fmt(gaps.mean(), auroc_digits)}, largest {fmt(gaps.max(), auroc_digits)}."
        )

    s.html.append(f"<h3>Does {html.escape(objective)} track test {label(S.TEST_METRIC)}?</h3>")
    s.md.append(f"### Does {objective} track test {label(S.TEST_METRIC)}?")
    s.text(
        f"Spearman ρ of {objective} and test {label(S.TEST_METRIC)} over each model's ok result rows (trial × test "
        f"domain), cells pooled; and the mean ρ within a cell (the trials selection chooses among; cells with at "
        f"least {S.MIN_CORRELATED} trials). Near 1: selecting on the objective picks what the test labels would; "
        "near 0 or negative: it does not, on this sweep."
    )
    corr = S.objective_tracks_test(frame)
    ct = Table(["model", "n", "Spearman ρ (pooled)", "p", "mean ρ within cells", "cells"], numeric_from=1)
    for _, r in corr.iterrows():
        ct.add([r["model"], str(r["n"]), fmt(r["rho"], 2), fmt(r["p"], 3), fmt(r["within_rho"], 2), str(r["n_cells"])])
    s.table(ct)

    fig, height = objective_trace_figure(frame, objective)
    s.html.append(f"<h3>{html.escape(objective)} over the trials of each cell</h3>")
    s.html.append(_fig_html(fig, "fig-search-trace", height))
    figs.append("search-trace")
    for p in S.searched_params(data):
        if frame[p].map(A.value_key).eq(A.NULL).all():
            continue
        s.html.append(f"<h3>{html.escape(p)}: {html.escape(objective)} and test {label(S.TEST_METRIC)}</h3>")
        s.html.append(_fig_html(param_figure(frame, p, objective), f"fig-search-{len(figs)}", 380))
        figs.append(f"search-{p}")
    return s


def _picks_tables(data: A.SweepData, picks: pd.DataFrame) -> tuple[Table, Table]:
    """The per-cell picks (`search.picks`) as the HTML table (grouped headers) and its Markdown twin (each column
    named with its pick); ORACLE cells say so in both."""
    search = data.search
    objective = label(search.objective)
    objective_digits = METRICS[search.objective].digits if search.objective in METRICS else 3
    axes = [a for a in S.cell_axes(data) if (picks[a] != A.NULL).any()]
    with_seed = bool((picks["seed"] != A.NULL).any())
    cell_cols = ["model", "test domain", *axes] + (["seed"] if with_seed else []) + ["trials"]
    shown = ["objective", *S.SHOWN_METRICS]
    figure_cols = [objective if m == "objective" else label(m) for m in shown]
    selected_title = "selected: test-selected (ORACLE)" if search.oracle else f"selected on {objective}"
    gap_col = f"gap: ORACLE − selected {label(S.TEST_METRIC)}"
    t = Table(
        cell_cols + ["config", *figure_cols, "config", *figure_cols, gap_col],
        groups=[("cell", len(cell_cols)), (selected_title, 1 + len(shown)), (ORACLE_PICK, 1 + len(shown)), ("", 1)],
        numeric_from=len(cell_cols) - 1,
        css="search",
    )
    for _, r in picks.iterrows():
        cells: list = [r["model"], r["test_domain"], *(r[a] for a in axes)] + ([r["seed"]] if with_seed else [])
        cells.append(str(r["n_trials"]))
        for pick in ("selected", "oracle"):
            texts = [r[f"{pick}_params"] or "—"]
            texts += [fmt(r[f"{pick}_{m}"], objective_digits if m == "objective" else METRICS[m].digits) for m in shown]
            is_oracle = pick == "oracle" or search.oracle
            cells += [Cell(x, cls="oraclecell", md=f"ORACLE {x}") if is_oracle else x for x in texts]
        cells.append(fmt_signed(r["gap"], METRICS[S.TEST_METRIC].digits))
        t.add(cells)
    md = Table(
        cell_cols
        + [f"selected {c}" for c in ["config", *figure_cols]]
        + [f"ORACLE {c}" for c in ["config", *figure_cols]]
        + [gap_col],
        rows=t.rows,
        row_classes=t.row_classes,
        numeric_from=t.numeric_from,
    )
    return t, md


def oracle_section(data: A.SweepData) -> Section:
    s = Section("oracle", ORACLE_HEADING, css="oracle")
    s.text(
        "Accuracy at the threshold that is best on the TEST labels. It can never be reached in deployment and is "
        "reported only to compare with older tables that used it. Do not quote it as a result."
    )
    oracle, calibrated = "oracle_accuracy", "accuracy"
    o = A.summarize(data.ok, [oracle, calibrated])
    if o.empty or o[o["metric"] == oracle]["n"].sum() == 0:
        s.text("No oracle figures in the results.")
        return s
    t = Table(
        [
            "model",
            "test domain",
            "n",
            f"{label(oracle)} (not deployable)",
            f"calibrated {label(calibrated)} (deployable)",
            "oracle − calibrated",
        ],
        numeric_from=2,
        css="oracle",
    )
    for (model, td), g in o.groupby(["model", "test_domain"], sort=True):
        g = g.set_index("metric")
        row_n = int(g["n"].max())
        oracle_cell = metric_cell(oracle, g.loc[oracle], row_n)
        gap = g.loc[oracle, "mean"] - g.loc[calibrated, "mean"]
        t.add(
            [
                model,
                td,
                str(row_n),
                Cell(oracle_cell, cls="oraclecell", md=f"ORACLE {oracle_cell}"),
                metric_cell(calibrated, g.loc[calibrated], row_n),
                fmt_signed(gap, METRICS[oracle].digits),
            ]
        )
    s.table(t)
    return s


def failures_section(data: A.SweepData) -> Section:
    s = Section("failures", f"Failures ({data.n_trials_error})")
    f = data.failures
    if f.empty:
        s.text("No failed trial.")
        return s
    s.text(
        "Trials recorded with status = error (after retries). The error's first line (a traceback's last line).",
        cls="note bad",
    )
    t = Table(["trial_id", "model", "domain", "config", "error"], css="fail")
    for _, r in f.iterrows():
        t.add([r["trial_id"], str(r["model"]), str(r["domain"]), str(r["config"]), Cell(str(r["error"]), cls="err")])
    s.table(t)
    return s


# --------------------------------------------------------------------------- documents

CSS = """
:root { --better:#1a7f37; --better-bg:#dcf5e3; --worse:#c62828; --worse-bg:#fde2e2; --unclear:#4b5563;
        --unclear-bg:#eef0f3; --few:#8a5a00; --few-bg:#fff4d6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:#1f2933;
       margin:0; background:#f7f8fa; }
header.top { background:#1f2933; color:#fff; padding:14px 28px; position:sticky; top:0; z-index:10; }
header.top h1 { margin:0 0 4px; font-size:20px; }
header.top nav a { color:#cbd5e1; margin-right:16px; text-decoration:none; font-size:13px; }
header.top nav a:hover { color:#fff; }
main { max-width:1320px; margin:0 auto; padding:8px 28px 60px; }
section { background:#fff; border:1px solid #e3e6ea; border-radius:6px; padding:6px 20px 16px; margin:18px 0; }
section h2 { font-size:18px; margin:12px 0 6px; }
section h3 { font-size:15px; margin:18px 0 6px; }
p.note { color:#52606d; margin:4px 0 8px; max-width:1100px; }
p.bad, td.bad { color:var(--worse); font-weight:600; }
.tablewrap { overflow-x:auto; margin:6px 0 10px; }
table { border-collapse:collapse; font-size:13px; }
th, td { padding:4px 10px; border-bottom:1px solid #e5e7eb; text-align:left; white-space:nowrap; vertical-align:top; }
thead th { background:#f1f3f5; border-bottom:2px solid #cfd4da; font-weight:600; }
thead th.grp { text-align:center; border-left:2px solid #fff; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.facts th { background:none; border:none; color:#52606d; font-weight:500; padding:2px 14px 2px 0; }
table.facts td { border:none; padding:2px 0; }
table.fail td.err { white-space:normal; font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px;
                    color:#7f1d1d; min-width:360px; }
tr.row-all td { font-weight:600; border-top:2px solid #cfd4da; }
td.v-better { background:var(--better-bg); color:var(--better); font-weight:700; }
td.v-worse { background:var(--worse-bg); color:var(--worse); font-weight:700; }
td.v-unclear { background:var(--unclear-bg); color:var(--unclear); }
td.v-few { background:var(--few-bg); color:var(--few); font-style:italic; }
.badge { display:inline-block; min-width:150px; padding:1px 8px; border-radius:10px; font-weight:700; font-size:12px;
         text-align:center; }
.badge.v-better { background:var(--better-bg); color:var(--better); border:1px solid var(--better); }
.badge.v-worse { background:var(--worse-bg); color:var(--worse); border:1px solid var(--worse); }
.badge.v-unclear { background:var(--unclear-bg); color:var(--unclear); border:1px solid #9aa5b1; }
.badge.v-few { background:var(--few-bg); color:var(--few); border:1px solid #d69e2e; }
.keybox { border:1px solid #cfd4da; border-radius:6px; padding:4px 14px 8px; margin:12px 0; background:#fbfcfd; }
.keybox h3 { margin:8px 0 2px; }
ul.verdicts { list-style:none; padding:0; margin:6px 0; }
ul.verdicts li { margin:4px 0; }
section.oracle { border:3px dashed #b7791f;
  background:repeating-linear-gradient(135deg,#fffaf0,#fffaf0 14px,#fff4e0 14px,#fff4e0 28px); }
section.oracle h2 { color:#8a4b00; letter-spacing:0.02em; }
td.oraclecell { color:#8a4b00; font-weight:600; }
.plotly-graph-div { margin:4px 0 8px; }
footer { color:#7b8794; font-size:12px; text-align:center; padding:10px; }
"""


def render_html(title: str, sections: list[Section], with_plotly: bool, generated: str) -> str:
    head_js = ""
    if with_plotly:
        from plotly.offline import get_plotlyjs

        head_js = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title.split(" (")[0].split(":")[0])}</a>' for s in sections[1:])
    body = []
    for s in sections:
        tag_cls = f' class="{s.css}"' if s.css else ""
        inner = "\n".join(s.html)
        heading = "" if s.id == "overview" else f"<h2>{html.escape(s.title)}</h2>"
        body.append(f'<section id="{s.id}"{tag_cls}>{heading}\n{inner}\n</section>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
{head_js}
</head>
<body>
<header class="top"><h1>{html.escape(title)}</h1><nav>{nav}</nav></header>
<main>
{chr(10).join(body)}
</main>
<footer>hdmap-sweeps report · generated {html.escape(generated)} · self-contained (no network needed)</footer>
</body>
</html>
"""


def render_markdown(title: str, sections: list[Section], html_name: str) -> str:
    parts = [f"# {title}", "", f"_Plots are in `{html_name}` (same directory, opens offline)._", ""]
    for s in sections:
        if s.id != "overview":
            parts += [f"## {s.title}", ""]
        for p in s.md:
            parts += [p, ""]
    return "\n".join(parts).rstrip() + "\n"


def generated_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = [
    "ORACLE_HEADING",
    "Section",
    "header_section",
    "main_section",
    "ablation_section",
    "cold_warm_section",
    "comparison_section",
    "search_section",
    "oracle_section",
    "failures_section",
    "render_html",
    "render_markdown",
    "generated_now",
    "fmt",
]
