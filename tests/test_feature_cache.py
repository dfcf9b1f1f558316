"""The disk cache and the feature cache: same scores as without it, computed once under concurrency, never half-read."""

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hdmap.cache import DiskCache
from hdmap.config import load_trial_config
from hdmap.trial import run_trial
from tests.test_patchcore_family import ca_overrides


def _slow_fill(root: str, log: str, value: float) -> None:
    def compute(writer):
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)  # long enough that the other process arrives while this one computes
        writer.array("x", (1000,))[...] = value

    out = DiskCache(root).get("demo", {"a": 1}, compute)
    assert float(out["x"][0]) == 1.0 and float(out["x"][-1]) == 1.0  # both see the first writer's whole entry


def test_concurrent_processes_compute_an_entry_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_fill, args=(str(tmp_path / "c"), str(log), v)) for v in (1.0, 1.0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text().count("computed") == 1


def test_failed_compute_commits_nothing(tmp_path):
    cache = DiskCache(tmp_path)

    def boom(writer):
        writer.array("x", (10,))[...] = 1
        raise RuntimeError("backbone failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        cache.get("demo", {"a": 1}, boom)
    assert not [p for p in (tmp_path / "demo").iterdir() if p.is_dir()]  # no entry, no temp dir left behind
    out = cache.get("demo", {"a": 1}, lambda w: w.put("x", np.arange(3.0)))
    assert out["x"].tolist() == [0.0, 1.0, 2.0] and cache.misses == 2 and cache.hits == 0
    assert cache.get("demo", {"a": 1}, None)["x"].tolist() == [0.0, 1.0, 2.0] and cache.hits == 1


def test_cached_trials_score_exactly_like_uncached_ones(sim_root, tmp_path):
    cache = tmp_path / "cache"
    for extra in (
        ["model.gating=p90", "model.coreset_ratio=0.5", "model.k=3", "model.context_k=[2,3]"],
        ["model.gating=soft", "model.k=1"],
    ):
        plain = run_trial(load_trial_config(None, ca_overrides(sim_root, *extra)))
        first = run_trial(load_trial_config(None, ca_overrides(sim_root, *extra, f"runtime.feature_cache={cache}")))
        again = run_trial(load_trial_config(None, ca_overrides(sim_root, *extra, f"runtime.feature_cache={cache}")))
        for run in (first, again):
            np.testing.assert_array_equal(run.scores["score"].to_numpy(), plain.scores["score"].to_numpy())
            assert run.rows[0]["image_auroc"] == plain.rows[0]["image_auroc"]
        assert plain.rows[0]["cache_hits"] is None
        assert again.rows[0]["cache_misses"] == 0 and again.rows[0]["cache_hits"] > 0
    features = list((cache / "features").glob("*/features.npy"))
    assert len(features) == 2  # domain C train + test: shared by both configs, computed once


def test_feature_key_separates_weights_and_transforms(sim_root, tmp_path):
    cache = tmp_path / "cache"
    for extra in ("seed=0", "seed=1", "data.resize=nearest"):  # random init differs by seed; resize changes input
        run_trial(load_trial_config(None, ca_overrides(sim_root, extra, f"runtime.feature_cache={cache}")))
    assert len(list((cache / "features").glob("*/features.npy"))) == 6


@pytest.mark.slow
def test_sweep_shares_features_and_no_feature_cache_gives_same_metrics(tmp_path):
    import ray

    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: fc
data:
  root: {tmp_path / "data"}
  simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}
trial:
  data: {{domain: C, image_size: [64, 192]}}
  model: {{name: ca_patchcore, backbone: resnet18, pretrained: false, layers: [layer2], gating: p90}}
axes:
  model.k: [1, 9]
max_concurrent: 1
output: {tmp_path / "out"}
tracking: {{wandb: {{mode: disabled}}}}
""")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        cached = run_sweep(load_spec(spec), live=False)
        uncached = run_sweep(load_spec(spec, [f"output={tmp_path / 'out2'}"]), live=False, feature_cache=False)
    finally:
        ray.shutdown()
    rows = {r["trial_id"]: r for r in pq.read_table(Path(cached.sweep_dir) / "results.parquet").to_pylist()}
    plain = {r["trial_id"]: r for r in pq.read_table(Path(uncached.sweep_dir) / "results.parquet").to_pylist()}
    assert set(rows) == set(plain) and len(rows) == 2
    assert cached.cache_reused > 0 and cached.cache_computed > 0 and uncached.cache_computed is None
    assert all(rows[t]["image_auroc"] == plain[t]["image_auroc"] for t in rows)
    assert all(r["cache_hits"] is None for r in plain.values())
    assert sorted(r["cache_misses"] == 0 for r in rows.values()) == [False, True]  # the 2nd trial reused everything
    assert len(list((Path(cached.sweep_dir) / "cache" / "features").glob("*/features.npy"))) == 2


def test_busy_entry_is_skipped_without_waiting(tmp_path):
    import threading

    from hdmap.cache import locked

    cache = DiskCache(tmp_path)
    lock = cache.entry_path("demo", {"a": 1}).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    held, release = threading.Event(), threading.Event()

    def hold():  # flock conflicts between two open() calls even within one process
        with locked(lock):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    t0 = time.perf_counter()
    assert cache.get("demo", {"a": 1}, lambda w: w.put("x", np.ones(1)), wait=False) is None
    assert time.perf_counter() - t0 < 0.5
    threading.Timer(0.5, release.set).start()
    assert cache.get("demo", {"a": 1}, lambda w: w.put("x", np.ones(1)))["x"][0] == 1.0  # waits, then computes
    holder.join(10)


def test_file_system_without_locks_warns_and_still_caches(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cache = DiskCache(tmp_path)
    with pytest.warns(UserWarning, match="cannot lock"):
        out = cache.get("demo", {"a": 1}, lambda w: w.put("x", np.arange(2.0)))
    assert out["x"].tolist() == [0.0, 1.0] and cache.get("demo", {"a": 1}, None)["x"].tolist() == [0.0, 1.0]
