"""W&B tracking: offline runs hold the metrics; a dead server or a hung logger never fails or stalls a trial.

Everything runs in tmp_path with HOME pointed there (no ~/.netrc, no staging in the real home). The only
network address used is a closed port on loopback (127.0.0.1:9) and a local counting listener.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from sweeps import tracking
from sweeps.tracking import WandbSettings, log_summary, log_trial, read_offline_run, resolve_mode, run_id

CONFIG = {"seed": 0, "data": {"domain": "A", "image_size": [64, 192]}, "model": {"name": "patchcore", "k": 3}}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No W&B configuration leaks in from the machine or from conftest's WANDB_MODE default."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_DATA_DIR", "WANDB_SERVICE",
                "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _rows(domains=("A", "C")):
    rows = []
    for i, domain in enumerate(domains):
        rows.append({
            "trial_id": "t-001", "sweep": None, "model": "patchcore", "train_domain": "A", "test_domain": domain,
            "status": "ok", "error": None, "seed": 0, "image_auroc": 0.9 - 0.1 * i, "accuracy": 0.8,
            "accuracy_cold": 0.85, "accuracy_warm": 0.75, "auroc_warm": None, "n_test": 8.0,
            "fit_s": 1.25, "total_s": 2.5, "model.k": 3, "data.domain": "A",
        })
    return rows


def _scores(domains=("A", "C"), per_domain=8):
    n = per_domain * len(domains)
    return pa.table({
        "trial_id": ["t-001"] * n,
        "sweep": pa.nulls(n, pa.string()),
        "test_domain": [d for d in domains for _ in range(per_domain)],
        "file": [f"img_{i:03d}.tiff" for i in range(n)],
        "label": pa.array([i % 2 for i in range(n)], pa.int8()),
        "condition": [("cold", "warm")[(i // 2) % 2] for i in range(n)],
        "score": [0.05 * i for i in range(n)],
        "gate": ["cold"] * n,
        "severity_pred": pa.nulls(n, pa.float64()),
        "severity_true": [float("nan")] * n,
    })


class _CountingListener:
    """A loopback TCP listener that counts connections: proof that an offline run contacts nothing."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_offline_run_holds_config_summary_table_and_histograms(wandb_env, monkeypatch):
    listener = _CountingListener()
    for var in ("WANDB_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, listener.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sweep_dir = wandb_env / "out" / "sw1"
    try:
        t0 = time.monotonic()
        status = log_trial(WandbSettings(timeout_s=45), sweep="sw1", trial_id="t-001", model="patchcore",
                           config=CONFIG, rows=_rows(), scores=_scores(), run_dir=sweep_dir)
        elapsed = time.monotonic() - t0
    finally:
        listener.close()
    assert status.startswith("logged offline: "), status
    assert listener.connections == 0  # offline: not the server, not a proxy
    assert elapsed < 45

    run_dir = Path(status.removeprefix("logged offline: "))
    rid = run_id("sw1", "t-001")
    assert run_dir.parent == (sweep_dir / "wandb").resolve()
    assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(f"-{rid}")
    assert (run_dir / f"run-{rid}.wandb").is_file()
    # tables are staged next to the runs, not in the home directory
    assert any((sweep_dir / "wandb" / ".data" / "artifacts" / "staging").iterdir())
    assert not (wandb_env / "home" / ".local" / "share" / "wandb").exists()

    run = read_offline_run(run_dir)
    assert run["run"] == {"id": rid, "project": "hdmap-sweeps", "entity": "", "group": "sw1",
                          "job_type": "patchcore", "name": "t-001"}
    assert run["config"] == CONFIG
    summary = run["summary"]
    assert summary["A/image_auroc"] == pytest.approx(0.9)
    assert summary["C/image_auroc"] == pytest.approx(0.8)
    assert summary["A/accuracy_cold"] == pytest.approx(0.85)
    assert "A/auroc_warm" not in summary  # undefined metrics are left out, not logged as null
    assert "image_auroc" not in summary and "A/model.k" not in summary
    assert summary["fit_s"] == pytest.approx(1.25) and summary["status"] == "ok" and summary["error"] is None
    assert summary["test_domains"] == ["A", "C"]

    table = summary["scores"]
    assert table["_type"] == "table-file" and table["nrows"] == 16
    table_json = json.loads((run_dir / "files" / table["path"]).read_text(), parse_constant=lambda c: None)
    assert "score" in table_json["columns"] and len(table_json["data"]) == 16
    files = {row[table_json["columns"].index("file")] for row in table_json["data"]}
    assert files == {f"img_{i:03d}.tiff" for i in range(16)}

    for domain in ("A", "C"):
        for name in ("good_cold", "good_warm", "fault_cold", "fault_warm"):
            hist = summary[f"{domain}/scores/{name}"]
            assert hist["_type"] == "histogram" and sum(hist["values"]) == 2
    assert run["history"] and "A/scores/good_cold" in run["history"][0]

    # Logging the same trial again writes a second offline directory for the *same* run id (sync resumes it) ...
    again = log_trial(WandbSettings(timeout_s=45), sweep="sw1", trial_id="t-001", model="patchcore",
                      config=CONFIG, rows=_rows(), scores=None, run_dir=sweep_dir)
    assert again.startswith("logged offline: ") and again != status
    runs = sorted((sweep_dir / "wandb").glob(f"offline-run-*-{rid}"))
    assert len(runs) == 2
    # ... and the documented `wandb sync <dir>/wandb/offline-run-*` recognises both (dry run: no upload).
    env = {**os.environ, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    wandb_cli = Path(sys.executable).with_name("wandb")
    dry = subprocess.run([str(wandb_cli), "sync", "--dry-run", *map(str, runs)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_trial_summary_names():
    single = tracking.trial_summary(_rows(domains=("C",)))
    assert single["image_auroc"] == pytest.approx(0.9) and "C/image_auroc" not in single
    assert single["status"] == "ok"
    failed = tracking.trial_summary([{"trial_id": "t", "status": "error", "error": "ValueError: boom",
                                      "model": "draem", "model.k": 3}])
    assert failed["status"] == "error" and failed["error"] == "ValueError: boom"
    assert run_id("sw", "t1") == run_id("sw", "t1") != run_id("sw", "t2") != run_id("sw2", "t1")


def test_mode_resolution(wandb_env, monkeypatch):
    settings = WandbSettings()
    assert resolve_mode(settings) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(settings) == "online"
    assert resolve_mode(WandbSettings(mode="offline")) == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    (wandb_env / "home" / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'n' * 40}\n")
    assert resolve_mode(settings) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(settings) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(settings) == "disabled"
    with pytest.raises(ValueError):
        WandbSettings(mode="cloud")
    with pytest.raises(ValueError):
        WandbSettings(projet="typo")


def test_disabled_writes_nothing(wandb_env):
    out = wandb_env / "out"
    status = log_trial(WandbSettings(mode="disabled"), sweep="sw", trial_id="t", model="patchcore", config=CONFIG,
                       rows=_rows(), scores=_scores(), run_dir=out)
    assert status == "disabled"
    assert not out.exists()
    assert log_summary(WandbSettings(mode="disabled"), sweep="sw", table=pd.DataFrame({"a": [1]}),
                       run_dir=out) == "disabled"
    assert not out.exists()


def test_unreachable_server_fails_fast_without_raising(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port on loopback
    timeout_s = 15
    t0 = time.monotonic()
    status = log_trial(WandbSettings(mode="online", timeout_s=timeout_s), sweep="sw", trial_id="t-001",
                       model="patchcore", config=CONFIG, rows=_rows(), scores=_scores(), run_dir=wandb_env / "out")
    elapsed = time.monotonic() - t0
    assert status.startswith(("failed", "timed out")), status
    assert "\n" not in status and len(status) < 400
    assert elapsed < timeout_s + 5


def _hang_worker(conn, job):
    """Test-only child target: report our pid, then never finish (a W&B call that hangs)."""
    Path(job["dir"], "hang.pid").write_text(str(os.getpid()))
    time.sleep(3600)


def _exit_worker(conn, job):
    """Test-only child target: die without a status (a crash in native code)."""
    os._exit(3)


def test_hung_child_is_killed_within_the_bound(wandb_env, monkeypatch):
    monkeypatch.setattr(tracking, "_trial_worker", _hang_worker)
    out = wandb_env / "out"
    out.mkdir()
    t0 = time.monotonic()
    status = log_trial(WandbSettings(mode="offline", timeout_s=4), sweep="sw", trial_id="t", model="patchcore",
                       config=CONFIG, rows=_rows(), scores=_scores(), run_dir=out)
    elapsed = time.monotonic() - t0
    assert status == "timed out after 4s"
    assert elapsed < 4 + 5
    pid = int((out / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_child_crash_and_parent_errors_become_status(wandb_env, monkeypatch):
    monkeypatch.setattr(tracking, "_trial_worker", _exit_worker)
    status = log_trial(WandbSettings(mode="offline", timeout_s=20), sweep="sw", trial_id="t", model="patchcore",
                       config=CONFIG, rows=_rows(), scores=None, run_dir=wandb_env / "out")
    assert status == "failed: tracking process exited with code 3 and no status"
    monkeypatch.undo()
    unpicklable = [{"status": "ok", "callback": lambda: None}]
    status = log_trial(WandbSettings(mode="offline", timeout_s=20), sweep="sw", trial_id="t", model="patchcore",
                       config=CONFIG, rows=unpicklable, scores=None, run_dir=wandb_env / "out")
    assert status.startswith("failed: "), status


def test_log_summary_offline_writes_the_table(wandb_env):
    table = pd.DataFrame({
        "test_domain": ["A", "C", "A"], "model": ["patchcore", "patchcore", "draem"],
        "image_auroc_mean": [0.91, 0.77, float("nan")], "n": [3, 3, 0],
        "started_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
    })
    sweep_dir = wandb_env / "out" / "sw1"
    status = log_summary(WandbSettings(timeout_s=45), sweep="sw1", table=table, run_dir=sweep_dir)
    assert status.startswith("logged offline: "), status
    run_dir = Path(status.removeprefix("logged offline: "))
    assert run_dir.parent == (sweep_dir / "wandb").resolve()
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "report" and run["run"]["group"] == "sw1"
    assert run["run"]["id"] == run_id("sw1", "report:summary")
    logged = run["summary"]["summary"]
    assert logged["_type"] == "table-file" and logged["nrows"] == 3
    assert run["summary"]["n_rows"] == 3
    data = json.loads((run_dir / "files" / logged["path"]).read_text(), parse_constant=lambda c: None)
    assert data["columns"] == list(table.columns)
    assert [row[0] for row in data["data"]] == ["A", "C", "A"]
