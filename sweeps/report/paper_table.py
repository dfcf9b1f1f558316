"""The paper's "overall fault detection accuracy" table (docs/research-facts.md#paper-table) from a sweep's rows.

One row per method, sorted by domain-average accuracy (weakest first, as the paper lists them):
accuracy as domain mean ± std and on domain C ± std, image AUROC beside each, and the paper's own figure
(real data, 100k train images, 128 x 128) for orientation only: simulated data does not reproduce it.
Only single-domain rows (train domain = test domain) count. ± is the std over seeds (the paper's repeats);
with a single seed it is the std over domains for the domain mean and absent for domain C.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweeps.report import analysis as A
from sweeps.report.render import Section
from sweeps.report.tables import Table

# model -> (the paper's name, accuracy % domain avg, std, domain C, std)
PAPER = {
    "draem": ("DRAEM", 51.0, 2.0, 50.0, 0.0),
    "cutpaste": ("CutPaste", 65.9, 18.0, 72.1, 15.3),
    "uninet": ("UniNet", 72.4, 9.8, 73.3, 1.3),
    "reverse_distillation": ("Reverse Distillation", 78.0, 8.3, 71.2, 4.2),
    "padim": ("PaDiM", 81.7, 9.3, 72.9, 1.6),
    "dinomaly": ("Dinomaly", 90.9, 5.7, 83.9, 0.8),
    "patchcore": ("PatchCore", 91.6, 7.7, 79.9, 1.2),
    "cflow": ("CFlow-AD", 92.0, 6.2, 84.4, 1.4),
    "cutpaste_clf": ("Scaled CutPaste", 97.1, 0.5, 93.3, 1.0),
    "draem_cutpaste": ("DRAEM + scaled CutPaste (proposed)", 99.6, 0.4, 99.1, 0.6),
}
METRICS = ("accuracy", "image_auroc")


def paper_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per model: `<metric>_avg`, `<metric>_avg_std`, `<metric>_c`, `<metric>_c_std`, seeds, domains."""
    if ok.empty or not {"model", "train_domain", "test_domain", "seed"} <= set(ok.columns):
        return pd.DataFrame()
    single = ok[ok["train_domain"] == ok["test_domain"]]
    out = []
    for model, g in single.groupby("model", sort=True):
        per = g.groupby(["seed", "test_domain"])[list(METRICS)].mean()  # pools configs of one seed x domain
        seeds, domains = per.index.get_level_values(0).unique(), per.index.get_level_values(1).unique()
        row = {"model": model, "seeds": len(seeds), "domains": len(domains)}
        for m in METRICS:
            by_seed = per[m].groupby(level=0).mean()
            row[f"{m}_avg"] = by_seed.mean()
            row[f"{m}_avg_std"] = by_seed.std() if len(seeds) > 1 else per[m].groupby(level=1).mean().std()
            c = per[m].xs("domain_C", level=1) if "domain_C" in domains else pd.Series(dtype=float)
            row[f"{m}_c"] = c.mean() if len(c) else np.nan
            row[f"{m}_c_std"] = c.std() if len(c) > 1 else np.nan
        out.append(row)
    if not out:  # e.g. every model trained on `data.domain: all`: no per-domain model to lay out as the paper does
        return pd.DataFrame()
    return pd.DataFrame(out).sort_values("accuracy_avg", na_position="first").reset_index(drop=True)


def _pct(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if np.isfinite(std) else "")


def paper_table_section(data: A.SweepData) -> Section | None:
    """The section, or None when the sweep is not a model comparison over several domains."""
    rows = paper_rows(data.ok)
    if len(rows) < 2 or rows["domains"].max() < 2:
        return None
    s = Section("paper-table", "Paper table: overall fault detection accuracy")
    one_seed = bool((rows["seeds"] == 1).any())
    s.text(
        "Accuracy (%, threshold from validation normals) as domain mean ± std / domain C ± std, image AUROC (%) "
        "beside it; sorted by domain-mean accuracy as in the paper. ± is the std over seeds"
        + (
            "; methods run with one seed show the std over domains for the mean and none for domain C"
            if one_seed
            else ""
        )
        + ". The paper's figures are on the real data (100k train images, 128 x 128): orientation only."
    )
    t = Table(
        [
            "method",
            "model",
            "seeds",
            "domains",
            "accuracy: domain mean",
            "accuracy: domain C",
            "AUROC: domain mean",
            "AUROC: domain C",
            "paper accuracy (real data)",
        ],
        numeric_from=2,
        css="main",
    )
    for r in rows.itertuples():
        paper = PAPER.get(r.model)
        t.add(
            [
                paper[0] if paper else r.model,
                r.model,
                str(r.seeds),
                str(r.domains),
                _pct(r.accuracy_avg, r.accuracy_avg_std),
                _pct(r.accuracy_c, r.accuracy_c_std),
                _pct(r.image_auroc_avg, r.image_auroc_avg_std),
                _pct(r.image_auroc_c, r.image_auroc_c_std),
                f"{paper[1]:.1f} ± {paper[2]:.1f} / {paper[3]:.1f} ± {paper[4]:.1f}" if paper else "—",
            ]
        )
    s.table(t)
    return s
