"""Trial config: defaults, overrides, and errors that name the field path and the allowed values."""

import collections.abc
import inspect
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union

import pytest

from hdmap.config import ConfigError, load_trial_config
from hdmap.models.configs.anomalib import ANOMALIB_COMPONENTS, ANOMALIB_MODELS
from hdmap.models.configs.anomalib_constructors import CONSTRUCTORS, PADIM_N_FEATURES, Constructor
from hdmap.models.configs.backbones import KNOWN_BACKBONES, timm_backbone_layers, timm_native_input_size


def test_defaults_and_overrides():
    cfg = load_trial_config(None, ["data.domain=A", "model.k=3", "data.image_size=128", "model.layers=[layer3]"])
    assert cfg.data.domain == "domain_A" and cfg.model.name == "patchcore" and cfg.model.k == 3
    assert cfg.data.image_size == (128, 128) and cfg.model.layers == ["layer3"]
    assert load_trial_config(None, ["model.name=draem"]).model.epochs >= 1


def test_trial_id_is_config_hash_ignoring_runtime():
    a = load_trial_config(None, ["model.k=3"])
    assert a.trial_id == load_trial_config(None, ["model.k=3", "runtime.accelerator=cpu"]).trial_id
    assert a.trial_id != load_trial_config(None, ["model.k=4"]).trial_id
    assert a.trial_id != load_trial_config(None, ["model.k=3", "seed=1"]).trial_id


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.foo=1", r"model\.foo: unknown field; allowed here: name, batch_size, backbone, layers, .*k"),
        ("model.name=nope", r"model\.name: unknown model 'nope'; allowed: patchcore, draem"),
        ("data.resize=cubic", r"data\.resize: .*'nearest', 'bilinear', 'bicubic' or 'aspect_pad'"),
        ("data.domain=E", r"data\.domain: .*expected one of A, B, C, D"),
        ("model.k=many", r"model\.k: .*integer"),
        ("bogus.x=1", r"bogus: unknown field; allowed here: data, model, eval, seed, runtime"),
        ("model.epochs=3", r"model\.epochs: unknown field"),  # a draem field on the default patchcore
    ],
)
def test_errors_name_path_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_trial_config(None, [override])


def test_yaml_file_and_errors(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("data:\n  domain: B\nmodel:\n  name: draem\n  epochs: 2\nseed: 7\n")
    cfg = load_trial_config(path, ["model.lr=0.001"])
    assert (cfg.data.domain, cfg.model.name, cfg.model.epochs, cfg.model.lr, cfg.seed) == (
        "domain_B",
        "draem",
        2,
        0.001,
        7,
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_trial_config(tmp_path / "missing.yaml")
    path.write_text("model:\n  name: draem\n  dtd_dir: /no/such/dir\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: model\.dtd_dir: .*never downloaded"):
        load_trial_config(path)


def test_model_native_input_and_shots_where_the_config_leaves_them_open():
    """A model's `data_defaults` fill only unset data fields; a few-shot model's shots are data.train_shots."""
    cfg = load_trial_config(None, ["model.name=winclip", "model.k_shot=2"])
    assert (cfg.data.image_size, cfg.data.resize, cfg.data.normalization) == ((240, 240), "nearest", "clip")
    assert cfg.data.train_shots == 2
    own = load_trial_config(None, ["model.name=winclip", "data.resize=bilinear", "data.image_size=96"])
    assert (own.data.image_size, own.data.resize, own.data.train_shots) == ((96, 96), "bilinear", 0)
    assert (
        load_trial_config(None, ["model.name=winclip", "model.k_shot=2", "data.train_shots=2"]).trial_id == cfg.trial_id
    )
    with pytest.raises(ConfigError, match=r"data\.train_shots=3 contradicts model\.k_shot=2"):
        load_trial_config(None, ["model.name=winclip", "model.k_shot=2", "data.train_shots=3"])
    with pytest.raises(ConfigError, match=r"data\.train_shots=0 leaves model patchcore nothing to fit on"):
        load_trial_config(None, ["data.train_shots=0"])
    # data.per_image_norm and train_shots 0 left existing ids as they were (this one predates them)
    assert load_trial_config(None, []).trial_id == "7a06c2fe93c3"
    assert load_trial_config(None, ["data.per_image_norm=minmax"]).trial_id != "7a06c2fe93c3"


@pytest.mark.parametrize("backbone", sorted(KNOWN_BACKBONES))
def test_known_backbones_are_what_timm_says(backbone):
    """Configs validate these backbones without timm: the table must be timm's own answer."""
    size, layers = KNOWN_BACKBONES[backbone]
    assert timm_native_input_size(backbone) == size
    assert timm_backbone_layers(backbone) == layers


def _field_type(annotation: Any) -> Any | None:
    """A constructor annotation as a config type: Sequence -> list, Path -> str, an Enum -> a Literal of its values;
    None if YAML cannot express it."""
    origin = typing.get_origin(annotation)
    if annotation is Path:
        return str
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return Literal[tuple(member.value for member in annotation)]
    if annotation in (int, float, str, bool, type(None), Any):
        return annotation
    if origin in (Union, types.UnionType):
        parts = [_field_type(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else Union[tuple(dict.fromkeys(parts))]
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(annotation) or (Any,)
        inner = _field_type(item)
        return None if inner is None else list[inner]
    if origin is tuple:
        parts = [_field_type(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else tuple[tuple(parts)]
    return annotation if origin is Literal else None


def _read_constructor(cls: type) -> Constructor:
    """What `CONSTRUCTORS` states, read from the anomalib class's signature."""
    signature, hints = inspect.signature(cls.__init__), typing.get_type_hints(cls.__init__)
    fields = {}
    for arg, param in signature.parameters.items():
        skipped = ("self", "precision", "pre_trained", "name", "epochs", "batch_size", *ANOMALIB_COMPONENTS)
        if arg in skipped or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = _field_type(hints.get(arg, Any))
        if annotation is None:
            continue
        default = param.default
        if isinstance(default, tuple) and typing.get_origin(annotation) is list:
            default = list(default)
        fields[arg] = (annotation, default.value if isinstance(default, Enum) else default)
    return Constructor("pre_trained" in signature.parameters, fields)


@pytest.mark.parametrize("name", sorted(ANOMALIB_MODELS))
def test_anomalib_constructors_are_what_anomalib_says(name):
    """The adapted configs are built without anomalib: the table must be its constructors' own signature."""
    from hdmap.models.anomalib_adapter import anomalib_class

    assert _read_constructor(anomalib_class(ANOMALIB_MODELS[name])) == CONSTRUCTORS[name]


def test_padim_feature_defaults_are_anomalibs():
    from anomalib.models.image.padim.torch_model import _N_FEATURES_DEFAULTS

    assert PADIM_N_FEATURES == _N_FEATURES_DEFAULTS
