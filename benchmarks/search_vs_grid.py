"""Random search vs the full grid on DRAEM-SevNet, at reduced size (issue 21, item 6).

    HF_HUB_OFFLINE=1 WANDB_MODE=disabled .venv/bin/python benchmarks/search_vs_grid.py [--out DIR] [--domains A,C]

The space of sweeps/examples/draem_sevnet_search.yaml without its loss weights (severity input mode 5 x patch aspect 3
x patch count 3 x anomaly probability 3 = 135 configs per domain; `--axes` searches fewer, e.g. the 45 configs without
anomaly probability), with small images, few epochs and a small simulated data set so it runs on 2 CPU cores:

1. the grid: every config, each domain (`hdmap sweep run`, FIFO);
2. the search: `search: {method: random, num_samples: N}` over the same space into its own output (N = 25% of the
   grid by default), run for real -- its samples are grid configs, so each of its rows must equal the grid's row of
   the same trial_id (checked: the objective is reproducible run to run);
3. how many trials a search needs to come within 0.01 of the grid's best validation objective, for search seeds
   0..S-1, the objectives read from the grid's rows by trial_id (median and quartiles over seeds; a seed that does
   not come within reach in the whole grid counts as infinitely many, printed inf): random, its samples
   drawn by the spec code itself (`sweeps.spec.load_spec`, exactly the trials a search of that seed runs); optuna
   TPE, replayed through the sweep's own searcher (`sweeps.search.CellSearcher`, as with max_concurrent: 1), each
   suggestion answered with the grid's result for that config;
4. the selected config's test AUROC: the search's (seed 0, N samples) pick on val_synth_auroc, the grid's pick on
   val_synth_auroc, and the grid's test-best config (ORACLE);
5. `--noise`: the real search's configs again with trial seed 1: how far the objective moves with the seed alone;
6. `--asha-seeds K`: K real `method: asha` searches (N samples, `--grace` epochs before a stop): the epochs they
   trained against the grid's, and their pick against the grid's best.
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
    "model.anomaly_probability": [0.3, 0.5, 0.8],
}
SPEC = """
name: {name}
data:
  root: {root}
  simulate: {{n_train: {n_train}, n_test: 40, domains: [A, B, C, D], seed: 0}}
trial:
  data: {{image_size: [32, 96], resize: bilinear, to_rgb: false, normalization: none, val_fraction: {val_fraction}}}
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
seeds: {seeds}
resources: {{cpu: 1, gpu: 0}}
max_failures: 1
output: {out}
tracking: {{wandb: {{mode: disabled}}}}
"""


def grid_body(space: dict[str, list]) -> str:
    return "".join(f"  {path}: {values}\n" for path, values in space.items())


def search_body(space: dict[str, list], n: int, seed: int, method: str = "random", grace: int = 3) -> str:
    space = "".join(
        f"    {path}: {{choice: {values}}}\n" if path != "model.patch_count" else f"    {path}: {{randint: [1, 3]}}\n"
        for path, values in space.items()
    )
    asha = f"  grace_period: {grace}\n" if method == "asha" else ""
    return f"search:\n  method: {method}\n  num_samples: {n}\n  seed: {seed}\n{asha}  space:\n{space}"


def write_spec(folder: Path, name: str, body: str, args, seeds: tuple[int, ...] = (0,)) -> Path:
    path = folder / f"{name}.yaml"
    domains = "[" + ", ".join(args.domains.split(",")) + "]"
    spec = SPEC.format(
        name=name,
        root=args.root,
        epochs=args.epochs,
        domains=domains,
        body=body,
        out=args.out,
        n_train=args.n_train,
        val_fraction=args.val_fraction,
        seeds=list(seeds),
    )
    path.write_text(spec)
    return path


def run(spec: Path) -> None:
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec), "--no-report"]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        sys.exit(f"{spec.name}: the sweep exited non-zero; run this again to resume it")


def rows(sweep_dir: str, finished_only: bool = True) -> pd.DataFrame:
    from sweeps.store import ResultStore

    columns = ["trial_id", "data.domain", "status", "epochs_run", OBJECTIVE, TEST, *SPACE]
    df = ResultStore(sweep_dir).results(columns).to_pandas().rename(columns={"data.domain": "domain"})
    return (df[df.status == "ok"] if finished_only else df).set_index("trial_id")


def noise_summary(noise: pd.DataFrame, grid: pd.DataFrame, params: list[str]) -> str:
    """The same configs trained with another seed: how far a config's objective moves with the seed alone (the
    floor under any `within 0.01 of the grid's best`), and whether the two seeds rank the configs alike."""
    pairs = noise.merge(grid, on=params, suffixes=("_other", ""))
    moved = (pairs[f"{OBJECTIVE}_other"] - pairs[OBJECTIVE]).abs()
    rho = pairs[f"{OBJECTIVE}_other"].corr(pairs[OBJECTIVE], method="spearman")
    return (
        f"{len(pairs)} configs again with seed 1: |objective(seed 1) - objective(seed 0)| median {moved.median():.3f}, "
        f"max {moved.max():.3f}, {(moved <= WITHIN).mean():.0%} within {WITHIN}; Spearman rho between the seeds "
        f"{rho:+.2f}; {_best_again(pairs)}"
    )


def _best_again(pairs: pd.DataFrame) -> str:
    best = pairs.loc[pairs[OBJECTIVE].idxmax()]
    return f"the best of them at seed 0 ({best[OBJECTIVE]:.3f}) scores {best[OBJECTIVE + '_other']:.3f} at seed 1"


def asha_summary(asha: pd.DataFrame, grid: pd.DataFrame, epochs: int) -> str:
    """One ASHA search of a domain: the epochs it trained (pruned trials included) as a share of the grid's, and the
    config it selects (the best objective among the trials that ran every epoch) against the grid's best."""
    done = asha[asha.status == "ok"]
    best = grid[OBJECTIVE].max()
    used = int(asha.epochs_run.sum())
    ran = (
        f"{len(asha)} samples, {len(done)} ran all {epochs} epochs, {len(asha) - len(done)} stopped early; "
        f"{used} epochs = {used / (len(grid) * epochs):.0%} of the grid's"
    )
    if done.empty:
        return f"{ran}; no trial ran to the end: nothing to select"
    pick = done.loc[done[OBJECTIVE].idxmax()]
    drift = (done[OBJECTIVE] - grid.loc[done.index, OBJECTIVE]).abs().max()
    return (
        f"{ran}; pick {OBJECTIVE} "
        f"{pick[OBJECTIVE]:.3f} ({'within' if pick[OBJECTIVE] >= best - WITHIN else 'not within'} {WITHIN} of the "
        f"grid's {best:.3f}), test AUROC {pick[TEST]:.3f}; max |objective - grid's| {drift:.2g}"
    )


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
            if len(needed) == len(targets):  # every cell is within reach: the rest of the budget changes nothing
                break
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
    parser.add_argument("--axes", default=",".join(SPACE), help="the searched parameters (the others: defaults)")
    parser.add_argument("--samples", type=int, help="the real search's num_samples (default: 25%% of the grid)")
    parser.add_argument("--seeds", type=int, default=50, help="search seeds replayed on the grid's rows")
    parser.add_argument("--asha-seeds", type=int, default=0, help="real method: asha searches run (seeds 0..K-1)")
    parser.add_argument("--grace", type=int, default=3, help="asha: epochs before a trial may be stopped")
    parser.add_argument("--noise", action="store_true", help="the real search's configs again with trial seed 1")
    parser.add_argument("--n-train", type=int, default=60, help="simulated train images per domain")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="of train, held out for val_synth_auroc")
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    space = {path: SPACE[path] for path in args.axes.split(",")}
    size = math.prod(len(values) for values in space.values())
    samples = args.samples or size // 4

    from sweeps.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run(write_spec(folder, "grid", grid_body(space), args))
        run(write_spec(folder, "search", search_body(space, samples, 0), args))
        for seed in range(args.asha_seeds):
            run(write_spec(folder, f"asha{seed}", search_body(space, samples, seed, "asha", args.grace), args))
        grid, search = rows(f"{args.out}/grid"), rows(f"{args.out}/search")
        ashas = [rows(f"{args.out}/asha{seed}", finished_only=False) for seed in range(args.asha_seeds)]
        if args.noise:
            run(write_spec(folder, "noise", search_body(space, samples, 0), args, seeds=(1,)))
        noise = rows(f"{args.out}/noise") if args.noise else None
        replays = [
            load_spec(write_spec(folder, f"s{seed}", search_body(space, size, seed), args))
            for seed in range(args.seeds)
        ]
        tpe_plans = [
            load_spec(write_spec(folder, f"t{seed}", search_body(space, size, seed, "optuna"), args))
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
            f"({q[1] / len(g):.0%} of the grid; {len(found)}/{len(needed)} seeds reach it within {size} samples); "
            f"optuna TPE needs median {tq[1]:g} (quartiles {tq[0]:g}-{tq[2]:g}; {tq[1] / len(g):.0%}; "
            f"{len(tpe_found)}/{len(tpe)} seeds reach it within {size} trials)\n"
            f"  test AUROC: search ({len(s)} samples, seed 0) pick {picked[TEST]:.3f} (its {OBJECTIVE} "
            f"{picked[OBJECTIVE]:.3f}); grid pick on {OBJECTIVE} {grid_pick[TEST]:.3f}; grid test-best (ORACLE) "
            f"{oracle:.3f}; grid median {g[TEST].median():.3f}"
        )
        if noise is not None:
            print(f"  seed noise: {noise_summary(noise[noise.domain == domain], g, ['domain', *space])}")
        for seed, asha in enumerate(ashas):
            print(f"  asha, seed {seed}: {asha_summary(asha[asha.domain == domain], g, args.epochs)}")


if __name__ == "__main__":
    main()
