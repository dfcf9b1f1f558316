"""Sweep overhead: N trials one after another in one process vs the same N trials as a Ray Tune sweep.

    python benchmarks/sweep_overhead.py --trials 4 --concurrency 2

(a) sequential: `run_trial` for each config in this process (what `hdmap trial` does), torch on 1 thread.
(b) sweep: `hdmap sweep run` machinery with `concurrency` trials at once, 1 CPU (= 1 torch thread) each.
Reports both wall times, ratio = b / (a / k) (1.0 = perfect parallel speed-up; target <= 1.15 for
trials of >= 20 s) and Ray start-up time. Trials differ only in seed so their cost is equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

SPEC = """
name: overhead
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--size", type=int, default=176)
    parser.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import torch

    from hdmap.trial import run_trial
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    work = Path(tempfile.mkdtemp(prefix="hdmap-overhead-"))
    spec_path = work / "spec.yaml"
    spec_path.write_text(SPEC.format(root=work / "data", n_train=args.n_train, n_test=args.n_test, size=args.size,
                                     seeds=list(range(args.trials)), k=args.concurrency, out=work / "out",
                                     wandb=args.wandb))
    plan = load_spec(spec_path)
    from sweeps.runner import prepare_data

    prepare_data(plan)

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seq = [run_trial(cfg).rows[0] for cfg in plan.trials]
    sequential = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcome = run_sweep(plan, live=False)
    sweep = time.perf_counter() - t0
    assert outcome.ok == args.trials, outcome

    per_trial = sequential / args.trials
    result = {
        "trials": args.trials, "concurrency": args.concurrency, "mean_trial_s_sequential": round(per_trial, 2),
        "sequential_wall_s": round(sequential, 1), "sweep_wall_s": round(sweep, 1),
        "ratio_b_over_a_div_k": round(sweep / (sequential / args.concurrency), 3),
        "ray_start_s": round(outcome.ray_start_s, 2), "wandb": args.wandb,
        "same_metrics_as_sequential": sorted(r["image_auroc"] for r in seq)
        == sorted(pq.read_table(Path(outcome.sweep_dir) / "results.parquet")["image_auroc"].to_pylist()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
