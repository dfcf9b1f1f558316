"""Sweep overhead: N trials one after another in one process vs the same N trials as a Ray Tune sweep.

The full measurement (issue 14; run it on a quiet machine, ~50 min; figures go to benchmarks/RESULTS.md):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_overhead.py --trials 8,32 --trial-s 20 --concurrency 2

A short check that the script works (not a measurement): ``--trials 4 --trial-s 5``.

(a) sequential: `run_trial` for each config in this process (what `hdmap trial` does), torch on 1 thread; run
    for the largest N -- a smaller N's (a) is the sum of its first N trials (same configs, same order) -- once
    before the sweeps and once after: the machine's speed drifts by several per cent over minutes (a shared
    host), so each trial's (a) time is the mean of its two passes and the drift is printed.
(b) sweep: `run_sweep` (what `hdmap sweep run` does) with `concurrency` trials at once, 1 CPU (= 1 torch thread)
    each, on a fresh local Ray instance per N, without the feature cache (the trials do the same work as in (a)).
(c) side by side: the same trials in k plain processes (spawned, one torch thread each, every k-th trial), no
    Ray, store or W&B -- what a nohup script per core does: the floor for any parallel runner on this machine.
Ratio = b / (a / k): 1.0 is a perfect k-fold speed-up; targets <= 1.10 at 8 trials and <= 1.05 at 32.
c / (a / k) is what the machine itself costs (k trials sharing caches and memory bandwidth, k imports); b / c is
what the sweep layer (Ray, Tune, the store, W&B) adds on top of it.
It splits in two, from the trials' own `total_s` rows: how much slower a trial ran inside the sweep than alone
(`trial_slowdown_in_sweep`: k trials and the driver share the cores, caches and memory bandwidth), and the wall
spent outside `run_trial` (`wall_outside_trials_s`), itself split by the rows' start times: before the first trial
(Ray start, worker start-up and imports), after the last one (the final store pass, W&B), and the slots' idle time
between trials (the worker's store write, Tune's hand-over to the reused actor).
Recorded apart: Ray start (in b), the import a trial process pays once (a fresh interpreter importing the
trainable; each of the k reused worker processes pays it once), and W&B: the time per run the driver's logger
spent (off the trials' slots) and how long the end of the sweep waited for it. Trials differ only in seed.
`--trial-s T` scales the simulated data set so one trial takes about T seconds here (calibrated on one trial).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

    from sweeps.runner import prepare_data

    prepare_data(plans[counts[-1]])
    before = sequential(plans[counts[-1]])  # (a), once for the largest count, before and after the sweeps
    import_s = trial_import_s()
    sweeps = [(n, run_sweep_timed(plans[n]), side_by_side(plans[n], args.concurrency)) for n in counts]
    after = sequential(plans[counts[-1]])
    seq = {
        t: {
            **before[t],
            "s": (before[t]["s"] + after[t]["s"]) / 2,
            "total_s": (before[t]["total_s"] + after[t]["total_s"]) / 2,
        }
        for t in before
    }
    drift = sum(r["s"] for r in after.values()) / sum(r["s"] for r in before.values())
    repeatable = all(after[t]["row"][m] == before[t]["row"][m] for t in before for m in METRICS)
    results = [measure_sweep(n, args.concurrency, swept, plain, seq, import_s) for n, swept, plain in sweeps]
    print(
        json.dumps(
            {
                "data": {"n_train": n_train, "n_test": n_test, "size": args.size},
                "wandb": args.wandb,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                # the machine's speed drifts (a shared host): (a) ran before and after the sweeps, and each trial's
                # sequential time is the mean of the two; this is how much slower the second pass was
                "sequential_drift_after_over_before": round(drift, 3),
                "sequential_metrics_repeatable": repeatable,
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


def sequential(plan) -> dict[str, dict]:
    """(a): `run_trial` for each config in this process, one after another: per trial its row and wall seconds."""
    from hdmap.trial import run_trial

    out = {}
    for cfg in plan.trials:
        t0 = time.perf_counter()
        row = run_trial(cfg).rows[0]
        out[cfg.trial_id] = {"row": row, "s": time.perf_counter() - t0, "total_s": row["total_s"]}
    return out


def run_sweep_timed(plan) -> dict:
    """(b): `run_sweep` on a fresh local Ray instance; its wall, start time, outcome and stored rows."""
    import ray

    from sweeps.runner import run_sweep
    from sweeps.store import ResultStore

    t0, wall0 = time.perf_counter(), time.time()
    outcome = run_sweep(plan, live=False, feature_cache=False)
    sweep_s = time.perf_counter() - t0
    ray.shutdown()  # the next count starts its own Ray instance and worker processes
    assert outcome.ok == len(plan.trials), outcome
    rows = {r["trial_id"]: r for r in ResultStore(outcome.sweep_dir).results().to_pylist()}
    return {"wall_s": sweep_s, "wall0": wall0, "outcome": outcome, "rows": rows}


def side_by_side(plan, k: int) -> dict:
    """(c): the same trials in k plain processes, no Ray, store or W&B -- a shell loop per core, as with nohup
    scripts: what any runner pays for k trials sharing the machine (caches, memory bandwidth) plus k imports."""
    configs = [t.model_dump(mode="json") for t in plan.trials]  # plain data, as the sweep hands them to workers
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(k) as pool:
        shares = pool.map(_run_share, [configs[i::k] for i in range(k)])
    return {"wall_s": time.perf_counter() - t0, "rows": {t: r for share in shares for t, r in share.items()}}


def _run_share(configs: list[dict]) -> dict:
    """One plain process of (c): its share of the trials one after another, one torch thread, rows in memory."""
    import torch

    torch.set_num_threads(1)
    from hdmap.config import TrialConfig
    from hdmap.trial import run_trial

    rows = {}
    for tree in configs:
        cfg = TrialConfig.model_validate(tree)
        row = run_trial(cfg).rows[0]
        rows[cfg.trial_id] = {m: row[m] for m in (*METRICS, "total_s")}
    return rows


def measure_sweep(n: int, k: int, swept: dict, plain: dict, seq: dict, import_s: float) -> dict:
    rows, outcome, sweep = swept["rows"], swept["outcome"], swept["wall_s"]
    sequential = sum(seq[t]["s"] for t in rows)
    in_sweep = sum(r["total_s"] for r in rows.values())  # run_trial's own time, measured inside the workers
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
        "trial_slowdown_in_sweep": round(in_sweep / sum(seq[t]["total_s"] for t in rows), 3),
        "wall_outside_trials_s": round(sweep - in_sweep / k, 1),
        **timeline(list(rows.values()), swept["wall0"], sweep, k),
        "ray_start_s": round(outcome.ray_start_s, 2),
        "trial_import_s": round(import_s, 2),
        "wandb": tally.line() if tally else "W&B: no trial logged",
        "wandb_mean_run_s": round(statistics.mean(logged), 2) if logged else None,
        "wandb_end_wait_s": round(tally.drain_s, 2) if tally else None,
        # (c): the floor any parallel runner has on this machine, and what the sweep layer adds on top of it
        "plain_wall_s": round(plain["wall_s"], 1),
        "ratio_plain_c_over_a_div_k": round(plain["wall_s"] / (sequential / k), 3),
        "trial_slowdown_plain": round(
            sum(r["total_s"] for r in plain["rows"].values()) / sum(seq[t]["total_s"] for t in plain["rows"]), 3
        ),
        "sweep_over_plain_b_over_c": round(sweep / plain["wall_s"], 3),
        "same_metrics_as_sequential": all(
            rows[t][m] == seq[t]["row"][m] == plain["rows"][t][m] for t in rows for m in METRICS
        ),
    }


def timeline(rows: list[dict], wall0: float, sweep_s: float, k: int) -> dict:
    """Where the wall outside the trials went, from each row's start time and `total_s`: before the first trial
    started (Ray start, worker start-up and imports), after the last one ended (the final store pass, W&B wait),
    and the slots' idle time between trials (scheduling, the worker's store write, actor reuse)."""
    spans = sorted((r["started_at"].timestamp(), r["started_at"].timestamp() + r["total_s"]) for r in rows)
    first, last = spans[0][0], max(end for _, end in spans)
    busy = sum(end - start for start, end in spans)
    return {
        "before_first_trial_s": round(first - wall0, 1),
        "after_last_trial_s": round(wall0 + sweep_s - last, 1),
        "idle_slot_s_per_trial": round((k * (last - first) - busy) / len(rows), 2),
    }


if __name__ == "__main__":
    main()
