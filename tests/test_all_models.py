"""Every registered model runs one tiny trial (random init); missing weights fail precisely before any fit;
a few of the new models run together in one Ray sweep."""

import numpy as np
import pytest

from hdmap.config import ConfigError, load_trial_config
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
    cfg = load_trial_config(None, ["model.name=fastflow", "model.flow_steps=4", "model.pretrained=false"])
    assert cfg.model.flow_steps == 4 and cfg.model.hidden_ratio == 1.0  # anomalib's default
    with pytest.raises(ConfigError, match=r"model\.flow_stepz: unknown field; allowed here: .*flow_steps"):
        load_trial_config(None, ["model.name=fastflow", "model.flow_stepz=4"])
    with pytest.raises(ConfigError, match=r"model\.flow_steps: .*integer"):
        load_trial_config(None, ["model.name=fastflow", "model.flow_steps=many"])


# (model, overrides, input size, whether a tiny fit ran): each row measured by fitting a random-init trial with
# anomalib 2.7 on 11 images (issue 20), the failures being tracebacks deep in anomalib
_R18 = ["model.backbone=resnet18"]
MEASURED = [
    ("dfm", [*_R18, "model.layer=layer3"], [48, 48], False),  # 3 x 3 map, 4 x 4 pooling
    ("dfm", [*_R18, "model.layer=layer3"], [49, 49], True),
    ("supersimplenet", [*_R18, "model.layers=[layer2,layer3]"], [64, 64], False),  # Perlin scale 32 > 16 cells
    ("supersimplenet", [*_R18, "model.layers=[layer2,layer3]"], [65, 65], True),
    ("uninet", ["model.student_backbone=resnet50", "model.teacher_backbone=resnet50"], [48, 48], False),
    ("uninet", ["model.student_backbone=resnet50", "model.teacher_backbone=resnet50"], [32, 96], True),
    ("csflow", [], [192, 192], False),
    ("csflow", [], [128, 384], True),
    ("cflow", [*_R18, "model.layers=[layer2,layer3]"], [32, 32], False),  # 8 images x 2 x 2 < 64 fibers
    ("cflow", [*_R18, "model.layers=[layer2,layer3]"], [80, 80], True),
    ("fastflow", _R18, [40, 40], False),
    ("fastflow", _R18, [48, 48], True),
    ("reverse_distillation", _R18, [48, 48], False),
    ("reverse_distillation", _R18, [64, 64], True),
    ("fre", [*_R18, "model.layer=layer2"], [64, 64], False),  # input_dim 65536 != 128 x 4 x 4
    ("fre", [*_R18, "model.layer=layer2", "model.input_dim=2048"], [64, 64], True),
]


@pytest.mark.parametrize("model, extra, size, ran", MEASURED)
def test_input_size_rules_refuse_exactly_what_failed(model, extra, size, ran):
    """The config refuses the sizes that failed in anomalib, naming data.image_size, and takes the ones that ran."""
    overrides = [f"model.name={model}", "model.pretrained=false", f"data.image_size={size}", *extra]
    if ran:
        load_trial_config(None, overrides)
    else:
        with pytest.raises(ConfigError, match=f"data.image_size does not suit model {model}: "):
            load_trial_config(None, overrides)


def test_fit_set_rules():
    """Rules that need the fit set (`fit_problem`): cflow's last, partial batch needs its fibers too (48 and 64 px
    failed with 11 fit images: a last batch of 3); dfkde fits no KDE on fewer images than PCA components."""
    fit = np.zeros((11, 31, 95), np.float32)
    cflow = ["model.name=cflow", "model.pretrained=false", *_R18, "model.layers=[layer2,layer3]"]
    problems = {}
    for size in (48, 64, 80):
        cfg = load_trial_config(None, [*cflow, f"data.image_size={size}"])
        problems[size] = cfg.model.fit_problem(fit, cfg.data.model_input_size)
    assert problems[80] is None and "last training batch (3 of the 11 fit images" in problems[48] and problems[64]
    dfkde = load_trial_config(None, ["model.name=dfkde", "model.pretrained=false", *_R18])
    assert "model.n_pca_components=16 exceeds the 11 fit images" in dfkde.model.fit_problem(fit, (224, 224))
    assert dfkde.model.fit_problem(fit[:1].repeat(16, 0), (224, 224)) is None


def test_data_the_model_needs_is_its_default():
    """Where the general defaults could never run (224 px, ImageNet normalisation), the model's own are used."""
    for model in ("efficient_ad", "fre", "csflow"):
        assert load_trial_config(None, [f"model.name={model}"]).data.image_size == (256, 256)
    assert load_trial_config(None, ["model.name=efficient_ad"]).data.normalization == "none"
    with pytest.raises(ConfigError, match=r"data\.to_rgb=false does not suit model padim"):
        load_trial_config(None, ["model.name=padim", "data.to_rgb=false"])


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


def test_models_command_lists_every_model_with_fields_metric_and_weights(monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    import sweeps.cli
    from sweeps.cli import app

    monkeypatch.setattr(sweeps.cli, "console", Console(force_terminal=True, width=400))  # the table, as on a terminal
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert f"{len(MODELS)} models" in result.output and len(MODELS) >= 14
    for name in MODELS:
        assert name in result.output
    assert "flow_steps=8" in result.output and "train_loss" in result.output and "(no ASHA)" in result.output


def test_models_command_piped_prints_one_model_per_line():
    """`hdmap models | grep reverse_distillation` finds it: not a terminal (CliRunner), no table wrapping the names."""
    from typer.testing import CliRunner

    from sweeps.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["model", *MODELS]
    assert "flow_steps=8" in next(line for line in lines if line.startswith("fastflow\t"))
