"""The report's paper table: per method, accuracy domain mean ± std over seeds and domain C ± std, sorted."""

import math

import pandas as pd

from sweeps.report.paper_table import PAPER, paper_rows

ACC = {
    ("padim", "domain_A"): 0.90,
    ("padim", "domain_C"): 0.70,
    ("draem_cutpaste", "domain_A"): 0.99,
    ("draem_cutpaste", "domain_C"): 0.95,
}


def _ok(seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for (model, domain), acc in ACC.items():
        for seed in seeds:
            rows.append(
                {
                    "model": model,
                    "train_domain": domain,
                    "test_domain": domain,
                    "seed": seed,
                    "accuracy": acc + 0.02 * seed,
                    "image_auroc": acc + 0.01,
                }
            )
        # a cross-domain row never counts
        rows.append(
            {
                "model": model,
                "train_domain": domain,
                "test_domain": "domain_B",
                "seed": 0,
                "accuracy": 0.0,
                "image_auroc": 0.0,
            }
        )
    return pd.DataFrame(rows)


def test_domain_mean_and_c_with_std_over_seeds_sorted_weakest_first():
    rows = paper_rows(_ok())
    assert list(rows["model"]) == ["padim", "draem_cutpaste"]
    padim = rows.iloc[0]
    assert math.isclose(padim["accuracy_avg"], (0.80 + 0.82) / 2)  # per seed: mean over A and C; then over seeds
    assert math.isclose(padim["accuracy_avg_std"], pd.Series([0.80, 0.82]).std())
    assert math.isclose(padim["accuracy_c"], 0.71)
    assert math.isclose(padim["accuracy_c_std"], pd.Series([0.70, 0.72]).std())
    assert math.isclose(padim["image_auroc_c"], 0.71) and padim["seeds"] == 2 and padim["domains"] == 2


def test_one_seed_shows_std_over_domains_and_none_for_c():
    padim = paper_rows(_ok(seeds=(0,))).iloc[0]
    assert math.isclose(padim["accuracy_avg_std"], pd.Series([0.90, 0.70]).std())
    assert math.isnan(padim["accuracy_c_std"])


def test_paper_reference_names_the_proposed_method():
    assert PAPER["draem_cutpaste"][0].startswith("DRAEM + scaled CutPaste") and PAPER["cutpaste_clf"][1] == 97.1


def test_models_trained_on_all_domains_have_no_paper_row():
    """`data.domain: all` rows (one multi-class model) are not per-domain models: no paper row, and no crash."""
    multi = _ok().assign(train_domain="all")
    assert paper_rows(multi).empty
    mixed = pd.concat([_ok(), multi.assign(model="dinomaly")])
    assert list(paper_rows(mixed)["model"]) == ["padim", "draem_cutpaste"]
