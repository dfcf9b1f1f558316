"""search.method optuna: one TPE study per grid cell, all cells in one Tune run (sweeps.search.CellSearcher), each
cell re-seeded from its trials in the store (sweeps.cells). The searcher is driven here without Ray workers, fed
fake results; one slow test runs `hdmap sweep run` twice through Ray."""

from __future__ import annotations

import json
import math
import textwrap

import pyarrow as pa
import pytest

from hdmap.config import TrialConfig
from sweeps.cells import cell_histories
from sweeps.meta import SweepMeta
from sweeps.spec import SpecError, load_spec

SPEC = """
name: opt
data: {{root: {root}}}
trial:
  data: {{image_size: [64, 192]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2], coreset_ratio: 0.1}}
axes: {axes}
search: {{method: optuna, num_samples: {n}, seed: {seed}, space: {space}}}
max_concurrent: 1
output: {out}
tracking: {{wandb: {{mode: disabled}}}}
"""
K = "{model.k: {randint: [1, 5]}}"
K_AND_RATIO = "{model.k: {randint: [1, 9]}, model.coreset_ratio: {uniform: [0.05, 0.5]}}"


def plan_of(tmp_path, n=3, space=K, seed=0, extra="", name="spec.yaml", axes="{data.domain: [A, C]}"):
    path = tmp_path / name
    body = SPEC.format(root=tmp_path / "data", out=tmp_path / "out", n=n, seed=seed, space=space, axes=axes)
    path.write_text(body + textwrap.dedent(extra))
    return load_spec(path)


class RowStore:
    """The store as sweeps.cells reads it: result rows (one per trial here, as for one test domain)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def results(self, columns: list[str]) -> pa.Table:
        types = {c: pa.float64() if c.endswith("auroc") else pa.string() for c in columns}
        return pa.table({c: pa.array([r.get(c) for r in self.rows], types[c]) for c in columns})


def row(cell, status="ok", reward=None, **values) -> dict:
    """A stored trial of `cell` with its searched values set."""
    tree = cell.config.model_dump(mode="json")
    for path, value in values.items():
        section, field = path.split("__")
        tree[section][field] = value
    cfg = TrialConfig.model_validate(tree)
    return {
        "trial_id": cfg.trial_id,
        "status": status,
        "config_json": json.dumps(cfg.canonical(), sort_keys=True),
        "val_synth_auroc": reward,
    }


def searcher_of(plan, rows=(), retry_failed=False):
    from sweeps.search import CellSearcher

    histories = cell_histories(plan, RowStore(list(rows)))
    return CellSearcher(histories, plan.spec.search, retry_failed, launched=set())


def run_sequentially(searcher, reward=lambda cfg: 1 / cfg.model.k) -> list[TrialConfig]:
    """Suggest, complete, repeat (max_concurrent 1) until the searcher is finished; the trial configs in order."""
    from ray.tune.search import Searcher

    ran = []
    for i in range(1000):
        suggestion = searcher.suggest(f"tune_{i}")
        if suggestion == Searcher.FINISHED:
            return ran
        cfg = TrialConfig.model_validate(suggestion["trial"])
        ran.append(cfg)
        searcher.on_trial_complete(f"tune_{i}", {"val_synth_auroc": reward(cfg)})
    raise AssertionError("the searcher never finished")


def test_the_plan_holds_cells_not_trials(tmp_path):
    plan = plan_of(tmp_path, n=4)
    assert plan.trials == [] and len(plan.cells) == 2 and plan.n_trials == 8
    assert {c.config.data.domain for c in plan.cells} == {"domain_A", "domain_C"}
    assert plan.breakdown() == {"patchcore": 8} and plan.configs == [c.config for c in plan.cells]
    meta = SweepMeta.of_plan(plan, state="running")
    assert meta.trial_ids is None and meta.n_trials == 8 and meta.search.method == "optuna"
    small = plan_of(tmp_path, n=7, name="small.yaml")  # randint [1, 5] holds 5 configs: each runs once
    assert [c.budget for c in small.cells] == [5, 5] and small.n_trials == 10


def test_each_cell_draws_its_budget_in_turn_then_the_searcher_finishes(tmp_path):
    plan = plan_of(tmp_path, n=3)
    searcher = searcher_of(plan)
    ran = run_sequentially(searcher)
    assert [c.data.domain for c in ran] == ["domain_A", "domain_C"] * 3  # round robin over the cells
    for domain in ("domain_A", "domain_C"):
        ks = [c.model.k for c in ran if c.data.domain == domain]
        assert len(set(ks)) == 3 and all(1 <= k <= 5 for k in ks)  # distinct configs, in the space
    assert searcher.launched == {c.trial_id for c in ran}
    cell = plan.cells[0]
    assert all(
        c.model_dump(exclude={"model": {"k"}}) == cell.config.model_dump(exclude={"model": {"k"}})
        for c in ran
        if c.data.domain == "domain_A"
    )  # only the searched value differs from the cell's base


def test_a_result_reaches_its_own_cells_study_only(tmp_path):
    searcher = searcher_of(plan_of(tmp_path, n=3))
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_synth_auroc": 0.75})
    searcher.suggest("b")
    searcher.on_trial_complete("b", None, error=True)  # a failed trial: a sample without a reward
    studies = [cell.study._ot_study for cell in searcher.cells]
    assert [t.value for t in studies[0].trials] == [0.75] and first["trial"]["data"]["domain"] == "domain_A"
    assert [t.state.name for t in studies[1].trials] == ["FAIL"]


def test_stored_trials_reseed_their_cell_and_count_toward_its_samples(tmp_path):
    plan = plan_of(tmp_path, n=3)
    a, c = plan.cells
    other = plan_of(tmp_path, n=3, extra="seeds: [7]\n", name="other.yaml").cells[0]  # another sweep's cell
    rows = [
        row(a, reward=0.9, model__k=1),
        row(a, reward=0.8, model__k=2),
        row(a, status="error", model__k=3),
        row(a, reward=0.7, model__k=9),  # outside the space: neither counts nor informs
        row(other, reward=0.5, model__k=4),
    ]
    histories = cell_histories(plan, RowStore(rows))
    assert [len(h.trials) for h in histories] == [3, 0] and [h.left(False) for h in histories] == [0, 3]
    ran = run_sequentially(searcher_of(plan, rows))
    assert [r.data.domain for r in ran] == ["domain_C"] * 3  # cell A is done: nothing of it runs again

    grown = plan_of(tmp_path, n=4, name="grown.yaml")  # raising num_samples runs only the difference
    searcher = searcher_of(grown, rows)
    ran = run_sequentially(searcher)
    assert len([r for r in ran if r.data.domain == "domain_A"]) == 1 and len(ran) == 1 + 4
    assert next(r.model.k for r in ran if r.data.domain == "domain_A") in (4, 5)  # not a stored config
    stored = searcher.cells[0].study._ot_study.trials[:3]  # the study's first trials: the stored ones
    assert [(t.params["model.k"], t.state.name, t.value) for t in stored] == [
        (1, "COMPLETE", 0.9),
        (2, "COMPLETE", 0.8),
        (3, "FAIL", None),
    ]

    retried = run_sequentially(searcher_of(grown, rows, retry_failed=True))  # --retry-failed: the failure first
    assert [r.model.k for r in retried if r.data.domain == "domain_A"][0] == 3


def test_a_seed_gives_the_same_trials_with_sequential_completion(tmp_path):
    def trials(seed):
        plan = plan_of(tmp_path, n=12, space=K_AND_RATIO, seed=seed, name=f"seed{seed}.yaml")
        return [(c.trial_id, c.model.k, c.model.coreset_ratio) for c in run_sequentially(searcher_of(plan))]

    first = trials(0)
    assert first == trials(0) and first != trials(1)
    assert len({t for t, *_ in first}) == 24 and all(0.05 <= r <= 0.5 and not math.isnan(r) for *_, r in first)


def test_a_small_discrete_space_runs_each_config_once(tmp_path):
    ran = run_sequentially(searcher_of(plan_of(tmp_path, n=9, space="{model.k: {randint: [1, 3]}}")))
    assert sorted(c.model.k for c in ran if c.data.domain == "domain_A") == [1, 2, 3] and len(ran) == 6


@pytest.mark.parametrize(
    "space, extra, expected",
    [
        (K, "scheduler: asha\n", r"search\.method: optuna runs every trial to its end; drop scheduler:"),
        ("{data.domain: {choice: [A, B]}}", "", r"search\.space\.data\.domain: data\.domain='B': changes the data"),
        ("{model.k: {uniform: [1, 5]}}", "", r"searched value model\.k=\d\.\d+: model\.k"),
    ],
)
def test_what_an_optuna_cell_cannot_search_is_refused_up_front(tmp_path, space, extra, expected):
    with pytest.raises(SpecError, match=expected):
        plan_of(tmp_path, space=space, extra=extra, axes="{}")


def test_a_searched_value_the_model_settles_more_from_is_refused(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        f"name: w\ndata: {{root: {tmp_path}}}\ntrial: {{model: {{name: winclip, pretrained: false}}}}\n"
        "search: {method: optuna, num_samples: 2, space: {model.clip_model: {choice: [hdmap-tiny-clip, "
        "ViT-B-16-plus-240]}}}\n"
    )
    with pytest.raises(SpecError, match=r"model\.clip_model='hdmap-tiny-clip': also changes data\.image_size, which"):
        load_spec(tmp_path / "spec.yaml")


@pytest.mark.slow
def test_sweep_run_searches_each_cell_and_more_samples_run_only_the_difference(tmp_path):
    """Through the command line on a local Ray: 2 cells x 3 samples, then num_samples 4 runs 1 new trial per cell;
    the finished trials are not run again, sweep.json and the report count no trial as missing."""
    import pyarrow.parquet as pq
    import ray
    from typer.testing import CliRunner

    from sweeps.cli import app
    from sweeps.report.analysis import load
    from sweeps.store import ResultStore

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        SPEC.format(
            root=tmp_path / "data", out=tmp_path / "out", n=3, seed=0, space=K, axes="{data.domain: [A, C]}"
        ).replace("data: {root:", "data: {simulate: {n_train: 30, n_test: 20, domains: [A, C], seed: 0}, root:")
    )
    sweep = tmp_path / "out" / "opt"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        first = CliRunner().invoke(app, ["sweep", "run", str(spec), "--no-report"])
        before = {p.name: p.stat().st_mtime_ns for p in (sweep / "parts" / "results").glob("*.parquet")}
        more = ["sweep", "run", str(spec), "--no-report", "--set", "search.num_samples=4"]
        second = CliRunner().invoke(app, more)
    finally:
        ray.shutdown()
    assert first.exit_code == 0 and "finished: 6 ok, 0 failed" in first.output, first.output
    assert second.exit_code == 0 and "finished: 8 ok, 0 failed, 0 stopped early, 6 already done" in second.output, (
        second.output
    )
    after = {p.name: p.stat().st_mtime_ns for p in (sweep / "parts" / "results").glob("*.parquet")}
    assert len(before) == 6 and len(after) == 8 and all(after[name] == t for name, t in before.items())
    rows = pq.read_table(sweep / "results.parquet").to_pylist()
    for domain in ("domain_A", "domain_C"):
        ks = [r["model.k"] for r in rows if r["train_domain"] == domain]
        assert len(ks) == len(set(ks)) == 4, ks  # four distinct configs per cell
    assert all(r["val_synth_auroc"] is not None for r in rows)  # the objective the studies were told
    meta = json.loads((sweep / "sweep.json").read_text())
    assert (meta["state"], meta["n_trials"], meta["trial_ids"], meta["n_without_result"]) == ("complete", 8, None, 0)
    data = load(ResultStore(sweep))
    assert (data.n_trials_missing, data.n_trials_ok) == (0, 8)


def test_an_unbounded_search_runs_as_many_trials_at_once_as_fit(tmp_path):
    """No max_concurrent: the searcher is asked only for trials that can start (not Tune's dozen pending ones)."""
    from sweeps.runner import trial_slots

    plan = plan_of(tmp_path, extra="resources: {cpu: 2}\n")
    assert trial_slots(plan, plan.configs, {"CPU": 8}) == 4
    assert trial_slots(plan, plan.configs, {"CPU": 1}) == 1  # never 0: a cluster too small is check_resources' error
    gpu = plan_of(tmp_path, extra="resources: {cpu: 1, gpu: 0.5}\n", name="gpu.yaml")
    assert trial_slots(gpu, gpu.configs, {"CPU": 16, "GPU": 1}) == 2


def test_a_small_discrete_space_is_run_through_to_its_budget(tmp_path):
    """TPE converges and keeps suggesting the configs it ran: each repeat is answered with its known reward, and
    after RANDOM_AFTER repeats the next new config is drawn at random, so the cell still draws its whole budget
    (before, a converged study stopped the cell short)."""
    space = "{model.k: {randint: [1, 9]}, model.coreset_ratio: {choice: [0.05, 0.1, 0.2]}}"
    plan = plan_of(tmp_path, n=27, space=space, axes="{data.domain: [A]}")
    (cell,) = plan.cells
    assert cell.budget == 27
    ran = run_sequentially(searcher_of(plan), reward=lambda cfg: 1 / cfg.model.k)  # one clear optimum: k = 1
    assert len(ran) == 27 and len({c.trial_id for c in ran}) == 27
