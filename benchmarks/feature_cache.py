"""Feature cache: one 24-trial PatchCore sweep run without and with the cache (issue 7).

    HF_HUB_OFFLINE=1 python benchmarks/feature_cache.py [--n-train 200 --n-test 50 --size 224]

The sweep varies only k {1, 3, 9} x coreset ratio {0.01, 0.1} x gating {mixed, oracle, p90, soft}
(`ca_patchcore`, the researcher's backbone: DINOv2 ViT-S/14 blocks.8 + blocks.11, randomly initialised
because no weights can be downloaded here — the compute is the real model's). Both runs use the same
local Ray instance (started before timing), 2 trials at a time with 1 CPU each, W&B disabled (the
cache is measured, not logging). Reports each run's wall time, the speed-up, and whether every trial's
metrics and every per-image score are identical.
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
name: feature-cache
data: {{root: {root}, simulate: {{n_train: {n_train}, n_test: {n_test}, domains: [C], seed: 0}}}}
trial:
  data: {{domain: C, image_size: [{size}, {size}]}}
  model:
    name: ca_patchcore
    backbone: vit_small_patch14_dinov2
    layers: [blocks.8, blocks.11]
    pretrained: false
axes:
  model.k: [1, 3, 9]
  model.coreset_ratio: [0.01, 0.1]
  model.gating: [mixed, oracle, p90, soft]
resources: {{cpu: 1}}
max_concurrent: 2
output: {out}
tracking: {{wandb: {{mode: disabled}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=50, help="test/good and test/fault images each")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray

    from sweeps.runner import prepare_data, run_sweep
    from sweeps.spec import load_spec

    work = Path(tempfile.mkdtemp(prefix="hdmap-feature-cache-"))
    spec_path = work / "spec.yaml"
    spec_path.write_text(
        SPEC.format(root=work / "data", n_train=args.n_train, n_test=args.n_test, size=args.size, out=work / "out")
    )
    plan = load_spec(spec_path)
    assert len(plan.trials) == 24, len(plan.trials)
    prepare_data(plan)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    runs = {}
    for name, cached in (("without cache", False), ("with cache", True)):
        run_plan = load_spec(spec_path, [f"output={work / name.replace(' ', '-')}"])
        t0 = time.perf_counter()
        outcome = run_sweep(run_plan, live=False, feature_cache=cached)
        wall = time.perf_counter() - t0
        assert outcome.ok == 24, outcome
        rows = pq.read_table(Path(outcome.sweep_dir) / "results.parquet").to_pylist()
        scores = pq.read_table(Path(outcome.sweep_dir) / "scores.parquet").to_pandas()
        runs[name] = {
            "wall": wall,
            "rows": {r["trial_id"]: r for r in rows},
            "scores": scores.set_index(["trial_id", "file"])["score"].sort_index(),
        }
    ray.shutdown()

    plain, cached = runs["without cache"], runs["with cache"]
    metric_keys = ("image_auroc", "accuracy", "f1", "auroc_cold", "auroc_warm", "gating_accuracy", "threshold")
    same_metrics = all(plain["rows"][t][k] == cached["rows"][t][k] for t in plain["rows"] for k in metric_keys)
    score_diff = float((plain["scores"] - cached["scores"]).abs().max())
    mean = lambda run, key: sum(r[key] for r in run["rows"].values()) / 24  # noqa: E731
    result = {
        "trials": 24,
        "images": {"fit_and_val": args.n_train, "test": 2 * args.n_test, "size": args.size},
        "wall_s_without_cache": round(plain["wall"], 1),
        "wall_s_with_cache": round(cached["wall"], 1),
        "speedup": round(plain["wall"] / cached["wall"], 2),
        "mean_trial_total_s": {"without": round(mean(plain, "total_s"), 2), "with": round(mean(cached, "total_s"), 2)},
        "cache_entries_computed": sum(r["cache_misses"] for r in cached["rows"].values()),
        "cache_entries_reused": sum(r["cache_hits"] for r in cached["rows"].values()),
        "metrics_identical": same_metrics,
        "max_abs_score_difference": score_diff,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "work_dir": str(work),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
