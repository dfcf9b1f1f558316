"""Does `val_synth_auroc` rank configs as test image AUROC does? (issue 21, item 2)

    HF_HUB_OFFLINE=1 WANDB_MODE=disabled .venv/bin/python benchmarks/val_objective.py [--out DIR] [--set PATH=VALUE]

Runs the sweep benchmarks/val_objective.yaml (30 configs per domain of 4 families -- patchcore, padim, dfm, draem --
on every domain of the simulated data set; `hdmap sweep run`, so an interrupted run resumes) unless its store already
holds every trial, then prints, per domain, Spearman's rho between the validation objective (no test labels) and test
image AUROC over the configs, pooled over families and per family, with n; and where it fails: the configs the
objective ranks most differently from test AUROC, and, per domain, the test AUROC of the config the objective selects
vs the test-best one (the ORACLE) and the gap.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
OBJECTIVE, TEST = "val_synth_auroc", "image_auroc"


def run_sweep(spec: Path, out: str, overrides: list[str]) -> None:
    """The sweep through the CLI, as a user runs it; an incomplete run exits non-zero: stop there."""
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec), "--set", f"output={out}", "--no-report"]
    cmd += [arg for override in overrides for arg in ("--set", override)]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode:
        sys.exit(f"the sweep exited {done.returncode}: not every trial has a row; run this again to resume")


def rows(sweep_dir: str) -> pd.DataFrame:
    from sweeps.store import ResultStore

    table = ResultStore(sweep_dir).results(["trial_id", "model", "test_domain", "status", OBJECTIVE, TEST])
    df = table.to_pandas()
    return df[(df.status == "ok") & df[OBJECTIVE].notna() & df[TEST].notna()]


def rho(group: pd.DataFrame) -> tuple[float, int]:
    if len(group) < 3 or group[OBJECTIVE].nunique() < 2 or group[TEST].nunique() < 2:
        return float("nan"), len(group)
    return float(spearmanr(group[OBJECTIVE], group[TEST]).statistic), len(group)


def correlation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per domain: rho (n) over every config, then per family."""
    out = {}
    for domain, by_domain in df.groupby("test_domain"):
        cells = {"all families": rho(by_domain)}
        cells.update({model: rho(g) for model, g in by_domain.groupby("model")})
        out[domain] = {k: f"{r:+.2f} (n={n})" for k, (r, n) in cells.items()}
    return pd.DataFrame(out).T


def selection_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per domain: the config the objective selects, its test AUROC, the test-best (ORACLE) one and the gap."""
    out = []
    for domain, g in df.groupby("test_domain"):
        picked, oracle = g.loc[g[OBJECTIVE].idxmax()], g.loc[g[TEST].idxmax()]
        out.append(
            {
                "domain": domain,
                "selected (val_synth_auroc)": f"{picked.model} {picked.trial_id}",
                "its val_synth_auroc": round(picked[OBJECTIVE], 3),
                "its test AUROC": round(picked[TEST], 3),
                "ORACLE test AUROC": round(oracle[TEST], 3),
                "ORACLE config": f"{oracle.model} {oracle.trial_id}",
                "gap": round(oracle[TEST] - picked[TEST], 3),
                "median test AUROC": round(g[TEST].median(), 3),
            }
        )
    return pd.DataFrame(out)


def worst_disagreements(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The configs whose objective rank is furthest from their test-AUROC rank, within their domain."""
    ranked = df.assign(
        objective_rank=df.groupby("test_domain")[OBJECTIVE].rank(ascending=False),
        test_rank=df.groupby("test_domain")[TEST].rank(ascending=False),
    )
    ranked["rank_gap"] = (ranked.objective_rank - ranked.test_rank).abs()
    columns = ["test_domain", "model", "trial_id", OBJECTIVE, TEST, "objective_rank", "test_rank"]
    return ranked.sort_values("rank_gap", ascending=False).head(k)[columns].round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=HERE / "val_objective.yaml")
    parser.add_argument("--out", default="sweeps-out", help="the sweep's output folder (the spec's `output`)")
    parser.add_argument("--skip-run", action="store_true", help="only read the store")
    parser.add_argument("--set", action="append", default=[], help="a spec override, as `hdmap sweep run --set`")
    args = parser.parse_args()
    if not args.skip_run:
        run_sweep(args.spec, args.out, args.set)
    df = rows(f"{args.out.rstrip('/')}/val_objective")
    print(f"\n{len(df)} ok rows with both figures, {df.trial_id.nunique()} trials\n")
    print("Spearman rho(val_synth_auroc, test image AUROC), per domain:\n")
    print(correlation_table(df).to_string())
    print("\nSelection on val_synth_auroc vs the test-best config (ORACLE), per domain:\n")
    print(selection_table(df).to_string(index=False))
    print("\nLargest rank disagreements:\n")
    print(worst_disagreements(df).to_string(index=False))


if __name__ == "__main__":
    main()
