"""Sweep spec: YAML -> validated list of TrialConfigs, all checked before anything runs.

name: my-study
data: {root: data/1000_tiff_minmax}            # or {root: ..., simulate: {n_train: 60, ...}}
trial: {model: {name: patchcore, backbone: resnet18}, data: {image_size: 224}}
axes:                                          # grid over any trial-config path
  data.domain: [A, B, C, D]
  zip: [{model.backbone: [resnet18, resnet34], model.layers: [[layer2], [layer3]]}]
models:                                        # optional: several models, each with its own
  patchcore: {axes: {model.k: [1, 9]}, resources: {gpu: 0.25}}
  draem: {trial: {model: {epochs: 5}}, resources: {gpu: 1}}
seeds: [0, 1, 2]
resources: {cpu: 1, gpu: 0}
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hdmap.config import ConfigError, TrialConfig, apply_overrides, describe_errors, read_yaml_tree, set_path
from hdmap.errors import UserError
from hdmap.models.registry import MODELS
from sweeps.tracking import WandbSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulateSpec(_Strict):
    n_train: int = Field(200, ge=2)
    n_test: int = Field(100, ge=2)
    domains: list[str] = ["A", "B", "C", "D"]
    seed: int = 0


class DataSpec(_Strict):
    root: str
    simulate: SimulateSpec | None = Field(None, description="write a simulated data set at `root` if it is absent")


class Resources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0, description="fractional GPUs only schedule, they do not cap memory")

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a fraction of a GPU must be <= 1; above 1 use whole GPUs")
        return v


class AshaSpec(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)


class ModelSpec(_Strict):
    trial: dict = {}
    axes: dict[str, Any] = {}
    resources: Resources | None = None


class TrackingSpec(_Strict):
    wandb: WandbSettings = WandbSettings()


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataSpec
    trial: dict = {}
    axes: dict[str, Any] = {}
    models: dict[str, ModelSpec] | None = None
    seeds: list[int] = Field([0], min_length=1, description="one trial per seed per config; [] would run nothing")
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)
    scheduler: Literal["fifo", "asha"] | AshaSpec = "fifo"
    max_failures: int = Field(1, ge=0)
    trial_timeout_s: float | None = Field(None, gt=0)
    output: str = "sweeps-out"
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("output")
    @classmethod
    def _output_named(cls, v: str) -> str:
        if not v.strip():  # sweep_dir() would be /<name>: the filesystem root
            raise ValueError("empty; expected a folder (e.g. sweeps-out) or a bucket URI (e.g. s3://bucket/prefix)")
        return v

    @property
    def asha(self) -> AshaSpec | None:
        if self.scheduler == "fifo":
            return None
        return AshaSpec() if self.scheduler == "asha" else self.scheduler

    def sweep_dir(self) -> str:
        """`<output>/<name>`; a URI's query (s3://b/p?endpoint_override=...) stays at the end."""
        base, sep, query = self.output.partition("?")
        return f"{base.rstrip('/')}/{self.name}{sep}{query}"


class SpecError(UserError, ValueError):
    """Everything wrong with a spec, one line per problem, each naming file, field path and what is allowed."""


class Plan(BaseModel):
    """An expanded spec: the trials in order, and what each needs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    spec: SweepSpec
    source: str
    spec_hash: str
    trials: list[TrialConfig]
    axes: list[str]
    axis_values: dict[str, list]  # swept values in spec order; the first is the report's baseline

    def resources_for(self, model: str) -> Resources:
        models = self.spec.models or {}
        return (models.get(model) and models[model].resources) or self.spec.resources

    def breakdown(self) -> Counter:
        return Counter(t.model.name for t in self.trials)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Plan:
    """Read, override (`PATH=VALUE` on the spec), validate and expand a spec; SpecError lists every problem."""
    source = str(path)
    try:
        tree = apply_overrides(read_yaml_tree(path, "name, data, trial, axes, ..."), overrides)
    except ConfigError as exc:
        raise SpecError(f"sweep spec {exc}") from None
    return expand(tree, source)


def expand(tree: dict, source: str = "spec") -> Plan:
    """Validate a spec tree and expand it into its trials; SpecError lists every problem, each naming its field."""
    spec = _validated(tree, source)
    models = _models(spec, source)
    problems: list[str] = []
    trials: list[TrialConfig] = []
    axes_used: list[str] = []
    axis_values: dict[str, list] = {}
    for name, mspec in models.items():
        model_trials, paths = _expand_model(spec, name, mspec, source, problems, axis_values)
        trials += model_trials
        axes_used += [p for p in paths if p not in axes_used]
    problems += _asha_problems(spec, models, source)
    if problems:
        raise SpecError("\n".join(dict.fromkeys(problems)))
    _check_unique(trials, source)
    spec_hash = hashlib.sha1(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    if "seed" not in axes_used and len(spec.seeds) > 1:
        axes_used.append("seed")
    return Plan(
        spec=spec,
        source=source,
        spec_hash=spec_hash,
        trials=trials,
        axes=axes_used,
        axis_values={a: axis_values[a] for a in axes_used},
    )


def _validated(tree: dict, source: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(tree)
    except ValidationError as exc:
        raise SpecError(
            "\n".join(
                f"{source}: {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
        ) from None


def _models(spec: SweepSpec, source: str) -> dict[str, ModelSpec]:
    """The spec's models (the trial's one model when it names none); SpecError naming any unknown one."""
    models = spec.models or {str((spec.trial.get("model") or {}).get("name", "patchcore")): ModelSpec()}
    unknown = [
        f"{source}: models.{name}: unknown model; allowed: {', '.join(MODELS)}" for name in models if name not in MODELS
    ]
    if unknown:
        raise SpecError("\n".join(unknown))
    return models


def _expand_model(
    spec: SweepSpec, name: str, mspec: ModelSpec, source: str, problems: list[str], axis_values: dict[str, list]
) -> tuple[list[TrialConfig], list[str]]:
    """One model's trials and the config paths it sweeps. Its problems join `problems`; once there are any (this
    model's or an earlier one's), its values are not validated trial by trial: the spec is refused anyway."""
    base = _merge(copy.deepcopy(spec.trial), mspec.trial)
    base.setdefault("model", {})["name"] = name
    base.setdefault("data", {})["root"] = _absolute(spec.data.root)
    where = {
        **{p: "axes" for p in _axis_paths(spec.axes)},
        **{p: f"models.{name}.axes" for p in _axis_paths(mspec.axes)},
    }
    grid = _grid(spec.axes, source, "axes", problems) + _grid(mspec.axes, source, f"models.{name}.axes", problems)
    grid.append([{"seed": s} for s in spec.seeds])
    _record_axis_values(grid, axis_values)
    for path, field in where.items():
        problems += _check_path(path, name, f"{source}: {field}.{path}")
    if problems:
        return [], []
    _check_values(base, grid, name, source, problems)
    if problems:
        return [], []
    return _trials(base, grid, source, problems), list(where)


def _record_axis_values(grid: list[list[dict]], axis_values: dict[str, list]) -> None:
    """Every swept value in spec order: the first value of an axis is its baseline (the report's)."""
    for options in grid:
        for path in options[0] if options else []:
            values = axis_values.setdefault(path, [])
            values += [a[path] for a in options if a[path] not in values]


def _trials(base: dict, grid: list[list[dict]], source: str, problems: list[str]) -> list[TrialConfig]:
    """The grid's product on `base`; the first combination that does not validate is named in `problems`."""
    trials = []
    for combo in itertools.product(*grid):
        tree_i = copy.deepcopy(base)
        for assignment in combo:
            for path, value in assignment.items():
                set_path(tree_i, path, copy.deepcopy(value))
        try:
            trials.append(TrialConfig.model_validate(tree_i))
        except ValidationError as exc:
            where_combo = ", ".join(f"{p}={v!r}" for a in combo for p, v in a.items())
            problems.append(describe_errors(exc, f"{source}: trial ({where_combo})"))
            break
    return trials


def _asha_problems(spec: SweepSpec, models: dict[str, ModelSpec], source: str) -> list[str]:
    """ASHA ranks trials by a per-epoch metric: every model of the spec must report the one it names."""
    if not spec.asha:
        return []
    return [
        f"{source}: scheduler: asha ranks trials by per-epoch {spec.asha.metric!r}; model {name!r} reports "
        f"{MODELS[name].per_epoch_metric or 'no per-epoch metric'} "
        "(use scheduler: fifo, or drop it from this spec)"
        for name in models
        if MODELS[name].per_epoch_metric != spec.asha.metric
    ]


def _check_unique(trials: list[TrialConfig], source: str) -> None:
    ids = Counter(t.trial_id for t in trials)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        raise SpecError(
            f"{source}: {len(dupes)} trial configs occur more than once (axes overlap); e.g. trial {dupes[0]}"
        )


def _absolute(root: str) -> str:
    """Trials run in other processes and directories (Ray workers): pin a relative root to where the spec was run."""
    return root if "://" in root else str(Path(root).expanduser().resolve())


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _axis_paths(axes: dict) -> list[str]:
    """Config paths an axes mapping sweeps, zip-group members included."""
    paths = [p for p in axes if p != "zip"]
    zips = axes.get("zip") or []
    for group in zips if isinstance(zips, list) else [zips]:
        paths += list(group) if _zip_problem(group) is None else []
    return paths


def _zip_problem(group: Any) -> str | None:
    """Why a zip group is not {path: [values], ...} with non-empty lists of one length, or None."""
    example = "e.g. {model.backbone: [resnet18, resnet34], model.layers: [[layer2], [layer3]]}"
    if not isinstance(group, dict) or not group or not all(isinstance(p, str) for p in group):
        return f"expected a mapping of config paths to lists of values, {example}; got {group!r}"
    lengths = {p: len(v) if isinstance(v, list) else type(v).__name__ for p, v in group.items()}
    if len(set(lengths.values())) != 1 or not all(isinstance(n, int) and n > 0 for n in lengths.values()):
        return f"every path needs a non-empty list, all of the same length, {example}; got lengths {lengths}"
    return None


def _grid(axes: dict, source: str, field: str, problems: list[str]) -> list[list[dict]]:
    """Each axis -> a list of assignments; a zip group advances its paths together."""
    grid: list[list[dict]] = []
    for path, values in axes.items():
        if path == "zip":
            for i, group in enumerate(values if isinstance(values, list) else [values]):
                problem = _zip_problem(group)
                if problem:
                    problems.append(f"{source}: {field}.zip[{i}]: {problem}")
                    continue
                grid.append([dict(zip(group, vals)) for vals in zip(*group.values())])
        elif not isinstance(values, list) or not values:
            problems.append(f"{source}: {field}.{path}: expected a non-empty list of values, got {values!r}")
        else:
            grid.append([{path: v} for v in values])
    return grid


def _check_path(path: str, model: str, where: str) -> list[str]:
    """A swept path must name a field of the trial config (for this model)."""
    from hdmap.config import TrialConfig

    cls: type[BaseModel] = TrialConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        if i == 1 and parts[0] == "model":
            cls = MODELS[model].config
        if part not in cls.model_fields:
            allowed = ", ".join(cls.model_fields)
            if parts[0] == "model" and any(part in e.config.model_fields for e in MODELS.values()):
                owners = [n for n, e in MODELS.items() if part in e.config.model_fields]
                return [
                    f"{where}: does not apply to model {model!r} (it belongs to {', '.join(owners)}); "
                    f"put it under models.{owners[0]}.axes. {model} fields: {allowed}"
                ]
            return [
                f"{where}: unknown config path ({part!r} not in {'.'.join(parts[:i]) or 'trial config'}); "
                f"allowed: {allowed}"
            ]
        annotation = cls.model_fields[part].annotation
        if i < len(parts) - 1:
            if part == "model":
                continue
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return [f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section"]
            cls = annotation
    return []


def _check_values(base: dict, grid: list[list[dict]], model: str, source: str, problems: list[str]) -> None:
    """Validate every axis value on its own against the base config, so an error names the one bad value.

    A problem of the base config itself (every axis value shows it) is named once, as the model's."""
    base_problems = _problems(base)
    problems += [f"{source}: model {model}: {p}" for p in base_problems]
    for options in grid:
        for assignment in options:
            tree = copy.deepcopy(base)
            for path, value in assignment.items():
                set_path(tree, path, copy.deepcopy(value))
            label = ", ".join(f"{p}={v!r}" for p, v in assignment.items())
            problems += [
                f"{source}: model {model}, axis value {label}: {p}" for p in _problems(tree) if p not in base_problems
            ]


def _problems(tree: dict) -> list[str]:
    try:
        TrialConfig.model_validate(tree)
    except ValidationError as exc:
        return describe_errors(exc, "").splitlines()
    return []
