"""W&B Report definition (sweeps/wandb_report.py), offline, no Ray.

The sweep: the quickstart spec's planned trials (real configs, real results schema, via `failed_trial`'s row)
with made-up metrics, so the axes, models and config keys are the ones a real quickstart run carries. Metric keys
are checked against `tracking.trial_summary`, which names the summary keys of the runs the report reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from hdmap import metric_catalogue
from hdmap.results import results_schema, to_table
from hdmap.trial import failed_trial
from sweeps.cli import app
from sweeps.report import analysis
from sweeps.spec import load_spec
from sweeps.store import ResultStore
from sweeps.tracking import WandbSettings, trial_summary
from sweeps.wandb_report import DEFINITION_FILE, build_definition, publish, to_report

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "examples" / "quickstart.yaml"
AXES = ["data.domain", "model.coreset_ratio", "model.k", "model.gating", "model.lr"]


def _trial_rows(cfg, i: int, test_domains: list[str], severity: bool) -> list[dict]:
    base = failed_trial(cfg, RuntimeError("placeholder")).rows[0]
    rows = []
    for j, domain in enumerate(test_domains):
        acc = 0.6 + 0.01 * i + 0.05 * j
        row = {
            **base,
            "status": "ok",
            "error": None,
            "sweep": "quickstart",
            "test_domain": domain,
            "image_auroc": acc + 0.1,
            "accuracy": acc,
            "accuracy_cold": acc - 0.05,
            "accuracy_warm": acc + 0.02,
            "auroc_cold": acc + 0.05,
            "auroc_warm": acc + 0.12,
            "tpr_at_fpr_1pct": acc - 0.3,
            "val_synth_auroc": acc + 0.08,
        }
        if cfg.model.name == "ca_patchcore" and cfg.model.gating != "mixed":  # gated banks report their gate
            row["gating_accuracy"] = 0.9
        if cfg.model.name == "ca_patchcore":  # results written since the cross-condition AUROCs exist
            row.update(auroc_cold_fault_vs_warm_good=acc - 0.2, auroc_warm_fault_vs_cold_good=acc + 0.1)
        if severity and cfg.model.name == "draem":
            row.update(severity_mae=0.2, severity_spearman=0.7)
        rows.append(row)
    return rows


def make_sweep(
    path: Path, *, models: set[str] | None = None, severity: bool = False, multi_domain: bool = False
) -> tuple[Path, list[list[dict]]]:
    """A quickstart results folder; `multi_domain`: patchcore trials test on both domains (prefixed keys)."""
    plan = load_spec(QUICKSTART)
    trials = []
    for i, cfg in enumerate(plan.trials):
        if models and cfg.model.name not in models:
            continue
        domains = ["domain_A", "domain_C"] if multi_domain and cfg.model.name == "patchcore" else [cfg.data.domain]
        trials.append(_trial_rows(cfg, i, domains, severity))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table([r for rows in trials for r in rows], results_schema()), path / "results.parquet")
    meta = {"name": plan.spec.name, "axes": plan.axis_values, "wandb": {"project": "gearbox", "entity": "lab"}}
    (path / "sweep.json").write_text(json.dumps(meta, default=str))
    return path, trials


def _definition(path: Path) -> dict:
    return build_definition(analysis.load(ResultStore(path)), WandbSettings(project="hdmap-sweeps", entity="team"))


def _sections(definition: dict) -> dict[str, dict]:
    return {s["key"]: s for s in definition["sections"]}


def _logged_keys(trials: list[list[dict]]) -> set[str]:
    return {key for rows in trials for key in trial_summary(rows)}


def test_quickstart_definition_holds_the_html_reports_views(tmp_path):
    path, trials = make_sweep(tmp_path / "quickstart")
    definition = _definition(path)
    sections = _sections(definition)
    assert definition["group"] == "quickstart" and definition["project"] == "hdmap-sweeps"
    assert definition["entity"] == "team" and definition["title"] == "Sweep report: quickstart"

    table = sections["main-table"]
    assert table["panels"] == [
        {"type": "WeavePanelSummaryTable", "title": "model × test domain", "table_name": "summary"}
    ]
    assert table["runsets"] == [{"name": "summary table", "job_types": ["report"], "groupby": []}]
    by_model = sections["main-runs"]
    assert by_model["runsets"][0]["groupby"] == ["JobType", "config.data.domain"]
    assert [p["metrics"] for p in by_model["panels"]] == [[m] for m in metric_catalogue.columns(view="main")]

    # one panel per axis, grouped by that config key, one runset per model the axis varies for
    axis_sections = [s for s in definition["sections"] if s["key"].startswith("axis:")]
    assert [s["key"] for s in axis_sections] == [f"axis:{a}" for a in AXES]
    models_on = {
        "data.domain": ["ca_patchcore", "draem", "patchcore"],
        "model.coreset_ratio": ["patchcore"],
        "model.k": ["patchcore"],
        "model.gating": ["ca_patchcore"],
        "model.lr": ["draem"],
    }
    for axis, section in zip(AXES, axis_sections):
        (panel,) = section["panels"]
        assert panel["type"] == "BarPlot" and panel["groupby"] == axis
        assert panel["metrics"] == ["image_auroc", "accuracy", "val_synth_auroc", "gating_accuracy"]
        assert [r["job_types"] for r in section["runsets"]] == [[m] for m in models_on[axis]]

    cold_warm = sections["cold-warm"]
    assert [(p["title"], p["metrics"]) for p in cold_warm["panels"]] == [
        ("accuracy_cold vs accuracy_warm", ["accuracy_cold", "accuracy_warm"]),
        ("auroc_cold vs auroc_warm", ["auroc_cold", "auroc_warm"]),
        (
            "cross-condition AUROC: cold faults vs warm normals, warm faults vs cold normals",
            ["auroc_cold_fault_vs_warm_good", "auroc_warm_fault_vs_cold_good"],
        ),
        ("gating_accuracy", ["gating_accuracy"]),
    ]
    assert "severity" not in sections  # quickstart's models report no severity

    (parallel,) = sections["parallel"]["panels"]
    assert parallel["columns"] == (
        [{"config": "model.name"}] + [{"config": a} for a in AXES] + [{"summary": "image_auroc"}]
    )

    # every runset is the sweep's group; every trial runset names only the sweep's models
    logged = _logged_keys(trials)
    for section in definition["sections"]:
        for runset in section["runsets"]:
            assert set(runset["job_types"]) <= {"report", "patchcore", "ca_patchcore", "draem"}
        for panel in section["panels"]:
            assert set(panel.get("metrics", [])) <= logged  # keys the runs' summaries really carry
    assert {c["summary"] for c in parallel["columns"] if "summary" in c} <= logged
    assert all(axis in {k for rows in trials for k in rows[0]} for axis in AXES)  # results columns = config paths


def test_wandb_workspaces_objects_reference_the_real_keys(tmp_path, monkeypatch):
    """The definition becomes wandb-workspaces objects and a W&B view spec; only the project-id lookup is faked
    (the one network call `Report._to_model` makes)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr
    from wandb_workspaces.reports.v2 import interface

    path, _ = make_sweep(tmp_path / "quickstart")
    report = to_report(_definition(path))
    assert isinstance(report, wr.Report) and report.entity == "team" and report.project == "hdmap-sweeps"
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    runsets = [r for g in grids for r in g.runsets]
    assert runsets
    for runset in runsets:  # the filter W&B receives: the sweep's group and the runset's job types
        group, job = expr.filters_tree_to_v2(expr.expr_to_filters(runset.filters))["filters"]
        assert group["key"] == {"section": "run", "name": "group"}
        assert (group["op"], group["value"]) == ("=", "quickstart")
        assert job["key"]["name"] == "jobType" and job["connector"] == "AND"
    assert {r.entity for r in runsets} == {"team"}

    panels = [p for g in grids for p in g.panels]
    bars = {p.title: p._to_model().config for p in panels if isinstance(p, wr.BarPlot)}
    assert bars["image_auroc, accuracy, val_synth_auroc, gating_accuracy vs model.k"].group_by == "model.value.k"
    assert (
        bars["image_auroc, accuracy, val_synth_auroc, gating_accuracy vs data.domain"].group_by == "data.value.domain"
    )
    assert bars["accuracy_cold vs accuracy_warm"].metrics == ["accuracy_cold", "accuracy_warm"]
    (pc,) = [p for p in panels if isinstance(p, wr.ParallelCoordinatesPlot)]
    accessors = [c.accessor for c in pc._to_model().config.columns]
    assert accessors[:3] == ["config:model.value.name", "config:data.value.domain", "config:model.value.coreset_ratio"]
    assert accessors[-1] == "summary:image_auroc"
    assert sum(isinstance(p, wr.WeavePanelSummaryTable) and p.table_name == "summary" for p in panels) == 1

    monkeypatch.setattr(interface, "_get_api", lambda: None)
    monkeypatch.setattr(interface, "execute_graphql", lambda *a, **k: {"project": {"internalId": "UHJvamVjdDox"}})
    spec = json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
    text = json.dumps(spec)
    assert '"value": "quickstart"' in text and '"name": "group"' in text and "summary:image_auroc" in text


def test_without_gating_or_severity_no_such_panels_and_with_severity_a_section(tmp_path):
    path, _ = make_sweep(tmp_path / "plain", models={"patchcore", "draem"})
    definition = _definition(path)
    sections = _sections(definition)
    text = json.dumps(definition)
    assert "gating_accuracy" not in text and "severity" not in text
    assert [p["metrics"] for p in sections["cold-warm"]["panels"]] == [
        ["accuracy_cold", "accuracy_warm"],
        ["auroc_cold", "auroc_warm"],
    ]
    assert "axis:model.gating" not in sections  # ca_patchcore's axis is gone with its trials

    path, trials = make_sweep(tmp_path / "severity", models={"patchcore", "draem"}, severity=True)
    sections = _sections(_definition(path))
    assert [p["metrics"] for p in sections["severity"]["panels"]] == [["severity_mae"], ["severity_spearman"]]
    assert sections["axis:model.lr"]["panels"][0]["metrics"] == [
        "image_auroc",
        "accuracy",
        "val_synth_auroc",
        "severity_mae",
    ]
    assert {"severity_mae", "severity_spearman"} <= _logged_keys(trials)


def test_an_added_catalogue_entry_gets_its_panels(tmp_path, monkeypatch):
    """The panels' metrics come from the catalogue: a new main / ablation metric, or a new severity metric where
    reported, is plotted with no edit here."""
    from hdmap.metric_catalogue import METRICS, Metric

    new = {
        "new_score": Metric("new_score", "new score", "detection", views=frozenset({"main", "ablation"})),
        "severity_r2": Metric("severity_r2", "severity R²", "severity"),
    }
    for column, metric in new.items():
        monkeypatch.setitem(METRICS, column, metric)
    path, _ = make_sweep(tmp_path / "new", models={"patchcore", "draem"}, severity=True)
    data = analysis.load(ResultStore(path))
    data.ok["new_score"], data.ok["severity_r2"] = 0.5, 0.4
    sections = _sections(build_definition(data, WandbSettings(project="hdmap-sweeps")))
    assert [p["metrics"] for p in sections["main-runs"]["panels"]][-1] == ["new_score"]
    assert sections["axis:model.k"]["panels"][0]["metrics"] == [
        "image_auroc",
        "accuracy",
        "val_synth_auroc",
        "new_score",
        "severity_mae",
    ]
    assert [p["metrics"] for p in sections["severity"]["panels"]][-1] == ["severity_r2"]


def test_trials_on_several_test_domains_use_prefixed_keys(tmp_path):
    path, trials = make_sweep(tmp_path / "multi", models={"patchcore", "draem"}, multi_domain=True)
    sections = _sections(_definition(path))
    (panel,) = sections["axis:model.k"]["panels"]
    assert panel["metrics"] == [
        "image_auroc",
        "domain_A/image_auroc",
        "domain_C/image_auroc",
        "accuracy",
        "domain_A/accuracy",
        "domain_C/accuracy",
        "val_synth_auroc",  # a figure of the whole trial: one key, never prefixed
    ]
    assert set(panel["metrics"]) <= _logged_keys(trials)  # draem: plain keys; patchcore: prefixed


def test_cli_wandb_offline_saves_the_definition(tmp_path, monkeypatch):
    path, _ = make_sweep(tmp_path / "quickstart")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    monkeypatch.setattr("sweeps.tracking.log_summary", lambda settings, **k: logged.append(settings) or "not logged")
    result = CliRunner().invoke(app, ["report", str(path), "--wandb"])
    assert result.exit_code == 0, result.output
    saved = json.loads((path / DEFINITION_FILE).read_text())
    assert saved["group"] == "quickstart" and (path / "report.html").exists()
    # the sweep's own W&B settings (sweep.json), for the summary run and the report alike
    assert (saved["entity"], saved["project"]) == ("lab", "gearbox") == (logged[0].entity, logged[0].project)
    assert f"W&B report definition saved: {path / DEFINITION_FILE} (W&B offline)" in result.output
    assert f"`hdmap report {path} --wandb` publishes it later, once online" in result.output

    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, ["report", str(path), "--wandb", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / DEFINITION_FILE).read_text()) == saved


def test_publish_is_bounded_and_fails_in_one_line(tmp_path, monkeypatch):
    path, _ = make_sweep(tmp_path / "quickstart", models={"draem"})
    definition = _definition(path)

    monkeypatch.setattr("sweeps.wandb_report.to_report", lambda d: time.sleep(30))
    t0 = time.monotonic()
    assert publish(definition, 0.5) == "timed out after 0.5s"
    assert time.monotonic() - t0 < 5

    monkeypatch.undo()  # the real wandb-workspaces, against a closed local port and no key: fails, one line
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    status = publish({**definition, "entity": None}, 20)
    assert status.startswith(("failed: ", "timed out after")) and "\n" not in status


def test_cli_wandb_online_failure_is_one_line_and_exit_1(tmp_path, monkeypatch):
    path, _ = make_sweep(tmp_path / "quickstart", models={"draem"})
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr("sweeps.tracking.log_summary", lambda *a, **k: "not logged (test)")
    monkeypatch.setattr("sweeps.wandb_report.publish", lambda d, t: "failed: ConnectionError: W&B unreachable")
    result = CliRunner().invoke(app, ["report", str(path), "--wandb"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "W&B report not published (failed: ConnectionError: W&B unreachable); definition saved" in result.output
    assert (path / DEFINITION_FILE).exists()
