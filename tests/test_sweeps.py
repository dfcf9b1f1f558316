"""Sweeps on a local Ray instance: failures recorded, nothing lost, resume after a kill, growing a spec."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from hdmap.config import validate_trial_config
from hdmap.data.simulate import simulate
from hdmap.trial import run_trial
from sweeps.report.analysis import load
from sweeps.report.render import header_section
from sweeps.runner import SweepEnvironmentError, ray_address, run_sweep
from sweeps.spec import load_spec
from sweeps.store import ResultStore
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow

SPEC = """
name: {name}
data:
  root: {root}
  simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}
trial:
  data: {{domain: C, image_size: [64, 192]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2]}}
axes:
  model.k: {ks}
  model.coreset_ratio: {ratios}
max_failures: {max_failures}
output: {out}
tracking: {{wandb: {{mode: offline, timeout_s: 60}}}}
"""


def spec_file(tmp_path, name="s", ks="[1, 9]", ratios="[0.1]", max_failures=1, extra=""):
    path = tmp_path / f"{name}-{abs(hash((ks, ratios, extra)))}.yaml"
    path.write_text(
        SPEC.format(
            name=name, root=tmp_path / "data", ks=ks, ratios=ratios, max_failures=max_failures, out=tmp_path / "out"
        )
        + textwrap.dedent(extra)
    )
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def truncate(tiff: Path) -> Path:
    """A corrupt file that only decoding finds: its header (shape, dtype) is intact, the pixels are cut short."""
    tiff.write_bytes(tiff.read_bytes()[:-5000])
    return tiff


def results(sweep_dir):
    return pq.read_table(Path(sweep_dir) / "results.parquet").to_pylist()


def test_failing_trial_recorded_others_finish_then_grow_and_retry(tmp_path, ray_local):
    # coreset_ratio 1e-6 keeps no patch: those trials raise on every attempt
    plan = load_spec(spec_file(tmp_path, ratios="[0.1, 0.000001]"))
    outcome = run_sweep(plan, live=False)
    assert outcome.ok == 2 and len(outcome.failed) == 2
    assert "keeps no patch" in outcome.failed[0]["error"]
    rows = results(outcome.sweep_dir)
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["status"] for r in rows} == {"ok", "error"} and all(r["sweep"] == "s" for r in rows)
    assert len({r["data_fingerprint"] for r in rows}) == 1 and '"domain_C/train"' in rows[0]["data_fingerprint"]
    scores = pq.read_table(Path(outcome.sweep_dir) / "scores.parquet")
    assert scores.num_rows == 2 * 40

    # the trainable computes exactly what `hdmap trial` computes for the same config
    ok = next(r for r in rows if r["status"] == "ok" and r["model.k"] == 9)
    alone = run_trial(validate_trial_config(json.loads(ok["config_json"]))).rows[0]
    assert alone["trial_id"] == ok["trial_id"] and alone["image_auroc"] == ok["image_auroc"]
    assert alone["accuracy"] == ok["accuracy"]

    # W&B: one offline run per finished trial, in the sweep directory
    runs = list((Path(outcome.sweep_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) >= 2

    # growing the spec runs only the new trial; failed ones stay failed unless asked
    grown = run_sweep(load_spec(spec_file(tmp_path, ks="[1, 9, 3]", ratios="[0.1, 0.000001]")), live=False)
    assert grown.skipped == 4 and grown.ok == 3 and len(grown.failed) == 3  # new k=3 x 1e-6 fails too
    retried = run_sweep(
        load_spec(spec_file(tmp_path, ks="[1, 9, 3]", ratios="[0.1, 0.000001]")), retry_failed=True, live=False
    )
    assert retried.skipped == 3 and len(retried.failed) == 3
    rows = results(retried.sweep_dir)
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6  # retries replace, never duplicate


def test_ray_address_local_by_default_and_cluster_addresses_checked_at_once(monkeypatch):
    """No --address: this sweep's own Ray, whatever RAY_ADDRESS says (often a dashboard URL exported for `ray job
    submit`); in a Ray Job: the job's cluster. A cluster that does not answer is one error, before ray.init's
    minutes of retries; Ray Client addresses are refused with the way to submit instead."""
    with socket.socket() as head:  # a listening "GCS"
        head.bind(("127.0.0.1", 0))
        head.listen()
        alive = f"127.0.0.1:{head.getsockname()[1]}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{probe.getsockname()[1]}"
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
        monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
        assert ray_address(None) == "local"
        with pytest.raises(SweepEnvironmentError, match="ray job submit"):
            ray_address("ray://head:10001")
        with pytest.raises(SweepEnvironmentError, match="--address head: expected 'auto' or .* host:port"):
            ray_address("head")
        with pytest.raises(SweepEnvironmentError, match=r"RAY_ADDRESS=http://127.0.0.1:8265.*ray job submit"):
            ray_address("auto")
        assert ray_address(alive) == alive
        monkeypatch.setenv("RAY_ADDRESS", alive)
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
        assert ray_address(None) == alive  # a Ray Job's entrypoint
        monkeypatch.setenv("RAY_ADDRESS", dead)
        t0 = time.perf_counter()
        with pytest.raises(SweepEnvironmentError, match=f"RAY_ADDRESS={dead}.*nothing answers at {dead}"):
            ray_address("auto")
        with pytest.raises(SweepEnvironmentError, match=f"--address {dead}: no Ray cluster"):
            ray_address(dead)
        assert time.perf_counter() - t0 < 5


def _settled(parts, quiet_s: float = 5.0) -> dict[str, int]:
    """Part files once none has appeared for `quiet_s` (Ray ends a dead driver's workers within seconds)."""
    seen, since = None, time.time()
    while time.time() - since < quiet_s:
        now = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
        if now != seen:
            seen, since = now, time.time()
        time.sleep(0.5)
    return seen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_sweep_resumes_without_rerunning(tmp_path, sig):
    spec = spec_file(tmp_path, name="k", ks="[1, 2, 3, 4, 5, 6]", ratios="[0.1]", extra="max_concurrent: 1\n")
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec), "--no-report"]
    parts = tmp_path / "out" / "k" / "parts" / "results"
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2:
            time.sleep(0.5)
        # SIGKILL: the driver and its local Ray instance, mid-sweep. Ctrl-C: a terminal signals the whole process
        # group; Tune stops gracefully and interrupted trials must not count as finished.
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    before = _settled(parts)  # a worker mid-write when the driver died may still commit its part
    assert 2 <= len(before) < 6, before
    if sig == signal.SIGINT:  # an honest exit: code 130, what did not run, the exact command that resumes it
        printed = log.read_text()
        assert proc.returncode == 130, printed
        assert f"{6 - len(before)} of 6 trials did not run" in printed, printed
        assert f"hdmap sweep run {spec} --no-report\n" in printed, printed
        assert "Traceback" not in printed, printed
        meta = json.loads((tmp_path / "out" / "k" / "sweep.json").read_text())
        assert meta["state"] == "interrupted" and meta["n_without_result"] == 6 - len(before)
        data = load(ResultStore(tmp_path / "out" / "k"))
        header = "\n".join(header_section(data, pd.DataFrame(), "now").md)
        assert f"**Incomplete:** {6 - len(before)} of 6 trials have no result" in header, header

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(before)} already done" in done.stdout and "did not run" not in done.stdout
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert len(after) == 6 and all(after[name] == mtime for name, mtime in before.items())  # finished: not re-run
    rows = results(tmp_path / "out" / "k")
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6 and {r["status"] for r in rows} == {"ok"}
    assert json.loads((tmp_path / "out" / "k" / "sweep.json").read_text())["state"] == "complete"


def test_bad_file_fails_once_named_in_full_without_ray_tracebacks(tmp_path):
    """A corrupt TIFF (readable header, truncated pixels) is a data error: recorded once, not retried by Tune."""
    root = tmp_path / ("long-folder-name-" * 6) / "data"  # the error's first line is over 200 characters
    simulate(root, n_train=30, n_test=20, domains=["C"], seed=0)
    bad = truncate(root / "domain_C" / "train" / "good" / "000003.tiff")
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.format(name="bad", root=root, ks="[1]", ratios="[0.1]", max_failures=1, out=tmp_path / "out"))
    env = {**os.environ, "COLUMNS": "400"}  # a wide terminal: the failure table keeps each error on one line
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec), "--no-report"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 1, printed
    [row] = results(tmp_path / "out" / "bad")
    assert row["status"] == "error" and row["attempts"] == 1, row  # max_failures=1, yet a single attempt
    first_line = row["error"].splitlines()[0]
    assert str(bad) in first_line and len(first_line) > 200 and first_line in done.stdout, printed
    assert "Traceback" not in printed and "Trial trial_trainable" not in printed, printed
    log = tmp_path / "out" / "bad" / "logs" / "ray-driver.log"
    assert log.exists() and f"Ray's log: {log}" in done.stdout, printed


DRAEM_SPEC = """
name: {name}
data: {{root: {root}, simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}}}
trial:
  data: {{domain: C, image_size: [32, 96], normalization: none}}
  model: {{name: draem, base_width: 8, epochs: {epochs}}}
axes:
  model.lr: [0.0001, 0.001, 0.01]
scheduler: {scheduler}
max_failures: 0
{extra}
output: {out}
tracking: {{wandb: {{mode: disabled}}}}
"""


def draem_spec(tmp_path, name, epochs, scheduler="fifo", extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        DRAEM_SPEC.format(
            name=name, root=tmp_path / "data", epochs=epochs, scheduler=scheduler, extra=extra, out=tmp_path / "out"
        )
    )
    return path


def test_asha_scheduler_runs_on_per_epoch_val_loss(tmp_path, ray_local):
    spec = draem_spec(
        tmp_path, "asha", epochs=4, scheduler="{metric: val_loss, mode: min, grace_period: 1, reduction_factor: 3}"
    )
    outcome = run_sweep(load_spec(spec), live=False)
    rows = results(outcome.sweep_dir)
    assert len(rows) == 3 and not outcome.failed
    statuses = sorted(r["status"] for r in rows)
    assert outcome.ok + outcome.pruned == 3 and outcome.ok >= 1, statuses
    assert all(r["image_auroc"] is not None for r in rows if r["status"] == "ok")
    assert all(r["epochs_run"] in (1, 3) for r in rows if r["status"] == "pruned"), rows  # rungs at epochs 1 and 3


def test_asha_search_ranks_trials_on_the_validation_objective_each_epoch(tmp_path, ray_local):
    """search.method asha: random samples of the space, ASHA on val_synth_auroc reported every epoch (no test labels
    read to stop a trial); the final report carries the objective the rows hold."""
    search = "search: {method: asha, num_samples: 2, space: {model.base_width: {choice: [8, 16]}}, seed: 3}"
    plan = load_spec(draem_spec(tmp_path, "asha-search", epochs=4, extra=search))
    assert plan.spec.asha.metric == "val_synth_auroc" and plan.spec.asha.mode == "max"
    outcome = run_sweep(plan, live=False)
    rows = results(outcome.sweep_dir)
    assert len(rows) == len(plan.trials) and not outcome.failed
    assert outcome.ok + outcome.pruned == len(plan.trials) and outcome.ok >= 1
    for row in rows:
        if row["status"] == "ok":
            assert 0 <= row["val_synth_auroc"] <= 1 and row["epochs_run"] == 4, row
        else:  # stopped at a rung (grace period 1, reduction factor 3: after epoch 1 or 3), its epochs recorded
            assert row["status"] == "pruned" and "stopped early by the scheduler after" in row["error"], row
            assert row["epochs_run"] in (1, 3), row


def test_user_error_under_asha_is_an_error_not_a_pruned_trial(tmp_path, ray_local):
    """The trial ends without its final report (and without the scheduler's metric): neither Tune's metric check
    nor the prune recorder may take that for a scheduler's stop."""
    simulate(tmp_path / "data", n_train=30, n_test=20, domains=["C"], seed=0)
    truncate(tmp_path / "data" / "domain_C" / "test" / "fault" / "000002.tiff")
    spec = draem_spec(
        tmp_path, "asha-bad", epochs=2, scheduler="{metric: val_loss, mode: min, grace_period: 1, reduction_factor: 3}"
    )
    outcome = run_sweep(load_spec(spec, ["max_failures=1"]), live=False)
    assert outcome.ok == 0 and outcome.pruned == 0 and len(outcome.failed) == 3
    assert all("000002.tiff" in f["error"] for f in outcome.failed), outcome.failed
    assert {r["attempts"] for r in results(outcome.sweep_dir)} == {1}


def test_trial_timeout_is_a_recorded_failure(tmp_path, ray_local):
    outcome = run_sweep(
        load_spec(draem_spec(tmp_path, "slow", epochs=500, extra="trial_timeout_s: 4\nmax_concurrent: 3")), live=False
    )
    assert outcome.ok == 0 and len(outcome.failed) == 3
    assert all("trial_timeout_s=4" in f["error"] for f in outcome.failed), outcome.failed


def test_tune_stopped_by_a_lost_worker_restarts_the_rest(tmp_path, ray_local, monkeypatch):
    """Ray 2.60's Tune controller raises on an OOM-killed worker (ray#28937); the sweep restarts what is unfinished."""
    from ray.exceptions import OutOfMemoryError

    from sweeps.runner import SweepRun

    real, calls = SweepRun.run_tune, []

    def crash_first(run, todo, skipped):
        calls.append(len(todo))
        if len(calls) == 1:
            raise RuntimeError("Caught unexpected exception") from OutOfMemoryError("worker killed")
        return real(run, todo, skipped)

    monkeypatch.setattr(SweepRun, "run_tune", crash_first)
    outcome = run_sweep(load_spec(spec_file(tmp_path, name="oom")), live=False)
    assert calls == [2, 2] and outcome.restarts == 1 and outcome.ok == 2


WORKER_FREES_TRIALS = """
import gc, json, sys, weakref
from ray import tune
from hdmap.config import load_trial_config
from hdmap.models import registry
import sweeps.worker as worker

reports = []
tune.report = reports.append  # outside a Tune session: keep the final report
entry, built = registry.MODELS["patchcore"], []

def build(*args):
    module = entry.build(*args)
    built.append(weakref.ref(module))
    return module

registry.MODELS["patchcore"] = registry.ModelEntry(entry.config_at, "__main__:build")  # the builder above
context = worker.TrialContext(sweep="s", spec_hash="h")
alive = []
for seed in (0, 1):
    cfg = load_trial_config(None, json.loads(sys.argv[2]) + [f"seed={seed}"])
    worker.trial_trainable({"trial": cfg.model_dump(mode="json")}, sys.argv[1], context)
    alive.append(built[-1]() is not None)
print(json.dumps({"alive": alive, "frozen": gc.get_freeze_count(), "reports": len(reports)}))
"""


def test_worker_frees_each_trial_while_imports_stay_frozen(sim_root, tmp_path):
    """A worker runs trial after trial: its imports are frozen once (the gc pass after each trial stays cheap), and
    each finished trial's model is still freed before the next starts (Lightning's trainer <-> module cycle)."""
    script = tmp_path / "worker_trials.py"
    script.write_text(WORKER_FREES_TRIALS)
    overrides = json.dumps(tiny_overrides(sim_root))
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "sweep"), overrides], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"alive": [False, False], "frozen": out["frozen"], "reports": 2}, out
    assert out["frozen"] > 100_000, out  # torch, Lightning, anomalib: the import's objects
    assert list(ResultStore(str(tmp_path / "sweep")).status_by_trial().values()) == ["ok", "ok"]
