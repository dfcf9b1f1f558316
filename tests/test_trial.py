"""`run_trial` and `hdmap trial`: determinism, the results schema, and the CLI as a user runs it."""

import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from hdmap.config import load_trial_config
from hdmap.results import results_schema
from hdmap.trial import failed_trial, run_trial, write_outputs
from tests.conftest import tiny_overrides
from tests.test_data import write_layout

METRICS = ("image_auroc", "accuracy", "threshold", "tpr_at_fpr_5pct", "oracle_accuracy")


def test_same_config_same_metrics(sim_root):
    cfg = load_trial_config(None, tiny_overrides(sim_root) + ["data.train_shots=10"])
    a, b = run_trial(cfg).rows[0], run_trial(cfg).rows[0]
    assert {k: a[k] for k in METRICS} == {k: b[k] for k in METRICS}


def test_outputs_follow_schema_and_auroc_recomputes(sim_root, tmp_path):
    cfg = load_trial_config(None, tiny_overrides(sim_root) + ["data.test_domains=[A, C]"])
    written = write_outputs(run_trial(cfg), tmp_path / "t", cfg)
    out = written.parent
    assert written == out / "results.parquet"
    results = pq.read_table(written)
    assert results.schema.equals(results_schema())
    assert sorted(results["test_domain"].to_pylist()) == ["domain_A", "domain_C"]
    assert results["model.k"].to_pylist() == [9, 9] and results["data.domain"].to_pylist() == ["domain_C"] * 2
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    for row in results.to_pylist():
        part = scores[scores.test_domain == row["test_domain"]]
        assert roc_auc_score(part.label, part.score) == pytest.approx(row["image_auroc"], abs=1e-12)
    assert (out / "config.yaml").exists()


def test_error_row_has_schema(sim_root):
    cfg = load_trial_config(None, tiny_overrides(sim_root))
    result = failed_trial(cfg, RuntimeError("boom"))
    table = result.results_table()
    assert table.schema.equals(results_schema())
    assert table["status"].to_pylist() == ["error"] and "RuntimeError: boom" in table["error"][0].as_py()


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_trial_on_foreign_layout(tmp_path):
    """A root written by another program, no sidecar: the loader needs only the documented layout."""
    root = write_layout(tmp_path / "foreign", n_train=30, n_test=10)
    proc = run_cli("trial", *(f"--set={o}" for o in tiny_overrides(root)), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "image AUROC" in proc.stdout and "ORACLE" in proc.stdout
    row = pq.read_table(tmp_path / "run" / "results.parquet").to_pylist()[0]
    assert row["status"] == "ok" and row["severity_mae"] is None  # no ground truth without a sidecar


def test_cli_bad_input_one_clear_error(tmp_path):
    proc = run_cli(
        "trial",
        "--set",
        f"data.root={tmp_path}/missing",
        "--set",
        "model.pretrained=false",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 2
    assert "error: data root" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("trial", "--set", "model.colour=red")
    assert proc.returncode == 2 and "model.colour: unknown field" in proc.stderr


def test_peak_memory_is_per_trial_not_per_process():
    """A reused Ray actor runs many trials in one process: each trial's peak must be its own."""
    import numpy as np

    from hdmap.fit import PeakMemory

    first = PeakMemory()
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    big_peak = first.stop()["peak_rss_mb"]
    del big
    later = PeakMemory().stop()["peak_rss_mb"]
    assert big_peak - later > 200, (big_peak, later)


def test_failed_trial_leaves_no_memory_sampler_running(tmp_path, monkeypatch):
    """Without /proc/self/clear_refs (macOS) a sampling thread measures the peak; a trial that raises must end it
    too, or every failed trial of a reused Ray actor leaves one behind."""
    import threading
    from pathlib import Path

    import hdmap.trial as trial_module

    class NoClearRefs(type(Path())):
        def write_text(self, *args, **kwargs):
            raise OSError("no /proc/self/clear_refs here")

    monkeypatch.setattr(trial_module, "Path", NoClearRefs)
    cfg = load_trial_config(None, tiny_overrides(tmp_path / "missing"))
    with pytest.raises(Exception, match="missing"):
        run_trial(cfg)
    assert not [t for t in threading.enumerate() if "_sample" in t.name]


def test_cli_domain_all_one_model_a_row_per_domain(sim_root_all, tmp_path):
    """`hdmap trial --set data.domain=all`: one model on every domain's train normals, one row per test domain,
    each calibrated on its own domain's validation normals (n_val = that domain's, not the pooled 4)."""
    overrides = tiny_overrides(sim_root_all) + ["data.domain=all", "data.train_shots=4", "data.image_size=[32,96]"]
    from typer.testing import CliRunner

    from sweeps.cli import app

    result = CliRunner().invoke(app, ["trial", *(f"--set={o}" for o in overrides), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "patchcore trained on all" in result.output
    rows = pq.read_table(tmp_path / "run" / "results.parquet").to_pylist()
    assert [r["test_domain"] for r in rows] == ["domain_A", "domain_B", "domain_C", "domain_D"]
    assert {(r["status"], r["train_domain"], r["data.domain"], r["n_fit"], r["n_val"]) for r in rows} == {
        ("ok", "all", "all", 16, 1)
    }
    assert len({r["threshold"] for r in rows}) == 4  # four calibrations, one per domain's normals
    scores = pq.read_table(tmp_path / "run" / "scores.parquet").to_pandas()
    for row in rows:
        part = scores[scores.test_domain == row["test_domain"]]
        assert len(part) == 8 and roc_auc_score(part.label, part.score) == pytest.approx(row["image_auroc"])


def test_domain_all_trains_cutpaste(sim_root_all):
    """A trained model family: its per-epoch val_loss runs on the pooled validation normals, rows stay per domain."""
    overrides = tiny_overrides(sim_root_all, "cutpaste") + ["data.domain=all", "data.train_shots=1"]
    result = run_trial(load_trial_config(None, overrides))
    assert result.ok and [r["test_domain"] for r in result.rows] == ["domain_A", "domain_B", "domain_C", "domain_D"]
    assert all(r["n_fit"] == 4 and r["n_val"] == 1 and r["image_auroc"] is not None for r in result.rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_cli_trial_interrupted_mid_fit_says_so_and_writes_nothing(sim_root, tmp_path, sig):
    """A signal during the fit: exit 143 / 130, one line saying the trial did not finish, no traceback, nothing in
    --out (Lightning's own handling alone: SIGTERM exited 0 with an empty --out, Ctrl-C exited 1 silently)."""
    out = tmp_path / "run"
    draem = [o for o in tiny_overrides(sim_root, "draem") if not o.startswith("model.epochs")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "trial", *(f"--set={o}" for o in draem), "--set=model.epochs=5000"]
        + ["--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = proc.stdout.readline()  # printed once config and --out are checked, right before the data loads
        assert started.startswith("trial "), started + proc.stderr.read()
        time.sleep(3)  # into the fit: 5000 epochs take minutes
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stdout + stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        f"error: trial {started.split()[1].rstrip(':')} did not finish: interrupted by {signal.Signals(sig).name}; "
        f"no result was written to {out} (the same command starts it again)"
    ], stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    assert not list(out.iterdir())
