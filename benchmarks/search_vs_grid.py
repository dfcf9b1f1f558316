"""Random search vs the full grid on DRAEM-SevNet, at reduced size (issue 21, item 6).

    HF_HUB_OFFLINE=1 WANDB_MODE=disabled .venv/bin/python benchmarks/search_vs_grid.py [--out DIR] [--domains A,C]

The space of sweeps/examples/draem_sevnet_search.yaml cut to 45 configs per domain (severity input mode 5 x patch
aspect 3 x patch count 3; loss weights and anomaly probability fixed), with small images, few epochs and a small
simulated data set so it runs on 2 CPU cores:

1. the grid: every config, each domain (`hdmap sweep run`, FIFO);
2. the search: `search: {method: random, num_samples: N}` over the same space into its own output (N = 25% of the
   grid by default), run for real -- its samples are grid configs, so each of its rows must equal the grid's row of
   the same trial_id (checked: the objective is reproducible run to run);
3. how many trials a search needs to come within 0.01 of the grid's best validation objective, for search seeds
   0..S-1, the objectives read from the grid's rows by trial_id (median and quartiles over seeds; a seed that does
   not come within reach in 45 samples counts as infinitely many, printed inf): random, its samples
   drawn by the spec code itself (`sweeps.spec.load_spec`, exactly the trials a search of that seed runs); optuna
   TPE, replayed through the sweep's own searcher (`sweeps.search.CellSearcher`, as with max_concurrent: 1), each
   suggestion answered with the grid's result for that config;
4. the selected config's test AUROC: the search's (seed 0, N samples) pick on val_synth_auroc, the grid's pick on
   val_synth_auroc, and the grid's test-best config (ORACLE).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

OBJECTIVE, TEST, WITHIN = "val_synth_auroc", "image_auroc", 0.01
SPACE = {
    "model.severity_input": [
        "discriminative_only",
        "with_original",
        "with_reconstruction",
        "with_error_map",
        "multi_modal",
    ],
    "model.patch_aspect": ["landscape", "portrait", "square"],
    "model.patch_count": [1, 2, 3],
}
SPEC = """
name: {name}
data:
  root: {root}
  simulate: {{n_train: {n_train}, n_test: 40, domains: [A, B, C, D], seed: 0}}
trial:
  data: {{image_size: [32, 96], resize: bilinear, to_rgb: false, normalization: none}}
  model:
    name: draem_sevnet
    epochs: {epochs}
    base_width: 8
    lr: 0.0005
    batch_size: 16
    patch_width_range: [4, 24]
    severity_max: 1.0
axes:
  data.domain: {domains}
{body}
seeds: [0]
resources: {{cpu: 1, gpu: 0}}
max_failures: 1
output: {out}
tracking: {{wandb: {{mode: disabled}}}}
"""


def grid_body() -> str:
    return "".join(f"  {path}: {values}\n" for path, values in SPACE.items())


def search_body(n: int, seed: int, method: str = "random") -> str:
    space = "".join(
        f"    {path}: {{choice: {values}}}\n" if path != "model.patch_count" else f"    {path}: {{randint: [1, 3]}}\n"
        for path, values in SPACE.items()
    )
    return f"search:\n  method: {method}\n  num_samples: {n}\n  seed: {seed}\n  space:\n{space}"


def write_spec(folder: Path, name: str, body: str, args) -> Path:
    path = folder / f"{name}.yaml"
    domains = "[" + ", ".join(args.domains.split(",")) + "]"
    spec = SPEC.format(
        name=name, root=args.root, epochs=args.epochs, domains=domains, body=body, out=args.out, n_train=args.n_train
    )
    path.write_text(spec)
    return path


def run(spec: Path) -> None:
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec), "--no-report"]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        sys.exit(f"{spec.name}: the sweep exited non-zero; run this again to resume it")


def rows(sweep_dir: str) -> pd.DataFrame:
    from sweeps.store import ResultStore

    df = ResultStore(sweep_dir).results(["trial_id", "data.domain", "status", OBJECTIVE, TEST]).to_pandas()
    return df[df.status == "ok"].rename(columns={"data.domain": "domain"}).set_index("trial_id")


def trials_needed(sample_ids: list[str], grid: pd.Series, target: float) -> int | None:
    """1-based index of the first sample whose objective reaches `target` (None: none of them does)."""
    for i, trial_id in enumerate(sample_ids, 1):
        if grid[trial_id] >= target:
            return i
    return None


class _EmptyStore:
    """A store without rows, as sweeps.cells reads one: a fresh search."""

    def results(self, columns: list[str]):
        import pyarrow as pa

        return pa.table({c: pa.array([], pa.float64() if c == OBJECTIVE else pa.string()) for c in columns})


def tpe_trials_needed(plan, objective: pd.Series, targets: dict[str, float]) -> dict[str, int]:
    """An optuna search of `plan` replayed through the sweep's own searcher (sweeps.search.CellSearcher, as with
    max_concurrent: 1), each trial's result read from the grid's row of the same trial_id; per domain, the 1-based
    index of its first trial within reach of the target (absent: never within its budget)."""
    from ray.tune.search import Searcher

    from hdmap.config import TrialConfig
    from sweeps.cells import cell_histories
    from sweeps.search import CellSearcher

    searcher = CellSearcher(cell_histories(plan, _EmptyStore()), plan.spec.search, False, launched=set())
    needed: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i in range(10_000):
        suggestion = searcher.suggest(f"t{i}")
        if suggestion == Searcher.FINISHED:
            break
        cfg = TrialConfig.model_validate(suggestion["trial"])
        domain, value = cfg.data.domain, float(objective[cfg.trial_id])
        counts[domain] = counts.get(domain, 0) + 1
        if domain not in needed and value >= targets[domain]:
            needed[domain] = counts[domain]
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: value})
    return needed


def median_quartiles(needed: list[int | None]) -> list[float]:
    """Quartiles over every seed; a seed that never came within reach counts as infinitely many trials."""
    values = sorted(math.inf if n is None else n for n in needed)
    return statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="sweeps-out/search-vs-grid")
    parser.add_argument("--root", default="data/search-vs-grid-sim")
    parser.add_argument("--domains", default="A,C")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=11, help="the real search's num_samples (25%% of 45: 11)")
    parser.add_argument("--seeds", type=int, default=50, help="search seeds replayed on the grid's rows")
    parser.add_argument("--n-train", type=int, default=60, help="simulated train images per domain (10%% validate)")
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())

    from sweeps.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run(write_spec(folder, "grid", grid_body(), args))
        run(write_spec(folder, "search", search_body(args.samples, 0), args))
        grid, search = rows(f"{args.out}/grid"), rows(f"{args.out}/search")
        replays = [load_spec(write_spec(folder, f"s{seed}", search_body(45, seed), args)) for seed in range(args.seeds)]
        tpe_plans = [
            load_spec(write_spec(folder, f"t{seed}", search_body(45, seed, "optuna"), args))
            for seed in range(args.seeds)
        ]

    shared = search.index.intersection(grid.index)
    drift = (search.loc[shared, OBJECTIVE] - grid.loc[shared, OBJECTIVE]).abs().max()
    print(
        f"\nsearch rows {len(search)}, all of them grid configs: {len(shared) == len(search)}; "
        f"max |objective(search) - objective(grid)| over the same trial ids: {drift:.2g}\n"
    )
    targets = {domain: g[OBJECTIVE].max() - WITHIN for domain, g in grid.groupby("domain")}
    tpe = [tpe_trials_needed(plan, grid[OBJECTIVE], targets) for plan in tpe_plans]
    for domain, g in grid.groupby("domain"):
        best_val = g[OBJECTIVE].max()
        tpe_needed = [n.get(domain) for n in tpe]
        tpe_found = [n for n in tpe_needed if n is not None]
        tq = median_quartiles(tpe_needed)
        needed = []
        for plan in replays:
            ids = [t.trial_id for t in plan.trials if t.data.domain == domain]
            needed.append(trials_needed(ids, g[OBJECTIVE], best_val - WITHIN))
        found = [n for n in needed if n is not None]
        q = median_quartiles(needed)
        s = search[search.domain == domain]
        picked, grid_pick, oracle = s.loc[s[OBJECTIVE].idxmax()], g.loc[g[OBJECTIVE].idxmax()], g[TEST].max()
        print(
            f"domain {domain}: grid {len(g)} configs, best {OBJECTIVE} {best_val:.3f}; random search needs "
            f"median {q[1]:g} (quartiles {q[0]:g}-{q[2]:g}) trials to come within {WITHIN} of it "
            f"({q[1] / len(g):.0%} of the grid; {len(found)}/{len(needed)} seeds reach it within 45 samples); "
            f"optuna TPE needs median {tq[1]:g} (quartiles {tq[0]:g}-{tq[2]:g}; {tq[1] / len(g):.0%}; "
            f"{len(tpe_found)}/{len(tpe)} seeds reach it within 45 trials)\n"
            f"  test AUROC: search ({len(s)} samples, seed 0) pick {picked[TEST]:.3f} (its {OBJECTIVE} "
            f"{picked[OBJECTIVE]:.3f}); grid pick on {OBJECTIVE} {grid_pick[TEST]:.3f}; grid test-best (ORACLE) "
            f"{oracle:.3f}; grid median {g[TEST].median():.3f}"
        )


if __name__ == "__main__":
    main()
