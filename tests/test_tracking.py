"""W&B tracking: offline runs hold the metrics; a dead server or a hung logger never fails or stalls anything.

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

from sweeps import tracking, wandb_process
from sweeps.tracking import WandbSettings, log_summary, log_trial, resolve_mode, run_id
from tests.wandb_records import read_offline_run

CONFIG = {"seed": 0, "data": {"domain": "A", "image_size": [64, 192]}, "model": {"name": "patchcore", "k": 3}}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No W&B configuration leaks in from the machine or from conftest's WANDB_MODE default."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "WANDB_DIR",
        "WANDB_DATA_DIR",
        "WANDB_SERVICE",
        "WANDB_IDENTITY_TOKEN_FILE",
        "NETRC",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _rows(domains=("A", "C")):
    rows = []
    for i, domain in enumerate(domains):
        rows.append(
            {
                "trial_id": "t-001",
                "sweep": None,
                "model": "patchcore",
                "train_domain": "A",
                "test_domain": domain,
                "status": "ok",
                "error": None,
                "seed": 0,
                "image_auroc": 0.9 - 0.1 * i,
                "accuracy": 0.8,
                "accuracy_cold": 0.85,
                "accuracy_warm": 0.75,
                "auroc_warm": None,
                "n_test": 8.0,
                "fit_s": 1.25,
                "total_s": 2.5,
                "features_s": 0.5,
                "cache_hits": 3,
                "cache_misses": 1,
                "attempts": 1,
                "model.k": 3,
                "data.domain": "A",
            }
        )
    return rows


def _log(settings, run_dir, *, sweep="sw", trial_id="t", config=CONFIG, scores=None) -> str:
    """One patchcore trial's W&B run (rows from `_rows`), as the driver's logger would log it."""
    return log_trial(
        settings,
        sweep=sweep,
        trial_id=trial_id,
        model="patchcore",
        config=config,
        rows=_rows(),
        scores=scores,
        run_dir=run_dir,
    )


def _scores(domains=("A", "C"), per_domain=8):
    n = per_domain * len(domains)
    return pa.table(
        {
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
        }
    )


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
        status = _log(WandbSettings(timeout_s=45), sweep_dir, sweep="sw1", trial_id="t-001", scores=_scores())
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
    assert run["run"] == {
        "id": rid,
        "project": "hdmap-sweeps",
        "entity": "",
        "group": "sw1",
        "job_type": "patchcore",
        "name": "t-001",
    }
    assert run["config"] == CONFIG
    summary = run["summary"]
    assert summary["A/image_auroc"] == pytest.approx(0.9)
    assert summary["C/image_auroc"] == pytest.approx(0.8)
    assert summary["A/accuracy_cold"] == pytest.approx(0.85)
    assert "A/auroc_warm" not in summary  # undefined metrics are left out, not logged as null
    assert "image_auroc" not in summary and "A/model.k" not in summary
    assert summary["fit_s"] == pytest.approx(1.25) and summary["status"] == "ok" and summary["error"] is None
    assert summary["features_s"] == pytest.approx(0.5) and summary["cache_hits"] == 3 and summary["cache_misses"] == 1
    assert "A/cache_hits" not in summary and "A/attempts" not in summary  # trial-level: once, unprefixed
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
    again = _log(WandbSettings(timeout_s=45), sweep_dir, sweep="sw1", trial_id="t-001")
    assert again.startswith("logged offline: ") and again != status
    runs = sorted((sweep_dir / "wandb").glob(f"offline-run-*-{rid}"))
    assert len(runs) == 2
    # ... and the documented `wandb sync <dir>/wandb/offline-run-*` recognises both (dry run: no upload).
    env = {**os.environ, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    wandb_cli = Path(sys.executable).with_name("wandb")
    dry = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", *map(str, runs)], env=env, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0 and "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_trial_summary_names():
    single = tracking.trial_summary(_rows(domains=("C",)))
    assert single["image_auroc"] == pytest.approx(0.9) and "C/image_auroc" not in single
    assert single["status"] == "ok"
    failed = tracking.trial_summary(
        [{"trial_id": "t", "status": "error", "error": "ValueError: boom", "model": "draem", "model.k": 3}]
    )
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
    status = _log(WandbSettings(mode="disabled"), out, scores=_scores())
    assert status == "disabled"
    assert not out.exists()
    assert (
        log_summary(WandbSettings(mode="disabled"), sweep="sw", table=pd.DataFrame({"a": [1]}), run_dir=out)
        == "disabled"
    )
    assert not out.exists()


def test_unreachable_server_fails_fast_without_raising(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port on loopback
    timeout_s = 15
    t0 = time.monotonic()
    status = _log(
        WandbSettings(mode="online", timeout_s=timeout_s), wandb_env / "out", trial_id="t-001", scores=_scores()
    )
    elapsed = time.monotonic() - t0
    assert status.startswith(("failed", "timed out")), status
    assert "\n" not in status and len(status) < 400
    assert elapsed < timeout_s + 5


def hang_body(job):
    """Test-only logging body: report our pid, then never finish (a W&B call that hangs)."""
    Path(job["dir"]).mkdir(parents=True, exist_ok=True)
    Path(job["dir"], "hang.pid").write_text(str(os.getpid()))
    time.sleep(3600)


def _exit_body(job):
    """Test-only logging body: die without a status (a crash in native code)."""
    os._exit(3)


def test_hung_child_is_killed_within_the_bound(wandb_env, monkeypatch):
    monkeypatch.setattr(wandb_process, "log_trial_body", hang_body)
    out = wandb_env / "out"
    out.mkdir()
    t0 = time.monotonic()
    status = _log(WandbSettings(mode="offline", timeout_s=4), out, scores=_scores())
    elapsed = time.monotonic() - t0
    assert status == "timed out after 4s"
    assert elapsed < 4 + 5
    pid = int((out / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_child_crash_and_parent_errors_become_status(wandb_env, monkeypatch):
    settings, out = WandbSettings(mode="offline", timeout_s=20), wandb_env / "out"
    monkeypatch.setattr(wandb_process, "log_trial_body", _exit_body)
    assert _log(settings, out) == "failed: tracking process exited with code 3 and no status"
    monkeypatch.undo()
    status = _log(settings, out, config={**CONFIG, "callback": lambda: None})  # unpicklable
    assert status.startswith("failed: "), status


def test_log_summary_offline_writes_the_table(wandb_env):
    table = pd.DataFrame(
        {
            "test_domain": ["A", "C", "A"],
            "model": ["patchcore", "patchcore", "draem"],
            "image_auroc_mean": [0.91, 0.77, float("nan")],
            "n": [3, 3, 0],
            "started_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
        }
    )
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


def test_offline_runs_keep_one_staged_copy_per_table(wandb_env):
    """wandb stages each logged table twice and the run names one copy (the one `wandb sync` uploads): the other is
    removed, so `hdmap report` (its summary run) and a sweep's trials (their scores) leave no staging litter."""
    sweep_dir = wandb_env / "out" / "sw1"
    table = pd.DataFrame({"model": ["patchcore"], "image_auroc_mean": [0.9]})
    statuses = [
        log_summary(WandbSettings(timeout_s=45), sweep="sw1", table=table, run_dir=sweep_dir),
        _log(WandbSettings(timeout_s=45), sweep_dir, sweep="sw1", trial_id="t-001", scores=_scores()),
    ]
    assert all(s.startswith("logged offline: ") for s in statuses), statuses
    staged = [str(p) for p in (sweep_dir / "wandb" / ".data" / "artifacts" / "staging").resolve().iterdir()]
    logs = b"".join(p.read_bytes() for p in (sweep_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(staged) == 2 and all(path.encode() in logs for path in staged), staged


# ------------------------------------------------------------------- the driver's logger, fed from the store


def _stored_trials(sweep_dir, trial_ids, domains=("A", "C")):
    """Trials as a sweep's workers leave them: rows and scores in the ResultStore, nothing else."""
    from hdmap.trial import TrialResult
    from sweeps.store import ResultStore

    store = ResultStore(str(sweep_dir))
    for trial_id in trial_ids:
        rows = [{**row, "trial_id": trial_id, "config_json": json.dumps(CONFIG)} for row in _rows(domains)]
        scores = _scores(domains).set_column(0, "trial_id", pa.array([trial_id] * 8 * len(domains)))
        store.write_trial(TrialResult(rows=rows, scores=scores), "sw1", "hash")
    return store


def test_driver_logger_logs_each_stored_trial_once_from_one_child(wandb_env):
    from sweeps.trial_logger import TrialLogger

    sweep_dir = wandb_env / "out" / "sw1"
    store = _stored_trials(sweep_dir, ["t-001", "t-002"])
    logger = TrialLogger(WandbSettings(timeout_s=45), store, "sw1", sweep_dir)
    t0 = time.monotonic()
    for trial_id in ("t-001", "t-002", "t-001"):  # a repeated submit is one run
        logger.submit(trial_id)
    submitted_s = time.monotonic() - t0
    tally = logger.close(wait_s=45)
    assert submitted_s < 1.0  # submit hands over, the caller (Tune's loop) never waits for W&B
    assert set(tally.statuses) == {"t-001", "t-002"} and not tally.not_logged, tally.statuses
    assert tally.line() == f"W&B: 2 runs logged offline in {(sweep_dir / 'wandb').resolve()}, 0 failed"

    runs = {
        read_offline_run(Path(s.removeprefix("logged offline: ")))["run"]["name"]: s for s in tally.statuses.values()
    }
    assert set(runs) == {"t-001", "t-002"} and len(list((sweep_dir / "wandb").glob("offline-run-*"))) == 2
    run = read_offline_run(Path(runs["t-002"].removeprefix("logged offline: ")))
    assert run["run"]["id"] == run_id("sw1", "t-002") and run["run"]["group"] == "sw1"
    assert run["run"]["job_type"] == "patchcore" and run["config"] == CONFIG
    assert run["summary"]["C/image_auroc"] == pytest.approx(0.8) and run["summary"]["attempts"] == 0
    assert run["summary"]["scores"]["nrows"] == 16 and "A/scores/fault_warm" in run["summary"]


def test_driver_logger_hang_is_bounded_and_reported(wandb_env, monkeypatch):
    from sweeps.trial_logger import TrialLogger

    monkeypatch.setattr(wandb_process, "log_trial_body", hang_body)
    sweep_dir = wandb_env / "out" / "sw1"
    store = _stored_trials(sweep_dir, ["t-001", "t-002", "t-003"])
    logger = TrialLogger(WandbSettings(mode="offline", timeout_s=3), store, "sw1", sweep_dir)
    for trial_id in ("t-001", "t-002", "t-003", "missing"):
        logger.submit(trial_id)
    t0 = time.monotonic()
    tally = logger.close(wait_s=3)
    elapsed = time.monotonic() - t0
    assert elapsed < 3 + 2 * wandb_process.KILL_GRACE_S + 1  # the end of a sweep waits a bounded time
    assert set(tally.not_logged) == {"t-001", "t-002", "t-003", "missing"}
    assert tally.statuses["t-001"] == "timed out after 3s"
    assert (
        tally.line().startswith("W&B: 0 runs logged offline in ")
        and ", 4 failed (first: t-001: timed out" in tally.line()
    )
    pid = int((sweep_dir / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the hung child was killed and reaped
        os.kill(pid, 0)


def test_driver_logger_online_outage_fails_each_run_within_the_bound(wandb_env, monkeypatch):
    from sweeps.trial_logger import TrialLogger

    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port on loopback
    sweep_dir = wandb_env / "out" / "sw1"
    store = _stored_trials(sweep_dir, ["t-001", "t-002", "t-003"])
    logger = TrialLogger(WandbSettings(timeout_s=8), store, "sw1", sweep_dir)  # online: a key is configured
    t0 = time.monotonic()
    for trial_id in ("t-001", "t-002", "t-003"):
        logger.submit(trial_id)
    tally = logger.close(wait_s=8)
    assert time.monotonic() - t0 < 8 + 2 * wandb_process.KILL_GRACE_S + 2  # the runs wait in parallel, not in turn
    assert tally.mode == "online" and set(tally.not_logged) == {"t-001", "t-002", "t-003"}, tally.statuses
    assert tally.line().startswith("W&B: 0 runs logged online in project hdmap-sweeps, 3 failed (first: ")


# ---------------------------------------------------------------------------------- in a sweep (Ray Tune)

SWEEP_SPEC = """
name: tracked
data:
  root: {root}
  simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}
trial:
  data: {{domain: C, image_size: [64, 192]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2], coreset_ratio: 0.1}}
axes:
  model.k: {ks}
output: {out}
tracking: {{wandb: {{mode: offline, timeout_s: {timeout_s}}}}}
"""


@pytest.mark.slow
def test_sweep_logs_one_run_per_trial_from_the_driver_and_a_hang_never_stalls_it(tmp_path, monkeypatch):
    # HOME stays (Ray keeps its session's auth state per process); the spec pins mode offline
    import ray

    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from sweeps.store import ResultStore
    from sweeps.trial_logger import TrialLogger

    def spec(ks, timeout_s):
        path = tmp_path / f"spec-{len(ks)}.yaml"
        path.write_text(SWEEP_SPEC.format(root=tmp_path / "data", out=tmp_path / "out", ks=ks, timeout_s=timeout_s))
        return load_spec(path)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        outcome = run_sweep(spec([1, 9], timeout_s=60), live=False)
        assert outcome.ok == 2
        sweep_dir = Path(outcome.sweep_dir)
        rows = ResultStore(str(sweep_dir)).results().to_pylist()
        # One run per trial, logged by the driver: had a trial logged too, each run id would appear twice.
        runs = [read_offline_run(d) for d in sorted((sweep_dir / "wandb").glob("offline-run-*"))]
        assert sorted(r["run"]["id"] for r in runs) == sorted(run_id("tracked", r["trial_id"]) for r in rows)
        for run in runs:
            row = next(r for r in rows if r["trial_id"] == run["run"]["name"])
            assert run["run"]["group"] == "tracked" and run["run"]["job_type"] == "patchcore"
            assert run["config"] == json.loads(row["config_json"])
            assert run["summary"]["image_auroc"] == pytest.approx(row["image_auroc"])
            assert run["summary"]["scores"]["nrows"] == row["n_test"] > 0
        assert sorted(outcome.wandb.statuses) == sorted(r["trial_id"] for r in rows)
        assert not outcome.wandb.not_logged and outcome.wandb.line().endswith(", 0 failed")

        # W&B hangs: the trials still finish, the driver waits at most timeout_s at the end and says what it lost.
        monkeypatch.setattr(wandb_process, "log_trial_body", hang_body)
        closing: list[float] = []
        close = TrialLogger.close

        def timed_close(self, wait_s):
            t0 = time.monotonic()
            try:
                return close(self, wait_s)
            finally:
                closing.append(time.monotonic() - t0)

        monkeypatch.setattr(TrialLogger, "close", timed_close)
        grown = run_sweep(spec([1, 9, 3], timeout_s=3), live=False)
        assert grown.ok == 3 and grown.skipped == 2
        assert closing and closing[0] < 3 + 2 * wandb_process.KILL_GRACE_S + 1
        line = grown.wandb.line()
        assert len(grown.wandb.not_logged) == 1 and line.startswith("W&B: 0 runs logged offline in "), line
        assert line.endswith(": timed out after 3s)"), line
        assert len(list((sweep_dir / "wandb").glob("offline-run-*"))) == 2  # nothing half-logged was added
    finally:
        ray.shutdown()
