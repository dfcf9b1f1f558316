"""Sweep specs: expansion, and every kind of mistake caught by `plan` before anything runs."""

import subprocess
import sys
import textwrap

import pytest

from sweeps.spec import SpecError, load_spec

BASE = """
name: t
data: {root: /tmp/none}
trial: {model: {backbone: resnet18, pretrained: false}}
"""


def write(tmp_path, body):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + textwrap.dedent(body))
    return path


def test_quickstart_expands():
    plan = load_spec("sweeps/examples/quickstart.yaml")
    assert len(plan.trials) == 16 and plan.breakdown() == {"patchcore": 8, "ca_patchcore": 4, "draem": 4}
    assert len({t.trial_id for t in plan.trials}) == 16
    assert plan.axes == ["data.domain", "model.coreset_ratio", "model.k", "model.gating", "model.lr"]
    assert all(t.data.root.startswith("/") for t in plan.trials)  # workers run elsewhere: roots are absolute


def test_grid_zip_seeds_and_per_model_resources(tmp_path):
    plan = load_spec(
        write(
            tmp_path,
            """
        axes:
          data.domain: [A, B]
          zip: [{model.layers: [[layer2], [layer3]], model.k: [1, 3]}]
        models:
          patchcore: {resources: {cpu: 2, gpu: 0.25}}
        seeds: [0, 1, 2]
    """,
        )
    )
    assert len(plan.trials) == 2 * 2 * 3
    assert {(tuple(t.model.layers), t.model.k) for t in plan.trials} == {(("layer2",), 1), (("layer3",), 3)}
    assert plan.resources_for("patchcore").gpu == 0.25 and plan.resources_for("draem").gpu == 0
    assert "seed" in plan.axes


@pytest.mark.parametrize(
    "body, expected",
    [
        ("models: {patchcor: {}}", r"spec\.yaml: models\.patchcor: unknown model; allowed: patchcore, draem"),
        (
            "axes: {model.kk: [1, 2]}",
            r"spec\.yaml: axes\.model\.kk: unknown config path .*allowed: name, batch_size, backbone",
        ),
        ("axes: {data.domian: [A]}", r"spec\.yaml: axes\.data\.domian: unknown config path .*allowed: root, domain"),
        (
            "axes: {model.k: [1, many]}",
            r"spec\.yaml: model patchcore, axis value model\.k='many': .*model\.k: .*integer",
        ),
        ("axes: {data.domain: [A, E]}", r"axis value data\.domain='E'.*expected one of A, B, C, D"),
        (
            "models: {patchcore: {}, draem: {}}\naxes: {model.k: [1, 3]}",
            r"spec\.yaml: axes\.model\.k: does not apply to model 'draem' .*put it under models\.patchcore\.axes",
        ),
        ("axes: {model.k: 3}", r"axes\.model\.k: expected a non-empty list"),
        (
            "scheduler: asha",
            r"scheduler: asha ranks trials by per-epoch 'val_loss'; model 'patchcore' reports no per-epoch",
        ),
        ("resources: {gpu: 1.5}", r"resources\.gpu: .*whole GPUs"),
        ("max_concurent: 2", r"spec\.yaml: max_concurent: Extra inputs are not permitted"),
    ],
)
def test_each_mistake_is_named(tmp_path, body, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec(write(tmp_path, body))


def test_plan_cli_fails_before_running(tmp_path):
    path = write(tmp_path, "axes: {model.kk: [1]}\nmodels: {patchcore: {}, nope: {}}")
    proc = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "sweep", "plan", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "models.nope: unknown model" in proc.stderr and "Traceback" not in proc.stderr


def test_spec_overrides(tmp_path):
    plan = load_spec("sweeps/examples/quickstart.yaml", ["seeds=[0, 1]", "name=other"])
    assert len(plan.trials) == 32 and plan.spec.name == "other"
    # an axis is named by a dotted config path: `--set` on it replaces that one axis
    plan = load_spec("sweeps/examples/quickstart.yaml", ["axes.data.domain=[C]", "models.patchcore.axes.model.k=[3]"])
    assert len(plan.trials) == 6 and plan.axis_values["data.domain"] == ["C"]
    assert {t.model.k for t in plan.trials if t.model.name == "patchcore"} == {3}


def test_domain_all_is_an_axis_value(tmp_path):
    """`data.domain: [all, C]`: one trial fits every domain (tested on all four), the other C alone."""
    plan = load_spec(write(tmp_path, "axes: {data.domain: [all, C]}\nseeds: [0, 1]"))
    assert [(t.data.domain, t.seed) for t in plan.trials] == [("all", 0), ("all", 1), ("domain_C", 0), ("domain_C", 1)]
    assert plan.trials[0].data.resolved_test_domains() == ["domain_A", "domain_B", "domain_C", "domain_D"]
    assert plan.trials[2].data.resolved_test_domains() == ["domain_C"]
    with pytest.raises(SpecError, match=r"data\.domain='every'.*or all"):
        load_spec(write(tmp_path, "axes: {data.domain: [every]}"))


def test_winclip_specs_plan():
    prompts = load_spec("sweeps/examples/winclip_prompts.yaml")
    assert len(prompts.trials) == 64 and prompts.axes == ["data.domain", "model.class_name", "model.k_shot"]
    assert {t.data.train_shots for t in prompts.trials} == {0, 1, 2, 4}  # k_shot is the fit set
    ca = load_spec("sweeps/examples/ca_winclip.yaml")
    assert len(ca.trials) == 4 * 4 * 3 * 3 and set(ca.axis_values["model.gating"]) == {
        "mixed",
        "oracle",
        "p90",
        "clip_topk",
    }
    assert ca.axes == ["data.domain", "model.gating", "model.refs_per_bank", "seed"]
    for t in prompts.trials + ca.trials:  # the researcher's input: 240 x 240 nearest, CLIP mean/std
        assert (t.data.image_size, t.data.resize, t.data.normalization) == ((240, 240), "nearest", "clip")
