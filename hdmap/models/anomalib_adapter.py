"""anomalib 2.7 image models that train on normals only, as trials: one adapter, one table line per model.

For each entry of `ANOMALIB_MODELS` (hdmap.models.configs.anomalib, where its config class is derived):
- the Lightning module is the anomalib class itself with `AnomalibAdapter` in front: our transform replaces
  anomalib's PreProcessor (it runs in `on_after_batch_transfer` for fit and predict alike), the post-processor,
  evaluator and visualizer are off, and the image score is the torch model's raw `pred_score`, so thresholds stay
  the trial's (validation normals only);
- weights are never downloaded: construction runs with timm's `pretrained` forced off and torchvision's weight
  downloads replaced by a torch-hub-cache lookup, then every backbone anomalib wanted pretrained is loaded through
  `hdmap.models.backbones` (local file, HF cache, torch-hub cache) or the trial fails with `WeightsNotFoundError`
  before any fitting. `pretrained: false` gives random init everywhere, and the results row says so.

The generated module classes are module attributes, so they pickle by name.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch

from hdmap.errors import WeightsNotFoundError
from hdmap.models.backbones import load_pretrained
from hdmap.models.base import AnomalyModule
from hdmap.models.configs.anomalib import (
    ANOMALIB_COMPONENTS,
    ANOMALIB_MODELS,
    CONFIG_CLASSES,
    AnomalibConfig,
    AnomalibSpec,
)

# --------------------------------------------------------------------------- modules


def anomalib_class(spec: AnomalibSpec) -> type:
    """The anomalib Lightning class of an entry."""
    module, name = spec.cls.split(":")
    with warnings.catch_warnings():  # anomalib's own imports announce deprecations of modules we never use
        warnings.simplefilter("ignore", FutureWarning)
        return getattr(importlib.import_module(f"anomalib.models.image.{module}"), name)


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
        object.__setattr__(self, "_hdmap_input_size", tuple(transform.output_size))
        anomalib_cls = next(c for c in type(self).__mro__ if c.__module__.startswith("anomalib."))
        with offline_weights(cfg) as wanted:
            kwargs = cfg.anomalib_kwargs()
            if "batch_size" in inspect.signature(anomalib_cls.__init__).parameters:
                kwargs["batch_size"] = cfg.batch_size
            anomalib_cls.__init__(self, **kwargs, **dict.fromkeys(ANOMALIB_COMPONENTS, False))
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


def _module_classes() -> dict[str, type[AnomalibAdapter]]:
    classes = {}
    for name, spec in ANOMALIB_MODELS.items():
        module = _module_class(name, spec, CONFIG_CLASSES[name])
        globals()[module.__name__] = module
        classes[name] = module
    return classes


MODULE_CLASSES = _module_classes()


def build(cfg: AnomalibConfig, transform: torch.nn.Module, seed: int = 0) -> AnomalibAdapter:
    return MODULE_CLASSES[cfg.name](cfg, transform, seed)
