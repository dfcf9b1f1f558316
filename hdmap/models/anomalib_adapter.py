"""anomalib 2.7 image models that train on normals only, as trials: one adapter, one table line per model.

For each entry of `ANOMALIB_MODELS`:
- the config class is derived from the anomalib constructor's signature (typed fields, anomalib's defaults unless the
  table says otherwise; unknown keys rejected like every config), plus the training fields every adapted model shares
  (`epochs`, `max_steps`, `gradient_clip_val` defaulting to the model's `trainer_arguments`; `optimizer`,
  `optimizer_lr` overriding its `configure_optimizers`) and, where a backbone is pretrained, `pretrained`/`weights`;
- the Lightning module is the anomalib class itself with `AnomalibAdapter` in front: our transform replaces
  anomalib's PreProcessor (it runs in `on_after_batch_transfer` for fit and predict alike), the post-processor,
  evaluator and visualizer are off, and the image score is the torch model's raw `pred_score`, so thresholds stay
  the trial's (validation normals only);
- weights are never downloaded: construction runs with timm's `pretrained` forced off and torchvision's weight
  downloads replaced by a torch-hub-cache lookup, then every backbone anomalib wanted pretrained is loaded through
  `hdmap.models.backbones` (local file, HF cache, torch-hub cache) or the trial fails with `WeightsNotFoundError`
  before any fitting. `pretrained: false` gives random init everywhere, and the results row says so.

Only configs cross process boundaries (Ray): the generated classes are module attributes, so they pickle by name.
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
import inspect
import os
import types
import typing
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import torch
from pydantic import Field, create_model

from hdmap.errors import ConfigError, WeightsNotFoundError
from hdmap.models.backbones import load_pretrained, pretrained_label
from hdmap.models.base import AnomalyModule, ModelConfig

_COMPONENTS = ("pre_processor", "post_processor", "evaluator", "visualizer")


@dataclass(frozen=True)
class AnomalibSpec:
    """One adapted model: where its Lightning class lives and what anomalib leaves to the caller."""

    cls: str  # "module:Class" under anomalib.models.image
    epochs: int = 10  # when the model's trainer_arguments fix none (the researcher's value where known, digest 5.3)
    per_epoch_metric: str | None = "train_loss"  # logged on_epoch by its training_step; None = no ASHA
    batch_size: int = 8
    pretrained: bool = False  # a pretrained backbone inside, even without a `pre_trained` argument
    uses_validation: bool = False
    min_side: int = 1  # input pixels each side needs (a fixed downsampling inside the network)


ANOMALIB_MODELS: dict[str, AnomalibSpec] = {
    "padim": AnomalibSpec("padim.lightning_model:Padim", epochs=1, per_epoch_metric=None),
    "dfm": AnomalibSpec("dfm.lightning_model:Dfm", epochs=1, per_epoch_metric=None),
    "dfkde": AnomalibSpec("dfkde.lightning_model:Dfkde", epochs=1, per_epoch_metric=None),
    "cflow": AnomalibSpec("cflow.lightning_model:Cflow"),
    "fastflow": AnomalibSpec("fastflow.lightning_model:Fastflow", batch_size=64),
    "reverse_distillation": AnomalibSpec(
        "reverse_distillation.lightning_model:ReverseDistillation", epochs=200, batch_size=16
    ),
    "stfpm": AnomalibSpec("stfpm.lightning_model:Stfpm", pretrained=True),
    "ganomaly": AnomalibSpec(
        "ganomaly.lightning_model:Ganomaly", epochs=150, per_epoch_metric="generator_loss", batch_size=32
    ),  # its constructor's batch_size is ours
    "supersimplenet": AnomalibSpec("supersimplenet.lightning_model:Supersimplenet", pretrained=True),
    "uninet": AnomalibSpec("uninet.lightning_model:UniNet", pretrained=True, batch_size=2),
    "csflow": AnomalibSpec("csflow.lightning_model:Csflow", pretrained=True),
    "cfa": AnomalibSpec("cfa.lightning_model:Cfa", pretrained=True, per_epoch_metric=None),
    "fre": AnomalibSpec("fre.lightning_model:Fre"),
    # teacher = anomalib's pretrained PDN (`weights`), ImageNette penalty images from a local `imagenet_dir`;
    # quantiles of its maps come from validation normals, so it validates each epoch
    "efficient_ad": AnomalibSpec(
        "efficient_ad.lightning_model:EfficientAd",
        epochs=3,
        batch_size=1,
        per_epoch_metric=None,
        pretrained=True,
        uses_validation=True,
        min_side=256,
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

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        need = ANOMALIB_MODELS[self.name].min_side
        return f"each side needs >= {need} px, got {list(size)}" if min(size) < need else None

    def weights_label(self) -> str | None:
        return pretrained_label(self.pretrained, self.weights) if self.needs_pretrained_weights else None

    def anomalib_kwargs(self) -> dict[str, Any]:
        kwargs = {name: getattr(self, name) for name in self.constructor_fields}
        if self.pretrained_argument:  # what anomalib asks timm for is recorded by `offline_weights`, loaded by us
            kwargs["pre_trained"] = self.pretrained
        return kwargs


def anomalib_class(spec: AnomalibSpec) -> type:
    module, name = spec.cls.split(":")
    return getattr(importlib.import_module(f"anomalib.models.image.{module}"), name)


def _field_type(annotation: Any) -> Any | None:
    """A constructor annotation as a config type: Sequence -> list, Path -> str; None if not expressible in YAML."""
    origin = typing.get_origin(annotation)
    if annotation is Path:
        return str
    if annotation in (int, float, str, bool, type(None), Any) or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
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
    if origin is Literal:
        return annotation
    return None


def _config_class(name: str, spec: AnomalibSpec) -> type[AnomalibConfig]:
    cls = anomalib_class(spec)
    signature = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {
        "name": (Literal[name], name),
        "epochs": (int, Field(spec.epochs, ge=1)),
        "batch_size": (int, Field(spec.batch_size, ge=1)),
    }
    constructor: list[str] = []
    for arg, param in signature.parameters.items():
        if arg in ("self", "precision", "pre_trained", *_COMPONENTS) or param.kind in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        ):
            continue
        annotation = _field_type(hints.get(arg, Any))
        if annotation is None or arg in fields:
            continue
        default = param.default
        if isinstance(default, tuple) and typing.get_origin(annotation) is list:
            default = list(default)
        fields[arg] = (annotation, default)
        constructor.append(arg)
    has_pretrained = "pre_trained" in signature.parameters
    if has_pretrained or spec.pretrained:
        fields["pretrained"] = (bool, Field(True, description="False: random init (recorded in the row)"))
        fields["weights"] = (str | None, Field(None, description="local checkpoint of the pretrained backbone"))
    class_name = "".join(part.title() for part in name.split("_")) + "Config"
    base = type(
        f"_{class_name}Base",
        (AnomalibConfig,),
        {
            "__module__": __name__,
            "anomalib_class": spec.cls,
            "pretrained_argument": has_pretrained,
            "constructor_fields": tuple(constructor),
            "per_epoch_metric": spec.per_epoch_metric,
            "needs_pretrained_weights": has_pretrained or spec.pretrained,
            "__doc__": f"`{name}`: anomalib's {cls.__name__} ({spec.cls}).",
        },
    )
    config = create_model(class_name, __base__=base, __module__=__name__, **fields)
    config.__doc__ = base.__doc__
    globals()[base.__name__] = base
    return config


# --------------------------------------------------------------------------- modules


class _ImageView:
    """An iterable of anomalib-style batches (`.image`) over a raw loader, for anomalib hooks that read a loader."""

    def __init__(self, loader, module: AnomalyModule) -> None:
        self.loader, self.module = loader, module

    def __iter__(self):
        for batch in self.loader:
            yield self.module.on_after_batch_transfer(
                {k: v.to(self.module.device) if torch.is_tensor(v) else v for k, v in batch.items()}, 0
            )

    def __len__(self) -> int:
        return len(self.loader)


class AnomalibAdapter(AnomalyModule):
    """Placed before the anomalib Lightning class in the MRO: the trial's contract on top of anomalib's training."""

    hdmap_config: ClassVar[type[AnomalibConfig]]

    def __init__(self, cfg: AnomalibConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        if transform.channels != 3:
            raise ConfigError(f"{cfg.name} (anomalib) needs 3-channel input: set data.to_rgb=true")
        object.__setattr__(self, "_hdmap_input_size", tuple(transform.output_size))
        anomalib_cls = next(c for c in type(self).__mro__ if c.__module__.startswith("anomalib."))
        with offline_weights(cfg) as wanted:
            kwargs = cfg.anomalib_kwargs()
            if "batch_size" in inspect.signature(anomalib_cls.__init__).parameters:
                kwargs["batch_size"] = cfg.batch_size
            anomalib_cls.__init__(self, **kwargs, **dict.fromkeys(_COMPONENTS, False))
        if cfg.needs_pretrained_weights and cfg.pretrained:
            _load_wanted(cfg, wanted)
        self.transform = transform
        self.cfg = cfg
        self.max_epochs = cfg.epochs
        self.uses_validation = ANOMALIB_MODELS[cfg.name].uses_validation

    @property
    def input_size(self) -> tuple[int, int]:
        """anomalib sizes its networks by the PreProcessor's output; here it is the trial transform's size."""
        return self._hdmap_input_size

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int):
        from anomalib.data import ImageBatch

        return ImageBatch(image=self.transform(batch["raw"]), gt_label=batch["label"])

    def trainer_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.cfg.max_steps is not None:
            kwargs["max_steps"] = self.cfg.max_steps
        clip = self.cfg.gradient_clip_val
        if clip is None:
            clip = self.trainer_arguments.get("gradient_clip_val") or 0.0
        if clip > 0 and self.automatic_optimization:
            kwargs["gradient_clip_val"] = clip
        return kwargs

    def configure_optimizers(self):
        if self.cfg.optimizer == "model":
            return super().configure_optimizers()
        params = [p for p in self.model.parameters() if p.requires_grad]
        make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[self.cfg.optimizer]
        return make(params, lr=self.cfg.optimizer_lr)

    def configure_callbacks(self) -> list:
        return []

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        score = self.model(batch.image).pred_score
        return {"score": score.reshape(len(batch.image), -1)[:, 0]}


class _CfaHooks:
    def on_train_start(self) -> None:
        """anomalib reads `trainer.datamodule`; the trial passes loaders: same images, through our transform."""
        self.model.initialize_centroid(data_loader=_ImageView(self.trainer.train_dataloader, self))


class _EfficientAdHooks:
    """Teacher and ImageNette from local files, checked at build (before any fit); loaders instead of a datamodule."""

    def __init__(self, cfg: AnomalibConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        if transform.normalization != "none":
            raise ConfigError("efficient_ad normalises inside its network: set data.normalization=none")
        super().__init__(cfg, transform, seed)
        if not Path(cfg.imagenet_dir).is_dir():
            raise WeightsNotFoundError(
                f"efficient_ad: model.imagenet_dir={cfg.imagenet_dir!r} is not a folder (its penalty loss needs "
                f"ImageNette images, an ImageFolder tree; never downloaded here): copy ImageNette there or set "
                f"model.imagenet_dir"
            )
        if cfg.pretrained:
            self.model.teacher.load_state_dict(torch.load(self._teacher_file(), map_location="cpu", weights_only=True))

    def _teacher_file(self) -> Path:
        from anomalib.utils.path import get_pretrained_weights_dir

        size = getattr(self.cfg.model_size, "value", self.cfg.model_size)
        path = Path(
            self.cfg.weights
            or get_pretrained_weights_dir() / "efficientad_pretrained_weights" / f"pretrained_teacher_{size}.pth"
        ).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"pretrained teacher for model 'efficient_ad' (size {size}) not found (never downloaded at run time).\n"
                f"  looked in: {path}\n"
                f"  provide it by one of: (1) model.weights=/path/to/pretrained_teacher_{size}.pth "
                f"(from anomalib's efficientad_pretrained_weights.zip release); (2) unzip that release into "
                f"{path.parent.parent}; (3) model.pretrained=false for a random teacher (results will say so)."
            )
        return path

    def prepare_pretrained_model(self) -> None:
        """Loaded at build instead (anomalib would download here)."""

    def on_train_start(self) -> None:
        self.prepare_imagenette_data(self.input_size)
        if not self.model.is_set(self.model.mean_std):
            self.model.mean_std.update(self.teacher_channel_mean_std(_ImageView(self.trainer.train_dataloader, self)))

    def on_validation_start(self) -> None:
        self.model.quantiles.update(self.map_norm_quantiles(_ImageView(self.trainer.val_dataloaders, self)))

    def configure_optimizers(self):
        if self.cfg.optimizer != "model":
            return super().configure_optimizers()
        params = list(self.model.student.parameters()) + list(self.model.ae.parameters())
        optimizer = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        steps = max(1, int(0.95 * self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, steps, gamma=0.1)}

    def validation_step(self, batch, *args, **kwargs) -> None:
        """Validation only feeds the quantiles (on_validation_start); nothing to score here."""


HOOKS: dict[str, type] = {"cfa": _CfaHooks, "efficient_ad": _EfficientAdHooks}


def _module_class(name: str, spec: AnomalibSpec, config: type[AnomalibConfig]) -> type[AnomalibAdapter]:
    bases = ((HOOKS[name],) if name in HOOKS else ()) + (AnomalibAdapter, anomalib_class(spec))
    cls = type(
        "".join(part.title() for part in name.split("_")) + "Module",
        bases,
        {"__module__": __name__, "hdmap_config": config},
    )
    return cls


# --------------------------------------------------------------------------- weights


@contextlib.contextmanager
def offline_weights(cfg: AnomalibConfig):
    """Build anomalib modules without any download: timm `pretrained` forced off (what anomalib wanted pretrained is
    recorded and loaded afterwards by `_load_wanted`); torchvision weights only from the torch-hub cache or
    `model.weights`, skipped entirely with `pretrained: false`."""
    import timm
    import torchvision.models._api as tv_api

    wanted: list[tuple[str, torch.nn.Module]] = []
    # the classmethod object itself (attribute access would bind it to WeightsEnum), so it is restored as it was
    real_create, real_verify = timm.create_model, vars(tv_api.WeightsEnum)["verify"]
    real_fetch = tv_api.load_state_dict_from_url
    load_weights = cfg.pretrained if cfg.needs_pretrained_weights else False

    def create_model(model_name, *args, pretrained: bool = False, **kwargs):
        model = real_create(model_name, *args, pretrained=False, **kwargs)
        if pretrained:
            wanted.append((model_name, model))
        return model

    def verify(cls, obj):
        return real_verify.__func__(cls, obj) if load_weights else None

    def fetch(url: str, *args, **kwargs):
        return torch.load(_torchvision_file(cfg, url), map_location="cpu", weights_only=True)

    patched = (create_model, classmethod(verify), fetch)
    timm.create_model, tv_api.WeightsEnum.verify, tv_api.load_state_dict_from_url = patched
    try:
        yield wanted
    finally:
        timm.create_model, tv_api.WeightsEnum.verify = real_create, real_verify
        tv_api.load_state_dict_from_url = real_fetch


def _torchvision_file(cfg: AnomalibConfig, url: str) -> Path:
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.weights={cfg.weights!r} for {cfg.name}: no such file")
        return path
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    if candidate.is_file():
        return candidate
    raise WeightsNotFoundError(
        f"pretrained torchvision weights for model {cfg.name!r} not found "
        f"(this platform never downloads at run time).\n"
        f"  looked in: torch hub cache {candidate}\n"
        f"  provide them by one of: (1) model.weights=/path/to/{candidate.name}; (2) on a machine with internet "
        f"download {url} into $TORCH_HOME/hub/checkpoints on this node; "
        f"(3) model.pretrained=false for random initialisation (results will say so)."
    )


def _load_wanted(cfg: AnomalibConfig, wanted: list[tuple[str, torch.nn.Module]]) -> None:
    names = sorted({name for name, _ in wanted})
    if cfg.weights and len(names) > 1:
        raise WeightsNotFoundError(
            f"model.weights for {cfg.name}: one file cannot fill its {len(names)} pretrained "
            f"backbones {names}; provide them through the HF / torch-hub cache instead"
        )
    for backbone, module in wanted:
        try:
            load_pretrained(module, backbone, cfg.weights)
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"model {cfg.name!r}: {exc}") from None


# --------------------------------------------------------------------------- registry entries


def _build_all() -> dict[str, tuple[type[AnomalibConfig], type[AnomalibAdapter]]]:
    out = {}
    with warnings.catch_warnings():  # anomalib's own imports announce deprecations of modules we never use
        warnings.simplefilter("ignore", FutureWarning)
        for spec in ANOMALIB_MODELS.values():
            anomalib_class(spec)
    for name, spec in ANOMALIB_MODELS.items():
        config = _config_class(name, spec)
        module = _module_class(name, spec, config)
        globals()[config.__name__] = config
        globals()[module.__name__] = module
        out[name] = (config, module)
    return out


ADAPTED = _build_all()


def build(cfg: AnomalibConfig, transform: torch.nn.Module, seed: int = 0) -> AnomalibAdapter:
    return ADAPTED[cfg.name][1](cfg, transform, seed)
