"""The configs of the anomalib image models adapted as trials (the adapter: hdmap.models.anomalib_adapter).

For each entry of `ANOMALIB_MODELS` the config class is derived from the anomalib constructor's arguments
(`CONSTRUCTORS`: typed fields, anomalib's defaults unless the table says otherwise; unknown keys rejected like every
config), plus the training fields every adapted model shares (`epochs`, `max_steps`, `gradient_clip_val` defaulting to
the model's `trainer_arguments`; `optimizer`, `optimizer_lr` overriding its `configure_optimizers`) and, where a
backbone is pretrained, `pretrained`/`weights`. Nothing here imports anomalib (a rule that needs it imports it when it
runs). The generated classes (`PadimConfig`, ...) are module attributes, so configs pickle by name (Ray).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, create_model, model_validator

from hdmap.models.configs.anomalib_constructors import CONSTRUCTORS, PADIM_N_FEATURES
from hdmap.models.configs.backbones import (
    backbone_layers,
    backbone_strides,
    check_layers,
    pretrained_label,
    stride_problem,
)
from hdmap.models.configs.base import ModelConfig

if TYPE_CHECKING:
    import numpy as np

ANOMALIB_COMPONENTS = ("pre_processor", "post_processor", "evaluator", "visualizer")  # the adapter turns them off


@dataclass(frozen=True)
class AnomalibSpec:
    """One adapted model: where its Lightning class lives, what anomalib leaves to the caller, and what its code
    accepts (read from anomalib 2.7's constructors and torch models), so a config it cannot run fails validation
    (`hdmap trial`, `sweep plan`), never a trial."""

    cls: str  # "module:Class" under anomalib.models.image
    epochs: int = 10  # if trainer_arguments fix none; researcher's where known: docs/research-facts.md#hyperparameters
    per_epoch_metric: str | None = "train_loss"  # logged on_epoch by its training_step; None = no ASHA
    batch_size: int = 8
    pretrained: bool = False  # a pretrained backbone inside, even without a `pre_trained` argument
    uses_validation: bool = False
    # constructor field -> pydantic Field constraints (ge, gt, ...) or a tuple of the values its code accepts
    bounds: dict[str, dict | tuple] = field(default_factory=dict)
    # backbone field -> the names its code builds; None: any timm model (with `layers` checked against it)
    backbones: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    layers: str | None = None  # the field naming the timm backbone's feature layer(s): `layers`, or `layer` (one)
    check: Callable[[Any], str | None] | None = None  # a rule across fields: why the config cannot run, or None
    size_rule: Callable[[Any, tuple[int, int]], str | None] | None = None  # why (H, W) inputs cannot run, or None
    fit_rule: Callable[[Any, int, tuple[int, int]], str | None] | None = None  # (cfg, fit images, size) -> why not
    data: dict[str, tuple[Any, str]] = field(default_factory=dict)  # data fields it needs (data_requirements)
    data_defaults: dict[str, Any] = field(default_factory=dict)  # its native input where the config leaves it unset


def _layer_names(cfg) -> list[str]:
    value = getattr(cfg, ANOMALIB_MODELS[cfg.name].layers)
    return [value] if isinstance(value, str) else list(value)


def _cells(cfg, side: int, stride: int) -> int:
    """Feature-map cells along a side of `side` px at `stride`: CNNs pad (ceil), ViT patch embeddings do not."""
    return side // stride if "vit" in cfg.backbone.lower() else -(-side // stride)


def _multiple_of(n: int, why: str) -> Callable:
    def rule(cfg, size: tuple[int, int]) -> str | None:
        bad = any(side % n for side in size)
        return f"{why}: each side a multiple of {n} (e.g. [{n}, {3 * n}]), got {list(size)}" if bad else None

    return rule


def _padim_features(cfg) -> str | None:
    """PadimModel: n_features (None: its per-backbone default) in 1..the channels of the chosen layers."""
    layers = backbone_layers(cfg.backbone)
    total = sum(layers[layer][1] for layer in cfg.layers)
    n = cfg.n_features or PADIM_N_FEATURES.get(cfg.backbone)
    if n is None:
        return (
            f"model.n_features: anomalib has no default for backbone {cfg.backbone!r} (only for "
            f"{', '.join(PADIM_N_FEATURES)}): set it to 1..{total} (the channels of {', '.join(cfg.layers)})"
        )
    if n > total:
        default = f" (anomalib's default for {cfg.backbone})" if cfg.n_features is None else ""
        return (
            f"model.n_features={n}{default} exceeds the {total} channels of layers {', '.join(cfg.layers)}: "
            f"use 1..{total}"
        )
    return None


def _pooled(cfg, size: tuple[int, int]) -> tuple[int, list[int], str | None]:
    """dfm / fre: (channels, cells per side after `pooling_kernel_size`, why the map is too small or None)."""
    stride, channels = backbone_layers(cfg.backbone)[cfg.layer]
    cells, k = [_cells(cfg, side, stride) for side in size], cfg.pooling_kernel_size
    if k > 1 and min(cells) < k:
        why = (
            f"{cfg.layer} of {cfg.backbone} (stride {stride}) gives a {cells[0]} x {cells[1]} feature map, too "
            f"small for model.pooling_kernel_size={k}: each side needs >= {stride * (k - 1) + 1} px, got {list(size)}"
        )
        return channels, cells, why
    return channels, [c // k for c in cells] if k > 1 else cells, None


def _dfm_size(cfg, size: tuple[int, int]) -> str | None:
    return _pooled(cfg, size)[2]


def _fre_size(cfg, size: tuple[int, int]) -> str | None:
    """FRE's tied autoencoder takes exactly `input_dim` = channels x pooled cells of its layer."""
    channels, cells, problem = _pooled(cfg, size)
    dim = channels * cells[0] * cells[1]
    if problem or dim == cfg.input_dim:
        return problem
    return (
        f"model.input_dim={cfg.input_dim} must equal the pooled {cfg.layer} features at {list(size)} "
        f"({channels} x {cells[0]} x {cells[1]} = {dim}): set model.input_dim={dim}"
    )


def _cflow_problem(cfg, images: int, size: tuple[int, int], batch: str, fix: str) -> str | None:
    """CFLOW trains on >= fiber_batch_size feature vectors of every layer per batch, else 'not enough fibers'."""
    strides = backbone_strides(cfg.backbone)
    counts = {
        layer: _cells(cfg, size[0], strides[layer]) * _cells(cfg, size[1], strides[layer]) for layer in cfg.layers
    }
    layer = min(counts, key=counts.get)
    if images * counts[layer] >= cfg.fiber_batch_size:
        return None
    return (
        f"{batch} gives {images * counts[layer]} feature vectors at {layer}, fewer than "
        f"model.fiber_batch_size={cfg.fiber_batch_size}: {fix}"
    )


def _cflow_size(cfg, size: tuple[int, int]) -> str | None:
    fix = "use a larger image, a larger model.batch_size or a smaller model.fiber_batch_size"
    return _cflow_problem(cfg, cfg.batch_size, size, f"a batch of model.batch_size={cfg.batch_size}", fix)


def _cflow_fit(cfg, n_fit: int, size: tuple[int, int]) -> str | None:
    """The last training batch (n_fit % batch_size images) must hold enough fibers too."""
    smallest = n_fit % cfg.batch_size or cfg.batch_size
    batch = f"the last training batch ({smallest} of the {n_fit} fit images, model.batch_size={cfg.batch_size})"
    fix = f"use a smaller model.fiber_batch_size, a model.batch_size that divides {n_fit}, or a larger image"
    return _cflow_problem(cfg, smallest, size, batch, fix)


def _dfkde_fit(cfg, n_fit: int, size: tuple[int, int]) -> str | None:
    """KDEClassifier.fit makes no model from fewer images than PCA components, and every score then fails."""
    if n_fit >= cfg.n_pca_components:
        return None
    return f"model.n_pca_components={cfg.n_pca_components} exceeds the {n_fit} fit images: use at most {n_fit}"


def _supersimplenet_size(cfg, size: tuple[int, int]) -> str | None:
    """Its Perlin masks are drawn at the feature map's next power of 2 with up to 32 cells per side."""
    stride = min(backbone_strides(cfg.backbone)[layer] for layer in cfg.layers)
    cells = [2 * _cells(cfg, side, stride) for side in size]  # the finest layer, upscaled x2
    if min(cells) > 16:
        return None
    return (
        f"its Perlin masks need a feature map of > 16 cells per side (the finest layer, stride {stride}, upscaled "
        f"x2: {cells[0]} x {cells[1]}): each side >= {8 * stride + 1} px, got {list(size)}"
    )


_FASTFLOW_VITS = {"cait_m48_448": 448, "deit_base_distilled_patch16_384": 384}


def _fastflow_size(cfg, size: tuple[int, int]) -> str | None:
    """FastflowModel sizes its LayerNorms int(side / stride) for layer1-3 (CNNs), or takes a ViT's fixed input."""
    fixed = _FASTFLOW_VITS.get(cfg.backbone)
    if fixed is None:
        return _multiple_of(16, "its LayerNorms are sized for layer1-3 (strides 4, 8, 16)")(cfg, size)
    if tuple(size) != (fixed, fixed):
        return f"backbone {cfg.backbone} takes exactly [{fixed}, {fixed}] px, got {list(size)}"
    return None


def _at_least(n: int, why: str) -> Callable:
    def rule(cfg, size: tuple[int, int]) -> str | None:
        return f"{why}: each side needs >= {n} px, got {list(size)}" if min(size) < n else None

    return rule


_RESNET_DECODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d")
_RESNET_DECODERS += ("resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")  # anomalib's get_decoder
_BOTTLENECK_RESNETS = _RESNET_DECODERS[2:]  # UniNet's attention bottleneck is wired to their widths
_POSITIVE, _NON_NEGATIVE = {"gt": 0}, {"ge": 0}
_AT_LEAST_1 = {"ge": 1}
_ONE_PASS = {"epochs": 1, "per_epoch_metric": None, "backbones": {"backbone": None}}  # fit = one feature pass

ANOMALIB_MODELS: dict[str, AnomalibSpec] = {
    "padim": AnomalibSpec(
        "padim.lightning_model:Padim",
        **_ONE_PASS,
        bounds={"n_features": _AT_LEAST_1},
        layers="layers",
        check=_padim_features,
    ),
    "dfm": AnomalibSpec(
        "dfm.lightning_model:Dfm",
        **_ONE_PASS,
        # score_type "nll" is refused: anomalib 2.7.0's GaussianModel.fit calls torch.mean(..., device=...), a
        # TypeError in every torch, so each such trial would fail after its feature pass
        bounds={"pooling_kernel_size": _AT_LEAST_1, "pca_level": _POSITIVE, "score_type": ("fre",)},
        layers="layer",
        size_rule=_dfm_size,
    ),
    "dfkde": AnomalibSpec(
        "dfkde.lightning_model:Dfkde",
        **_ONE_PASS,
        bounds={"n_pca_components": _AT_LEAST_1, "max_training_points": _AT_LEAST_1},
        layers="layers",
        fit_rule=_dfkde_fit,
    ),
    "cflow": AnomalibSpec(
        "cflow.lightning_model:Cflow",
        bounds={
            "fiber_batch_size": _AT_LEAST_1,
            "condition_vector": {"ge": 4, "multiple_of": 4},  # sin/cos positional encoding: 4 per position
            "coupling_blocks": _AT_LEAST_1,
            "clamp_alpha": _POSITIVE,
            "lr": _POSITIVE,
        },
        backbones={"backbone": None},
        layers="layers",
        size_rule=_cflow_size,
        fit_rule=_cflow_fit,
    ),
    "fastflow": AnomalibSpec(
        "fastflow.lightning_model:Fastflow",
        batch_size=64,
        bounds={"flow_steps": _AT_LEAST_1, "hidden_ratio": _POSITIVE},
        backbones={"backbone": (*_FASTFLOW_VITS, "resnet18", "wide_resnet50_2")},
        size_rule=_fastflow_size,
    ),
    "reverse_distillation": AnomalibSpec(
        "reverse_distillation.lightning_model:ReverseDistillation",
        epochs=200,
        batch_size=16,
        backbones={"backbone": _RESNET_DECODERS},
        layers="layers",
        size_rule=_multiple_of(32, "its decoder doubles the encoder's stride-32 map back up to layer1"),
    ),
    "stfpm": AnomalibSpec(
        "stfpm.lightning_model:Stfpm", pretrained=True, backbones={"backbone": None}, layers="layers"
    ),
    "ganomaly": AnomalibSpec(
        "ganomaly.lightning_model:Ganomaly",
        epochs=150,
        per_epoch_metric="generator_loss",
        batch_size=32,  # its constructor's batch_size is ours
        bounds={
            "n_features": _AT_LEAST_1,
            "latent_vec_size": _AT_LEAST_1,
            "extra_layers": _NON_NEGATIVE,
            **dict.fromkeys(("wadv", "wcon", "wenc"), _NON_NEGATIVE),
            "lr": _POSITIVE,
            **dict.fromkeys(("beta1", "beta2"), {"ge": 0, "lt": 1}),
        },
    ),
    "supersimplenet": AnomalibSpec(
        "supersimplenet.lightning_model:Supersimplenet",
        pretrained=True,
        backbones={"backbone": None},
        layers="layers",
        size_rule=_supersimplenet_size,
    ),
    "uninet": AnomalibSpec(
        "uninet.lightning_model:UniNet",
        pretrained=True,
        batch_size=2,
        bounds={"temperature": _POSITIVE},
        backbones={"teacher_backbone": _BOTTLENECK_RESNETS, "student_backbone": _BOTTLENECK_RESNETS},
        size_rule=_multiple_of(32, "its student decoder doubles a stride-32 map back up to the teacher's layer1"),
    ),
    "csflow": AnomalibSpec(
        "csflow.lightning_model:Csflow",
        pretrained=True,
        bounds={"cross_conv_hidden_channels": _AT_LEAST_1, "n_coupling_blocks": _AT_LEAST_1, "clamp": _NON_NEGATIVE},
        size_rule=_multiple_of(128, "it couples efficientnet_b5 features (stride 32) of the image at 1, 1/2 and 1/4"),
        data_defaults={"image_size": (256, 256)},  # anomalib's input size; the general default 224 never fits
    ),
    "cfa": AnomalibSpec(
        "cfa.lightning_model:Cfa",
        pretrained=True,
        per_epoch_metric=None,
        bounds={
            **dict.fromkeys(("gamma_c", "gamma_d", "num_nearest_neighbors", "num_hard_negative_features"), _AT_LEAST_1),
            "radius": _NON_NEGATIVE,
        },
        backbones={"backbone": ("vgg19_bn", "resnet18", "wide_resnet50_2")},  # efficientnet_b5: not implemented
    ),
    "fre": AnomalibSpec(
        "fre.lightning_model:Fre",
        bounds={"pooling_kernel_size": _AT_LEAST_1, "input_dim": _AT_LEAST_1, "latent_dim": _AT_LEAST_1},
        backbones={"backbone": None},
        layers="layer",
        size_rule=_fre_size,
        data_defaults={"image_size": (256, 256)},  # anomalib's input size: its default input_dim is resnet50 at 256
    ),
    # teacher = anomalib's pretrained PDN (`weights`), ImageNette penalty images from a local `imagenet_dir`;
    # quantiles of its maps come from validation normals, so it validates each epoch
    "efficient_ad": AnomalibSpec(
        "efficient_ad.lightning_model:EfficientAd",
        epochs=3,
        batch_size=1,
        per_epoch_metric=None,
        pretrained=True,
        uses_validation=True,
        bounds={"teacher_out_channels": _AT_LEAST_1, "lr": _POSITIVE, "weight_decay": _NON_NEGATIVE},
        size_rule=_at_least(256, "its autoencoder (5 stride-2 convolutions, then an 8 x 8 one)"),
        data={"normalization": ("none", "it normalises inside its network (ImageNet statistics of its teacher)")},
        data_defaults={"image_size": (256, 256)},  # the only size that works by default (224 is too small)
    ),
}


# --------------------------------------------------------------------------- config classes


class AnomalibConfig(ModelConfig):
    """Fields every adapted anomalib model shares; the rest come from its constructor."""

    anomalib_class: ClassVar[str] = ""
    pretrained_argument: ClassVar[bool] = False  # the constructor takes `pre_trained` (ours: `pretrained`)
    constructor_fields: ClassVar[tuple[str, ...]] = ()

    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (None: epochs decide)")
    gradient_clip_val: float | None = Field(None, ge=0, description="None: the model's own trainer_arguments")
    optimizer: Literal["model", "adam", "adamw", "sgd"] = Field(
        "model", description="'model': anomalib's configure_optimizers; else this optimiser over trainable params"
    )
    optimizer_lr: float = Field(1e-4, gt=0, description="lr of `optimizer` when it is not 'model'")

    def max_epochs(self) -> int:
        return self.epochs

    @model_validator(mode="after")
    def _what_anomalib_builds(self) -> AnomalibConfig:
        """The backbones, layers and field combinations its anomalib code accepts (`AnomalibSpec`)."""
        spec = ANOMALIB_MODELS[self.name]
        for name, allowed in spec.backbones.items():
            value = getattr(self, name)
            if allowed is not None and value not in allowed:
                raise ValueError(f"model.{name}={value!r}: anomalib's {self.name} builds only {', '.join(allowed)}")
        if spec.layers:
            check_layers(self.backbone, _layer_names(self), "backbone", spec.layers)
        problem = spec.check(self) if spec.check else None
        if problem:
            raise ValueError(problem)
        return self

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        spec = ANOMALIB_MODELS[self.name]
        problem = stride_problem(self.backbone, _layer_names(self), size) if spec.layers else None
        return problem or (spec.size_rule(self, size) if spec.size_rule else None)

    def fit_problem(self, fit_raw: np.ndarray, input_size: tuple[int, int]) -> str | None:
        rule = ANOMALIB_MODELS[self.name].fit_rule
        return rule(self, len(fit_raw), input_size) if rule else None

    def data_requirements(self) -> dict:
        return {"to_rgb": (True, "anomalib's models take 3-channel images"), **ANOMALIB_MODELS[self.name].data}

    def data_defaults(self) -> dict:
        return ANOMALIB_MODELS[self.name].data_defaults

    def weights_label(self) -> str | None:
        return pretrained_label(self.pretrained, self.weights) if self.needs_pretrained_weights else None

    def anomalib_kwargs(self) -> dict[str, Any]:
        kwargs = {name: getattr(self, name) for name in self.constructor_fields}
        if self.pretrained_argument:  # what anomalib asks timm for is recorded by `offline_weights`, loaded by us
            kwargs["pre_trained"] = self.pretrained
        return kwargs


def _config_class(name: str, spec: AnomalibSpec) -> type[AnomalibConfig]:
    constructor = CONSTRUCTORS[name]
    fields: dict[str, Any] = {
        "name": (Literal[name], name),
        "epochs": (int, Field(spec.epochs, ge=1)),
        "batch_size": (int, Field(spec.batch_size, ge=1)),
    }
    for arg, (annotation, default) in constructor.fields.items():
        bounds = spec.bounds.get(arg, {})
        if isinstance(bounds, tuple):  # the values its code accepts
            annotation, bounds = Literal[bounds], {}
        fields[arg] = (annotation, Field(default, **bounds))
    has_pretrained = constructor.takes_pre_trained
    if has_pretrained or spec.pretrained:
        fields["pretrained"] = (bool, Field(True, description="False: random init (recorded in the row)"))
        fields["weights"] = (str | None, Field(None, description="local checkpoint of the pretrained backbone"))
    class_name = config_class_name(name)
    base = type(
        f"_{class_name}Base",
        (AnomalibConfig,),
        {
            "__module__": __name__,
            "anomalib_class": spec.cls,
            "pretrained_argument": has_pretrained,
            "constructor_fields": tuple(constructor.fields),
            "per_epoch_metric": spec.per_epoch_metric,
            "needs_pretrained_weights": has_pretrained or spec.pretrained,
            "checks_fit_set": spec.fit_rule is not None,
            "__doc__": f"`{name}`: anomalib's {spec.cls.split(':')[1]} ({spec.cls}).",
        },
    )
    config = create_model(class_name, __base__=base, __module__=__name__, **fields)
    config.__doc__ = base.__doc__
    globals()[base.__name__] = base
    return config


def config_class_name(name: str) -> str:
    """`efficient_ad` -> `EfficientAdConfig`: the module attribute the generated config class is."""
    return "".join(part.title() for part in name.split("_")) + "Config"


def _config_classes() -> dict[str, type[AnomalibConfig]]:
    classes = {}
    for name, spec in ANOMALIB_MODELS.items():
        config = _config_class(name, spec)
        globals()[config.__name__] = config
        classes[name] = config
    return classes


CONFIG_CLASSES = _config_classes()
