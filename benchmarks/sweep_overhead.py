"""Sweep overhead: N trials one after another in one process vs the same N trials as a Ray Tune sweep.

The full measurement (issue 14; run it on a quiet machine, ~25 min; figures go to benchmarks/RESULTS.md):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_overhead.py --trials 8,32 --trial-s 20 --concurrency 2

A short check that the script works (not a measurement): ``--trials 4 --trial-s 5``.

(a) sequential: `run_trial` for each config in this process (what `hdmap trial` does), torch on 1 thread; run
    once for the largest N -- a smaller N's (a) is the sum of its first N trials (same configs, same order).
(b) sweep: `run_sweep` (what `hdmap sweep run` does) with `concurrency` trials at once, 1 CPU (= 1 torch thread)
    each, on a fresh local Ray instance per N, without the feature cache (the trials do the same work as in (a)).
Ratio = b / (a / k): 1.0 is a perfect k-fold speed-up; targets <= 1.10 at 8 trials and <= 1.05 at 32.
It splits in two, from the trials' own `total_s` rows: how much slower a trial ran inside the sweep than alone
(`trial_slowdown_in_sweep`: k trials and the driver share the cores, caches and memory bandwidth), and the wall
spent outside `run_trial` (`wall_outside_trials_s`: Ray start, worker imports, scheduling, the final store pass).
Recorded apart: Ray start (in b), the import a trial process pays once (a fresh interpreter importing the
trainable; each of the k reused worker processes pays it once), and W&B: the time per run the driver's logger
spent (off the trials' slots) and how long the end of the sweep waited for it. Trials differ only in seed.
`--trial-s T` scales the simulated data set so one trial takes about T seconds here (calibrated on one trial).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name: overhead-{n}
data: {{root: {root}, simulate: {{n_train: {n_train}, n_test: {n_test}, domains: [C], seed: 0}}}}
trial:
  data: {{domain: C, image_size: [{size}, {size}]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2, layer3], coreset_ratio: 0.01}}
seeds: {seeds}
resources: {{cpu: 1}}
max_concurrent: {k}
output: {out}
tracking: {{wandb: {{mode: {wandb}}}}}
"""
METRICS = ("image_auroc", "accuracy", "threshold", "f1", "auroc_cold", "auroc_warm")
TRIAL_IMPORTS = "import ray.tune, hdmap.trial, sweeps.worker"  # what a fresh Tune worker imports for a trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="4", help="trial counts, comma-separated (e.g. 8,32)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--trial-s",
        type=float,
        default=None,
        help="target seconds per trial: scales --n-train/--n-test after timing one trial",
    )
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--size", type=int, default=176)
    parser.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.trials.split(",")})

    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="hdmap-overhead-"))
    n_train, n_test = args.n_train, args.n_test
    if args.trial_s:
        n_train, n_test = calibrate(work, args, n_train, n_test)
    plans = {n: plan_for(work, args, n, n_train, n_test) for n in counts}

    from hdmap.trial import run_trial
    from sweeps.runner import prepare_data

    prepare_data(plans[counts[-1]])
    seq_rows, seq_s = {}, []
    for cfg in plans[counts[-1]].trials:  # (a), once, for the largest count
        t0 = time.perf_counter()
        seq_rows[cfg.trial_id] = run_trial(cfg).rows[0]
        seq_s.append(time.perf_counter() - t0)
    import_s = trial_import_s()

    results = [measure_sweep(plans[n], n, args.concurrency, seq_rows, seq_s, import_s) for n in counts]
    print(
        json.dumps(
            {
                "data": {"n_train": n_train, "n_test": n_test, "size": args.size},
                "wandb": args.wandb,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "runs": results,
            },
            indent=2,
        )
    )


def plan_for(work: Path, args, n: int, n_train: int, n_test: int):
    """Spec of n trials (seeds 0..n-1) on the shared data set, with its own output (nothing skipped)."""
    from sweeps.spec import load_spec

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"spec-{n}.yaml"
    path.write_text(
        SPEC.format(
            n=n,
            root=work / f"data-{n_train}-{n_test}",
            n_train=n_train,
            n_test=n_test,
            size=args.size,
            seeds=list(range(n)),
            k=args.concurrency,
            out=work / f"out-{n}",
            wandb=args.wandb,
        )
    )
    return load_spec(path)


def calibrate(work: Path, args, n_train: int, n_test: int) -> tuple[int, int]:
    """Time one trial (after a warm-up one) at the given data size; scale the image counts to reach --trial-s."""
    from hdmap.trial import run_trial
    from sweeps.runner import prepare_data

    plan = plan_for(work / "calibration", args, 1, n_train, n_test)
    prepare_data(plan)
    run_trial(plan.trials[0])  # warm-up: first-call costs are not trial time
    t0 = time.perf_counter()
    run_trial(plan.trials[0])
    scale = args.trial_s / (time.perf_counter() - t0)
    return max(20, round(n_train * scale)), max(10, round(n_test * scale))


def trial_import_s() -> float:
    """Seconds a fresh interpreter takes to import what a trial process needs (paid once per worker process)."""
    code = f"import time; t = time.perf_counter(); {TRIAL_IMPORTS}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure_sweep(plan, n: int, k: int, seq_rows: dict, seq_s: list[float], import_s: float) -> dict:
    import ray

    from sweeps.runner import run_sweep
    from sweeps.store import ResultStore

    t0 = time.perf_counter()
    outcome = run_sweep(plan, live=False, feature_cache=False)
    sweep = time.perf_counter() - t0
    ray.shutdown()  # the next count starts its own Ray instance and worker processes
    assert outcome.ok == n, outcome
    swept = {r["trial_id"]: r for r in ResultStore(outcome.sweep_dir).results().to_pylist()}
    sequential = sum(seq_s[:n])
    in_sweep = sum(r["total_s"] for r in swept.values())  # run_trial's own time, measured inside the workers
    tally = outcome.wandb
    logged = [s for t, s in tally.seconds.items() if tally.statuses[t].startswith("logged")] if tally else []
    return {
        "trials": n,
        "concurrency": k,
        "mean_trial_s_sequential": round(sequential / n, 2),
        "sequential_wall_s": round(sequential, 1),
        "sweep_wall_s": round(sweep, 1),
        "ratio_b_over_a_div_k": round(sweep / (sequential / k), 3),
        # the ratio's two parts: trials ran slower side by side (the k trials and the driver share cores, caches
        # and memory bandwidth), and the wall outside run_trial (Ray start, imports, scheduling, the end)
        "mean_trial_s_in_sweep": round(in_sweep / n, 2),
        "trial_slowdown_in_sweep": round(in_sweep / sum(r["total_s"] for r in (seq_rows[t] for t in swept)), 3),
        "wall_outside_trials_s": round(sweep - in_sweep / k, 1),
        "ray_start_s": round(outcome.ray_start_s, 2),
        "trial_import_s": round(import_s, 2),
        "wandb": tally.line() if tally else "W&B: no trial logged",
        "wandb_mean_run_s": round(statistics.mean(logged), 2) if logged else None,
        "wandb_end_wait_s": round(tally.drain_s, 2) if tally else None,
        "same_metrics_as_sequential": all(swept[t][m] == seq_rows[t][m] for t in swept for m in METRICS),
    }


if __name__ == "__main__":
    main()
