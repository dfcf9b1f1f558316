"""`hdmap report SWEEP_DIR`: a self-contained HTML report (and a Markdown twin) from a sweep's results.

    from sweeps.report import build_report
    from sweeps.store import ResultStore
    paths = build_report(analysis.load(ResultStore("runs/quickstart")), "runs/quickstart")

Reads the rows through the store (sweeps.store.ResultStore) and the sweep's metadata (sweep.json: name, axes in
spec order, planned trials). Sections: header, model x test-domain table, the paper's table (model comparisons
over domains), one plot per ablation axis, cold vs warm, paired comparisons with bootstrap CIs (a worse result
shown as plainly as a better one), a search's pick per grid cell beside the test-best (ORACLE) pick (sweeps with a
`search`), the ORACLE figures kept apart, failures. plotly.js is inlined once,
so the HTML opens on machines without internet.
The finish step (sweeps.finish) decides where the files go (beside the results, on object storage too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hdmap import metric_catalogue
from hdmap.io import atomic_write
from sweeps.report import analysis, render
from sweeps.report.paper_table import paper_table_section

__all__ = ["ReportPaths", "build_report", "ORACLE_HEADING"]

ORACLE_HEADING = render.ORACLE_HEADING


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    summary: pd.DataFrame  # tidy: model, test_domain, metric, mean, std, n (the catalogue's main metrics)
    comparisons: pd.DataFrame | None = None  # tidy paired deltas: axis, value, baseline, metric, scope, ..., verdict


def build_report(data: analysis.SweepData, out_dir: str | Path) -> ReportPaths:
    """Write `report.html` and `report.md` for a loaded sweep (`analysis.load`) into the local `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    summary = analysis.summarize(data.ok, metric_catalogue.columns(view="main"))
    cmp, cmp_notes = analysis.comparisons(data)
    generated = render.generated_now()

    figs: list[str] = []
    sections = [
        render.header_section(data, cmp, generated),
        render.main_section(data, summary),
        *filter(None, [paper_table_section(data)]),
        render.ablation_section(data, figs),
        render.cold_warm_section(data, figs),
        render.comparison_section(data, cmp, cmp_notes, figs),
        *filter(None, [render.search_section(data, figs)]),
        render.oracle_section(data),
        render.failures_section(data),
    ]
    title = f"Sweep report: {data.name}"
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, render.render_html(title, sections, with_plotly=bool(figs), generated=generated))
    atomic_write(md_path, render.render_markdown(title, sections, html_path.name))
    return ReportPaths(html=html_path, markdown=md_path, summary=summary, comparisons=cmp)
