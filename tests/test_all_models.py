"""Every registered model runs one tiny trial (random init); missing weights fail precisely before any fit;
a few of the new models run together in one Ray sweep."""

import numpy as np
import pytest

from hdmap.config import load_trial_config
from hdmap.data.simulate import simulate
from hdmap.models.backbones import WeightsNotFoundError
from hdmap.models.registry import MODELS
from hdmap.trial import run_trial
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Domain C only, 8 train and 4 + 4 test images: one trial per model stays a few seconds."""
    root = tmp_path_factory.mktemp("hdmap-tiny") / "8_tiff_sim"
    simulate(root, n_train=8, n_test=4, domains=["C"], seed=0)
    return root


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    """A stand-in ImageNette folder (ImageFolder layout) for efficient_ad's penalty loss, written by the test."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenette")
    (root / "n01440764").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "n01440764" / f"{i}.png")
    return root


def overrides_for(root, model, imagenette) -> list[str]:
    return tiny_overrides(root, model) + ([f"model.imagenet_dir={imagenette}"] if model == "efficient_ad" else [])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_registered_model_runs_a_tiny_trial(tiny_root, imagenette, model):
    cfg = load_trial_config(None, overrides_for(tiny_root, model, imagenette))
    result = run_trial(cfg)
    (row,) = result.rows
    assert row["status"] == "ok" and row["model"] == model and row["n_test"] == 8
    assert 0.0 <= row["image_auroc"] <= 1.0 and row["threshold"] is not None
    assert result.scores.num_rows == 8 and np.isfinite(result.scores["score"].to_numpy()).all()
    expected = "random-init (pretrained: false)" if type(cfg.model).needs_pretrained_weights else None
    assert row["pretrained_weights"] == expected
    if "gate" in cfg.model.outputs():
        assert row["gating_accuracy"] is not None


def test_config_fields_come_from_the_anomalib_constructor():
    from hdmap.config import ConfigError

    cfg = load_trial_config(None, ["model.name=fastflow", "model.flow_steps=4", "model.pretrained=false"])
    assert cfg.model.flow_steps == 4 and cfg.model.hidden_ratio == 1.0  # anomalib's default
    with pytest.raises(ConfigError, match=r"model\.flow_stepz: unknown field; allowed here: .*flow_steps"):
        load_trial_config(None, ["model.name=fastflow", "model.flow_stepz=4"])
    with pytest.raises(ConfigError, match=r"model\.flow_steps: .*integer"):
        load_trial_config(None, ["model.name=fastflow", "model.flow_steps=many"])


@pytest.mark.parametrize(
    "model, looked",
    [
        ("padim", "HF cache"),
        ("cfa", "torch hub cache"),
        ("efficient_ad", "pretrained_teacher_small.pth"),
        ("dinomaly", "vit_small_patch14_reg4_dinov2"),
    ],
)
def test_missing_weights_fail_precisely_before_any_fit(tiny_root, imagenette, tmp_path, monkeypatch, model, looked):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # anomalib's pre_trained dir
    fits = []
    monkeypatch.setattr("lightning.Trainer.fit", lambda *a, **k: fits.append(1))
    small = ["model.backbone=resnet18"] if model == "padim" else []
    cfg = load_trial_config(None, overrides_for(tiny_root, model, imagenette) + small + ["model.pretrained=true"])
    with pytest.raises(WeightsNotFoundError) as err:
        run_trial(cfg)
    text = str(err.value)
    assert model in text and looked in text and "model.weights=" in text and "pretrained=false" in text
    assert str(tmp_path) in text and not fits  # where it looked; raised before any fitting


def test_asha_refused_for_a_model_without_per_epoch_metric(tmp_path):
    from sweeps.spec import SpecError, expand

    tree = {
        "name": "a",
        "data": {"root": str(tmp_path)},
        "models": {"padim": {}, "fastflow": {}},
        "scheduler": {"metric": "train_loss"},
    }
    with pytest.raises(SpecError, match="model 'padim' reports no per-epoch metric"):
        expand(tree)
    tree["models"] = {"fastflow": {}, "cflow": {}}
    assert len(expand(tree).trials) == 2


@pytest.mark.slow
def test_mixed_model_sweep_through_ray(tmp_path):
    import ray
    import yaml

    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    root = tmp_path / "data"
    spec = {
        "name": "mixed",
        "output": str(tmp_path / "out"),
        "max_failures": 0,
        "data": {"root": str(root), "simulate": {"n_train": 12, "n_test": 8, "domains": ["C"], "seed": 0}},
        "trial": {"data": {"domain": "C"}},
        "models": {name: {"trial": _trial_tree(name)} for name in MIXED},
        "tracking": {"wandb": {"mode": "disabled"}},
    }
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        outcome = run_sweep(load_spec(path), live=False)
    finally:
        ray.shutdown()
    assert outcome.ok == len(MIXED) and not outcome.failed, outcome.failed


MIXED = ("padim", "fastflow", "cutpaste_clf", "draem_cutpaste", "winclip", "ca_winclip", "dinomaly", "sev_dinomaly")


def _trial_tree(model: str) -> dict:
    """The tiny --set overrides of `model` as a spec's per-model trial tree."""
    from hdmap.config import apply_overrides

    tree = apply_overrides({}, [o for o in tiny_overrides("unused", model) if not o.startswith("data.root")])
    tree["data"].pop("domain", None)
    return tree


def test_models_command_lists_every_model_with_fields_metric_and_weights():
    from typer.testing import CliRunner

    from sweeps.cli import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"{len(MODELS)} models" in result.output and len(MODELS) >= 14
    for name in MODELS:
        assert name in result.output
    assert "flow_steps=8" in result.output and "train_loss" in result.output and "(no ASHA)" in result.output
