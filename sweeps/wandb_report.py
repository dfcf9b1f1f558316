"""A W&B Report per sweep: the HTML report's views (sweeps/report) over the sweep's W&B runs.

    hdmap report runs/quickstart --wandb    # writes runs/quickstart/wandb_report.json; publishes it when online
                                            # (with the sweep's own W&B settings, from sweep.json)

The report is described by a plain JSON *definition* (``wandb_report.json``, written beside ``report.html``)
and turned into ``wandb_workspaces.reports.v2`` objects only to publish it: building and saving the definition
needs no network, API key or entity. Publishing (``Report.save()``: it looks up the entity and project and
uploads the view) runs in a daemon thread with a hard timeout (``WandbSettings.timeout_s``), so a W&B outage
or hang costs at most that long and comes back as one status line.

Which runs and keys (see sweeps/tracking.py): one run per trial with group = sweep name, job_type = model,
config = the nested trial config (an axis ``model.k`` is the config key ``model.k``) and the metrics in the
summary: plain (``image_auroc``) for a trial with one test domain, ``<test_domain>/image_auroc`` for a trial
with several. One more run, job_type ``report``, holds the model x test-domain table ``summary``
(`tracking.log_summary`). Every runset is filtered to the sweep's group.

Definition format (``format``: ``hdmap-wandb-report/1``)::

    {"format", "title", "description", "entity", "project", "group", "sections": [
        {"key", "heading", "text",
         "runsets": [{"name", "job_types": [...], "groupby": ["JobType", "config.data.domain"]}],
         "panels": [{"type": "BarPlot", "title", "metrics": [summary keys], "groupby": config key | null},
                    {"type": "ParallelCoordinatesPlot", "title", "columns": [{"config": key} | {"summary": key}]},
                    {"type": "WeavePanelSummaryTable", "title", "table_name": "summary"}]}]}

Sections mirror report.html, their metrics chosen by the catalogue (hdmap.metric_catalogue): main results (the
summary table, and the trial runs grouped by model x domain), one ablation panel per axis (the ablation metrics,
e.g. image_auroc and accuracy, plus gating accuracy / severity MAE where reported, against the axis value, one
runset per model the axis varies for), cold vs warm and the cross-condition AUROCs (with gating accuracy where
reported), severity where reported, and parallel coordinates over the axes and image_auroc. The paired
comparisons with bootstrap CIs and the ORACLE figures stay in report.html only.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdmap import metric_catalogue
from hdmap.io import atomic_write
from sweeps.report import analysis
from sweeps.tracking import WandbSettings, resolve_mode, trial_level_keys

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFINITION_FILE", "WandbReportOutcome", "build_definition", "to_report", "publish", "write_wandb_report"]

DEFINITION_FILE = "wandb_report.json"
FORMAT = "hdmap-wandb-report/1"
REPORT_JOB_TYPE = "report"  # the job_type of tracking.log_summary's run
SUMMARY_TABLE = "summary"  # the table that run carries (log_summary's default name, as the report step logs it)
BY_MODEL_AND_DOMAIN = ["JobType", "config.data.domain"]  # runset grouping: model x (train = test) domain
CROSS_CONDITION_TITLE = "cross-condition AUROC: cold faults vs warm normals, warm faults vs cold normals"
TITLE_MAX = 128  # W&B's limit on a report title


# ------------------------------------------------------------------------------------------ definition


def summary_keys(ok: pd.DataFrame, metric: str) -> list[str]:
    """The run-summary keys that carry `metric` (as tracking.trial_summary names them) in successful trials:
    `metric` for trials with one test domain and for a figure of the whole trial (`val_synth_auroc`),
    `<test_domain>/<metric>` for trials with several."""
    import pandas as pd

    if metric not in ok.columns or ok.empty:
        return []
    if metric in trial_level_keys():
        return [metric] if pd.to_numeric(ok[metric], errors="coerce").notna().any() else []
    n_domains = ok.groupby("trial_id")["test_domain"].transform("size")
    present = pd.to_numeric(ok[metric], errors="coerce").notna()
    keys = [metric] if (present & (n_domains == 1)).any() else []
    keys += [f"{td}/{metric}" for td in sorted(set(ok.loc[present & (n_domains > 1), "test_domain"].astype(str)))]
    return keys


def _keys(ok: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [key for metric in metrics for key in summary_keys(ok, metric)]


def _models_on_axis(data: analysis.SweepData, axis: str) -> list[str]:
    """Models the axis varies for (as the HTML ablation plot shows them); else every model that has a value."""
    values = data.keys[axis]
    applies = values != analysis.NULL
    per_model = values[applies].groupby(data.ok.loc[applies, "model"]).nunique()
    varied = sorted(per_model[per_model > 1].index)
    return varied or sorted(per_model.index)


def _runset(name: str, job_types: list[str], groupby: list[str] | None = None) -> dict:
    return {"name": name, "job_types": list(job_types), "groupby": list(groupby or [])}


def _bar(title: str, metrics: list[str], groupby: str | None = None) -> dict:
    return {"type": "BarPlot", "title": title, "metrics": metrics, "groupby": groupby}


def _section(key: str, heading: str, text: str, runsets: list[dict], panels: list[dict]) -> dict:
    return {"key": key, "heading": heading, "text": text, "runsets": runsets, "panels": panels}


def _main_sections(ok: pd.DataFrame, models: list[str]) -> list[dict]:
    """The report run's summary table, and the catalogue's main metrics per model x domain."""
    return [
        _section(
            "main-table",
            "Main results: model × test domain",
            "Mean, sample std and n over result rows, per model x test domain (the report run's table; "
            "accuracy uses the threshold calibrated on validation normals).",
            [_runset("summary table", [REPORT_JOB_TYPE])],
            [{"type": "WeavePanelSummaryTable", "title": "model × test domain", "table_name": SUMMARY_TABLE}],
        ),
        _section(
            "main-runs",
            "Trials grouped by model × domain",
            "One bar per model x train domain (the mean over its trials); a trial testing on "
            "several domains reports <test_domain>/<metric>.",
            [_runset("trials", models, BY_MODEL_AND_DOMAIN)],
            [
                _bar(metric, keys)
                for metric in metric_catalogue.columns(view="main")
                if (keys := summary_keys(ok, metric))
            ],
        ),
    ]


def _ablation_section(ok: pd.DataFrame, axis: str, on_axis: list[str], metrics: list[str]) -> dict:
    return _section(
        f"axis:{axis}",
        f"Ablation: {axis}",
        f"Mean over the other settings per value of {axis} (std as the range), one run set per model "
        f"the axis varies for: {', '.join(on_axis)}.",
        [_runset(model, [model]) for model in on_axis],
        [_bar(f"{', '.join(metrics)} vs {axis}", _keys(ok, metrics), groupby=axis)],
    )


def _cold_warm_section(ok: pd.DataFrame, models: list[str]) -> dict | None:
    """Cold vs warm pairs, the cross-condition AUROCs in one panel and gating accuracy, as far as reported."""
    panels = [
        _bar(f"{cold.column} vs {warm.column}", keys)
        for cold, warm in metric_catalogue.condition_pairs("cold-warm")
        if (keys := _keys(ok, [cold.column, warm.column]))
    ]
    if cross := _keys(ok, metric_catalogue.columns(group="cross-condition")):
        panels.append(_bar(CROSS_CONDITION_TITLE, cross))
    panels += [
        _bar(metric, keys) for metric in metric_catalogue.columns(group="gating") if (keys := summary_keys(ok, metric))
    ]
    if not panels:
        return None
    return _section(
        "cold-warm",
        "Cold vs warm",
        "Per machine state, per model x domain; cross-condition AUROC = one state's faults vs the "
        "other state's normals; gating accuracy for the gated models.",
        [_runset("trials", models, BY_MODEL_AND_DOMAIN)],
        panels,
    )


def _severity_section(ok: pd.DataFrame, models: list[str]) -> dict | None:
    panels = [
        _bar(metric, keys)
        for metric in metric_catalogue.columns(group="severity")
        if (keys := summary_keys(ok, metric))
    ]
    if not panels:
        return None
    return _section(
        "severity",
        "Severity",
        "Severity regression per model x domain.",
        [_runset("trials", models, BY_MODEL_AND_DOMAIN)],
        panels,
    )


def _parallel_section(ok: pd.DataFrame, models: list[str], axes: list[str]) -> dict:
    columns = ([{"config": "model.name"}] if len(models) > 1 else []) + [{"config": axis} for axis in axes]
    columns += [{"summary": key} for key in summary_keys(ok, "image_auroc")]
    return _section(
        "parallel",
        "Axes × image AUROC",
        "Every trial run: its axis values and image AUROC.",
        [_runset("trials", models)],
        [{"type": "ParallelCoordinatesPlot", "title": "axes × image_auroc", "columns": columns}],
    )


def build_definition(data: analysis.SweepData, settings: WandbSettings) -> dict[str, Any]:
    """The report definition (module docstring) for a loaded sweep; pure: no network, no W&B import."""
    ok = data.ok
    models = sorted(set(ok["model"].astype(str))) if not ok.empty else []
    axes = {axis: on_axis for axis in data.axes if (on_axis := _models_on_axis(data, axis))}  # axes with a value
    ablation = metric_catalogue.columns(view="ablation") + [
        metric for metric in metric_catalogue.columns(view="ablation-when-reported") if summary_keys(ok, metric)
    ]
    sections = [
        *_main_sections(ok, models),
        *(_ablation_section(ok, axis, on_axis, ablation) for axis, on_axis in axes.items()),
        *filter(None, [_cold_warm_section(ok, models), _severity_section(ok, models)]),
        _parallel_section(ok, models, list(axes)),
    ]
    return {
        "format": FORMAT,
        "title": f"Sweep report: {data.name}"[:TITLE_MAX],
        "description": f"{data.n_trials_ok} trials ok, {data.n_trials_error} failed; W&B group {data.name}. "
        "Paired comparisons with bootstrap CIs and ORACLE figures: report.html beside the results.",
        "entity": settings.entity,
        "project": settings.project,
        "group": data.name,
        "sections": sections,
    }


# ------------------------------------------------------------------------------- wandb-workspaces objects


def to_report(definition: dict[str, Any], entity: str | None = None):
    """The `wandb_workspaces` Report for a definition. Offline as long as an entity is known (the definition's,
    else `entity`); with neither, wandb-workspaces asks the W&B API for the default entity."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    entity = definition.get("entity") or entity
    head = {"project": definition["project"], "title": definition["title"], "description": definition["description"]}
    report = wr.Report(entity=entity, **head) if entity else wr.Report(**head)
    group = definition["group"]

    def runset(spec: dict):
        job_types = spec["job_types"]
        job = expr.Metric("JobType") == job_types[0] if len(job_types) == 1 else expr.Metric("JobType").isin(job_types)
        return wr.Runset(
            entity=report.entity,
            project=report.project,
            name=spec["name"],
            filters=expr.And(expr.Metric("Group") == group, job),
            groupby=spec["groupby"],
        )

    def panel(spec: dict):
        kind = spec["type"]
        if kind == "BarPlot":
            by = spec["groupby"]
            grouped = {"groupby": wr.Config(by), "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"} if by else {}
            return wr.BarPlot(title=spec["title"], metrics=spec["metrics"], orientation="v", **grouped)
        if kind == "ParallelCoordinatesPlot":
            columns = [
                wr.ParallelCoordinatesPlotColumn(
                    metric=wr.Config(c["config"]) if "config" in c else wr.SummaryMetric(c["summary"])
                )
                for c in spec["columns"]
            ]
            return wr.ParallelCoordinatesPlot(title=spec["title"], columns=columns, layout=wr.Layout(w=24, h=9))
        if kind == "WeavePanelSummaryTable":
            return wr.WeavePanelSummaryTable(table_name=spec["table_name"], layout=wr.Layout(w=24, h=12))
        raise ValueError(f"{DEFINITION_FILE}: unknown panel type {kind!r}")

    blocks: list = []
    for section in definition["sections"]:
        if not section["panels"] or not section["runsets"]:
            continue
        blocks += [
            wr.H2(section["heading"]),
            wr.P(section["text"]),
            wr.PanelGrid(runsets=[runset(r) for r in section["runsets"]], panels=[panel(p) for p in section["panels"]]),
        ]
    report.blocks = blocks
    return report


# ------------------------------------------------------------------------------------------ publishing


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def publish(definition: dict[str, Any], timeout_s: float) -> str:
    """Build and save the report on W&B in a daemon thread; at most `timeout_s`. A status line, never an exception:
    ``published: <url>``, ``failed: <reason>`` or ``timed out after <N>s`` (the thread is left to die with us)."""
    outcome: dict[str, str] = {}

    def work() -> None:
        try:
            report = to_report(definition)
            report.save()
            outcome["status"] = f"published: {report.url}"
        except BaseException as exc:  # noqa: BLE001 - the status line is the only way out
            outcome["status"] = f"failed: {_one_line(exc)}"

    thread = threading.Thread(target=work, name="wandb-report-publish", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome.get("status") or f"timed out after {timeout_s:g}s"


@dataclass
class WandbReportOutcome:
    path: Path  # the saved definition
    mode: str  # offline | online | disabled (tracking.resolve_mode)
    status: str  # "saved" (not published), or publish()'s status line

    @property
    def failed(self) -> bool:
        return self.mode == "online" and not self.status.startswith("published")

    def message(self, sweep_dir: str | Path) -> str:
        if self.status.startswith("published"):
            return f"W&B report {self.status} (definition: {self.path})"
        later = f"`hdmap report {sweep_dir} --wandb` publishes it"
        if self.mode == "online":
            return f"W&B report not published ({self.status}); definition saved: {self.path}; {later} when W&B answers"
        return (
            f"W&B report definition saved: {self.path} (W&B {self.mode}); {later} later, once online "
            "(an API key configured: `wandb login` or WANDB_API_KEY, and W&B mode online)"
        )


def write_wandb_report(data: analysis.SweepData, settings: WandbSettings, out_dir: str | Path) -> WandbReportOutcome:
    """Build the definition from a loaded sweep (`analysis.load(store)`), save it as `<out_dir>/wandb_report.json`
    and publish it when W&B is online. Raises only for an unwritable `out_dir` (OSError)."""
    definition = build_definition(data, settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / DEFINITION_FILE
    atomic_write(path, json.dumps(definition, indent=2, ensure_ascii=False) + "\n")
    mode = resolve_mode(settings)
    status = publish(definition, settings.timeout_s) if mode == "online" else "saved"
    return WandbReportOutcome(path=path, mode=mode, status=status)
