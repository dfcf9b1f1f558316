"""The spec's `search:` block: random samples (and asha) inside each grid cell, drawn deterministically from
search.seed, checked whole before anything runs; the objective needs no test labels unless it is named oracle."""

from __future__ import annotations

import math
import textwrap

import pytest

from sweeps.spec import SpecError, load_spec

BASE = """
name: t
data: {root: /tmp/none}
"""

DRAEM = """
models:
  draem:
    trial: {data: {normalization: none}, model: {epochs: 3}}
    space:
      model.lr: {loguniform: [1.0e-5, 1.0e-2]}
      model.base_width: {choice: [8, 16, 32]}
axes: {data.domain: [A, C]}
"""


def write(tmp_path, body: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(BASE + textwrap.dedent(body))
    return path


def search(method: str = "random", n: int = 6, extra: str = "") -> str:
    return f"search: {{method: {method}, num_samples: {n}{extra}}}\n"


def test_random_search_inside_each_grid_cell(tmp_path):
    plan = load_spec(write(tmp_path, DRAEM + search()))
    assert len(plan.trials) == 2 * 6 and plan.axes == ["data.domain"]  # searched paths are not grid axes
    by_domain = {
        d: [(t.model.lr, t.model.base_width) for t in plan.trials if t.data.domain == f"domain_{d}"] for d in "AC"
    }
    assert by_domain["A"] == by_domain["C"]  # every cell gets the same samples: paired across domains
    lrs = [lr for lr, _ in by_domain["A"]]
    assert len(set(lrs)) == 6 and all(1e-5 <= lr <= 1e-2 for lr in lrs)
    assert {w for _, w in by_domain["A"]} <= {8, 16, 32}
    meta = plan.search_meta()
    assert (meta.method, meta.objective, meta.mode, meta.oracle) == ("random", "val_synth_auroc", "max", False)
    assert meta.params == ["model.lr", "model.base_width"] and meta.num_samples == 6


def test_samples_are_deterministic_and_growing_num_samples_keeps_the_drawn_ones(tmp_path):
    ids = lambda plan: [t.trial_id for t in plan.trials]  # noqa: E731
    six = load_spec(write(tmp_path, DRAEM + search(n=6)))
    again = load_spec(write(tmp_path, DRAEM + search(n=6), "again.yaml"))
    ten = load_spec(write(tmp_path, DRAEM + search(n=10), "ten.yaml"))
    other_seed = load_spec(write(tmp_path, DRAEM + search(n=6, extra=", seed: 1"), "seed1.yaml"))
    assert ids(six) == ids(again)
    assert set(ids(six)) < set(ids(ten)) and len(ids(ten)) == 20  # only the 4 new samples per cell are new
    assert not set(ids(six)) & set(ids(other_seed))


def test_loguniform_spreads_over_the_decades(tmp_path):
    body = DRAEM.replace("model.base_width: {choice: [8, 16, 32]}", "").replace("[A, C]", "[A]")
    plan = load_spec(write(tmp_path, body + search(n=200)))
    decades = {math.floor(math.log10(t.model.lr)) for t in plan.trials}
    assert decades == {-5, -4, -3}  # uniform in log space: every decade drawn, none outside [1e-5, 1e-2)


def test_a_discrete_space_is_sampled_without_replacement(tmp_path):
    body = DRAEM.replace("model.lr: {loguniform: [1.0e-5, 1.0e-2]}", "")
    plan = load_spec(write(tmp_path, body + search(n=12)))
    assert len(plan.trials) == 2 * 3 and plan.repeated_samples == 2 * 9  # 3 configs: each runs once
    two = load_spec(write(tmp_path, body + search(n=2), "two.yaml"))
    widths = [t.model.base_width for t in two.trials if t.data.domain == "domain_A"]
    assert len(set(widths)) == 2  # never a repeat while the space holds new configs
    assert [t.trial_id for t in two.trials] == [t.trial_id for t in plan.trials if t.model.base_width in widths]


def test_randint_includes_both_ends(tmp_path):
    body = DRAEM.replace("model.base_width: {choice: [8, 16, 32]}", "model.epochs: {randint: [1, 3]}")
    plan = load_spec(write(tmp_path, body + search(n=40)))
    assert {t.model.epochs for t in plan.trials} == {1, 2, 3}


def test_asha_search_ranks_on_the_objective_per_epoch(tmp_path):
    plan = load_spec(write(tmp_path, DRAEM + search("asha", extra=", grace_period: 2")))
    asha = plan.spec.asha
    assert (asha.metric, asha.mode, asha.grace_period) == ("val_synth_auroc", "max", 2)
    assert plan.search_meta().method == "asha" and len(plan.trials) == 12


def test_a_test_label_objective_runs_only_as_an_oracle(tmp_path):
    plan = load_spec(write(tmp_path, DRAEM + search(extra=", objective: 'oracle:image_auroc'")))
    meta = plan.search_meta()
    assert (meta.objective, meta.oracle, meta.mode) == ("image_auroc", True, "max")


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            DRAEM + search(extra=", objective: image_auroc"),
            r"search\.objective: 'image_auroc' is computed from test labels: selecting on it tunes on the test set; "
            r"use one of val_synth_auroc.*or name it oracle:image_auroc",
        ),
        (DRAEM + search(extra=", objective: val_auroc"), r"search\.objective: 'val_auroc' is not a figure of merit"),
        (
            DRAEM + search(extra=", objective: 'oracle:val_synth_auroc'"),
            r"'val_synth_auroc' needs no test labels; drop the oracle: prefix",
        ),
        (DRAEM + search("bohb"), r"search\.method: bohb is not offered .*use asha"),
        (DRAEM + search("hyperband"), r"search\.method: Input should be 'grid', 'random', 'asha' or 'optuna'"),
        (DRAEM + "search: {method: random}\n", r"search\.num_samples: required by search\.method random"),
        (DRAEM + "search: {num_samples: 4}\n", r"models\.draem\.space: set, but search\.method is grid"),
        (
            "models: {patchcore: {trial: {model: {pretrained: false}}},"
            " draem: {space: {model.lr: {uniform: [0.001, 0.01]}}}}\n" + search(),
            r"search\.space: model 'patchcore' has no searched parameter",
        ),
        (
            "models: {patchcore: {trial: {model: {pretrained: false}}, space: {model.k: {randint: [1, 9]}}}}\n"
            + search("asha"),
            r"search\.method: asha ranks trials by per-epoch 'val_synth_auroc'; model 'patchcore' reports no "
            r"per-epoch metric \(it fits in one epoch\)",
        ),
        (
            DRAEM + search("asha") + "scheduler: asha\n",
            r"search\.method: asha is the scheduler already; drop scheduler:",
        ),
    ],
)
def test_bad_search_inputs_are_refused_before_launch(tmp_path, body, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec(write(tmp_path, body))


LR = "loguniform: [1.0e-5, 1.0e-2]"
BAD_SPACES = [  # (the text of the DRAEM spec replaced, by what, the error)
    (LR, "loguniform: [1.0e-2, 1.0e-5]", r"model\.lr: loguniform: low 0\.01 must be below high 1e-05"),
    (LR, "loguniform: [0, 1.0e-2]", r"model\.lr: loguniform: low 0\.0 must be > 0"),
    (LR, "uniform: [1, 1]", r"model\.lr: uniform: low 1\.0 must be below high 1\.0"),
    (LR, "uniform: [0, 1], choice: [1]", r"model\.lr: expected exactly one of choice, uniform, loguniform, randint"),
    ("model.lr:", "model.lrr:", r"model\.lrr: unknown config path \('lrr' not in model\)"),
    ("choice: [8, 16, 32]", "choice: [8, -1]", r"model draem, searched value model\.base_width=-1: model\.base_width"),
    (
        "[A, C]}",
        "[A, C], model.base_width: [8, 16]}",
        r"model\.base_width: also a grid axis \(axes\.model\.base_width\)",
    ),
]


@pytest.mark.parametrize("old, new, expected", BAD_SPACES)
def test_bad_search_spaces_are_refused_before_launch(tmp_path, old, new, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec(write(tmp_path, DRAEM.replace(old, new) + search()))


def test_a_space_written_nested_or_through_set_names_dotted_paths(tmp_path):
    """`--set search.space.model.k=...` writes {model: {k: ...}}: read as the path model.k, like the YAML form."""
    body = DRAEM
    flat = load_spec(write(tmp_path, body + search()))
    nested = load_spec(
        write(tmp_path, body + search(), "nested.yaml"),
        ["models.draem.space.model.epochs={randint: [1, 3]}"],
    )
    assert nested.search_params() == ["model.lr", "model.base_width", "model.epochs"]
    assert {t.model.epochs for t in nested.trials} <= {1, 2, 3} and flat.search_params()[:2] == [
        "model.lr",
        "model.base_width",
    ]
    with pytest.raises(SpecError, match=r"models\.draem\.space\.model\.epochs: randint: low 3 must be below high 1"):
        load_spec(write(tmp_path, body + search(), "bad.yaml"), ["models.draem.space.model.epochs={randint: [3, 1]}"])


GRID_ASHA = """
models:
  draem:
    trial: {data: {normalization: none}, model: {epochs: 3}}
    axes: {model.lr: [0.0001, 0.001, 0.01]}
axes: {data.domain: [A, C]}
scheduler: {metric: val_synth_auroc, mode: max, grace_period: 1}
"""


@pytest.mark.parametrize("body", [DRAEM + search("asha", 4, ", grace_period: 1"), GRID_ASHA], ids=["search", "grid"])
def test_asha_stops_a_trial_only_against_its_own_grid_cell(tmp_path, body):
    """One domain's objective runs lower: one ASHA for the sweep would stop its trials on the other domain's cutoffs
    and leave it no trial run to the end. A search's trials are compared within their grid cell, a grid's within the
    trials of one model, data and seed (sweeps.cell_asha)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from sweeps.cell_asha import CellASHA
    from sweeps.runner import SweepRun

    plan = load_spec(write(tmp_path, body))
    by_domain = {d: [t for t in plan.trials if t.data.domain == d] for d in ("domain_A", "domain_C")}
    scheduler = SweepRun.scheduler(SimpleNamespace(spec=plan.spec, plan=plan), plan.trials)
    assert isinstance(scheduler, CellASHA)
    args = dict(time_attr="training_iteration", metric="val_synth_auroc", mode="max", max_t=4, grace_period=1)

    def first_rung(scheduler, trials, rewards) -> list[str]:
        actions = []
        for i, (cfg, reward) in enumerate(zip(trials, rewards, strict=True)):
            trial = SimpleNamespace(trial_id=f"{cfg.trial_id}-{i}", config={"trial": cfg.model_dump(mode="json")})
            scheduler.on_trial_add(None, trial)
            actions.append(scheduler.on_trial_result(None, trial, {"training_iteration": 1, "val_synth_auroc": reward}))
        return actions

    easy, hard = by_domain["domain_A"][:3], by_domain["domain_C"][:1]
    assert first_rung(ASHAScheduler(**args), easy + hard, [0.9, 0.8, 0.95, 0.5])[-1] == TrialScheduler.STOP
    actions = first_rung(scheduler, easy + hard, [0.9, 0.8, 0.95, 0.5])
    assert actions == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE, TrialScheduler.CONTINUE]
    assert len(scheduler.cells) == 2
    # a diverged trial's figure is None: Tune's ASHA would raise TypeError (ending the Tune run); here it is skipped
    diverged = SimpleNamespace(trial_id="diverged", config={"trial": easy[0].model_dump(mode="json")})
    scheduler.on_trial_add(None, diverged)
    assert scheduler.on_trial_result(None, diverged, {"training_iteration": 1, "val_synth_auroc": None}) == "CONTINUE"
    scheduler.on_trial_complete(None, diverged, {"training_iteration": 4, "val_synth_auroc": None})
