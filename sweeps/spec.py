"""Sweep spec: YAML -> validated list of TrialConfigs, all checked before anything runs.

name: my-study
data: {root: data/1000_tiff_minmax}            # or {root: ..., simulate: {n_train: 60, ...}}
trial: {model: {name: patchcore, backbone: resnet18}, data: {image_size: 224}}
axes:                                          # grid over any trial-config path
  data.domain: [A, B, C, D]
  zip: [{model.backbone: [resnet18, resnet34], model.layers: [[layer2], [layer3]]}]
models:                                        # optional: several models, each with its own
  patchcore: {axes: {model.k: [1, 9]}, resources: {gpu: 0.25}}
  draem: {trial: {model: {epochs: 5}}, space: {model.lr: {loguniform: [1.0e-5, 1.0e-2]}}, resources: {gpu: 1}}
seeds: [0, 1, 2]
resources: {cpu: 1, gpu: 0}
search:                                        # optional: a search inside each grid cell (default: the grid alone)
  method: random                               # random | asha (random samples, ASHA stops the weak early) | optuna
  num_samples: 20                              # per grid cell and model (optuna: TPE, one study per grid cell)
  objective: val_synth_auroc                   # no test labels; a test figure only as oracle:<column>
  space: {model.batch_size: {choice: [4, 8]}}  # choice, uniform, loguniform, randint (both ends included)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hdmap.config import ConfigError, TrialConfig, apply_overrides, describe_errors, read_yaml_tree, set_path
from hdmap.data.fingerprint import splits_read
from hdmap.errors import UserError
from hdmap.metric_catalogue import METRICS
from hdmap.models.registry import MODELS
from hdmap.results import flatten_config
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


class Distribution(_Strict):
    """One searched parameter: exactly one of choice / uniform / loguniform / randint (both ends included, like
    Optuna's suggest_int)."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_valid_range(self) -> Distribution:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(DISTRIBUTIONS)}; got {given or 'none'}")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high is not None:
            low, high = low_high
            if low > high or (low == high and self.randint is None):
                raise ValueError(f"{given[0]}: low {low} must be below high {high}")
            if self.loguniform and low <= 0:
                raise ValueError(f"loguniform: low {low} must be > 0 (a log scale has no 0 or negatives)")
        return self

    def sample(self, rng: np.random.Generator) -> Any:
        if self.choice is not None:
            return copy.deepcopy(self.choice[int(rng.integers(len(self.choice)))])
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        if self.loguniform is not None:
            return float(np.exp(rng.uniform(*np.log(self.loguniform))))
        return int(rng.integers(self.randint[0], self.randint[1] + 1))

    def bounds(self) -> list[Any]:
        """The values every sample lies within: each choice, or both ends (checked against the config up front)."""
        return list(self.choice or self.uniform or self.loguniform or self.randint)


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


def _dotted_space(space: Any) -> Any:
    """`{model: {k: {randint: [1, 9]}}}` (what `--set search.space.model.k=...` writes) as `{model.k: {...}}`."""
    if not isinstance(space, dict):
        return space
    flat: dict[str, Any] = {}
    for path, value in space.items():
        if isinstance(value, dict) and value and not set(value) & set(DISTRIBUTIONS):
            flat.update({f"{path}.{inner}": dist for inner, dist in _dotted_space(value).items()})
        else:
            flat[path] = value
    return flat


class SearchSpec(_Strict):
    """A search inside each grid cell: `num_samples` configs per cell and model, drawn from `space` (and each model's
    own `space`), selected on `objective`, a results column that needs no test labels."""

    method: Literal["grid", "random", "asha", "optuna"] = "grid"
    num_samples: int | None = Field(None, ge=1)
    seed: int = 0
    objective: str = "val_synth_auroc"
    space: dict[str, Distribution] = {}
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, description="asha: 1/reduction_factor of the trials go on at each rung")

    _space_paths = field_validator("space", mode="before")(_dotted_space)

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, v: Any) -> Any:
        if v == "bohb":
            raise ValueError(
                "bohb is not offered (Ray's TuneBOHB needs hpbandster and ConfigSpace, unmaintained since 2018); "
                "use asha: random samples, the weak ones stopped early on the per-epoch objective"
            )
        return v

    @property
    def column(self) -> str:
        """The results column the objective reads (`oracle:image_auroc` -> image_auroc)."""
        return self.objective.removeprefix(ORACLE_PREFIX)

    @property
    def oracle(self) -> bool:
        return self.objective.startswith(ORACLE_PREFIX)

    @property
    def mode(self) -> Literal["max", "min"]:
        metric = METRICS.get(self.column)
        return "min" if metric is not None and metric.higher_is_better is False else "max"


ORACLE_PREFIX = "oracle:"


class ModelSpec(_Strict):
    trial: dict = {}
    axes: dict[str, Any] = {}
    space: dict[str, Distribution] = {}
    resources: Resources | None = None

    _space_paths = field_validator("space", mode="before")(_dotted_space)


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
    search: SearchSpec = SearchSpec()

    @field_validator("output")
    @classmethod
    def _output_named(cls, v: str) -> str:
        if not v.strip():  # sweep_dir() would be /<name>: the filesystem root
            raise ValueError("empty; expected a folder (e.g. sweeps-out) or a bucket URI (e.g. s3://bucket/prefix)")
        return v

    @property
    def asha(self) -> AshaSpec | None:
        """The ASHA scheduler: the spec's own, or a search's (`method: asha`, on its objective per epoch)."""
        search = self.search
        if search.method == "asha":
            return AshaSpec(
                metric=search.column,
                mode=search.mode,
                grace_period=search.grace_period,
                reduction_factor=search.reduction_factor,
            )
        if self.scheduler == "fifo":
            return None
        return AshaSpec() if self.scheduler == "asha" else self.scheduler

    def sweep_dir(self) -> str:
        """`<output>/<name>`; a URI's query (s3://b/p?endpoint_override=...) stays at the end."""
        base, sep, query = self.output.partition("?")
        return f"{base.rstrip('/')}/{self.name}{sep}{query}"


class SearchCell(BaseModel):
    """One grid cell of a search that chooses its trials as it runs (search.method optuna): the cell's base config
    (the searched paths at their defaults) and what is searched in it. A stored trial belongs to the cell when its
    config minus the searched paths is the cell's (`key`): the searched values change nothing else, checked up
    front."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    config: TrialConfig
    tree: dict  # the config as the spec writes it: searched values are set here, the model settles the rest
    space: dict[str, Distribution]
    budget: int  # trials to run: num_samples, or the distinct configs of a smaller discrete space
    key: str
    choices: dict[str, list] = {}  # each choice path's values as a validated config holds them (`224` -> [224, 224])

    def values_of(self, cfg: TrialConfig) -> dict[str, Any]:
        """The searched paths' values in a trial config of this cell."""
        tree = cfg.model_dump(mode="json")
        return {path: _get_path(tree, path) for path in self.space}

    def contains(self, values: dict[str, Any]) -> bool:
        """The values lie in the space (a stored trial of an earlier, other space neither counts nor informs it)."""
        for path, dist in self.space.items():
            value = values[path]
            if dist.choice is not None:
                if value not in self.choices[path]:
                    return False
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            low, high = dist.uniform or dist.loguniform or dist.randint
            if not low <= value <= high or (dist.randint is not None and value != int(value)):
                return False
        return True


def cell_key(cfg: TrialConfig, paths: Iterable[str]) -> str:
    """A config's canonical form (as its trial id hashes it) minus the searched paths: the same for every trial of a
    search cell."""
    tree = cfg.canonical()
    for path in paths:
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return json.dumps(tree, sort_keys=True, separators=(",", ":"))


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
    repeated_samples: int = 0  # a search's samples not run: its discrete space holds fewer configs (or equal ones)
    cells: list[SearchCell] = []  # search.method optuna: its grid cells, whose trials are chosen as the sweep runs

    @property
    def configs(self) -> list[TrialConfig]:
        """Every config the plan names up front: its trials, and each search cell's base config (an optuna search's
        trials are not known before they run; its data and fit-set checks run on these)."""
        return self.trials + [cell.config for cell in self.cells]

    @property
    def n_trials(self) -> int:
        """Trials the sweep runs: its planned trials, or its cells' budgets."""
        return len(self.trials) + sum(cell.budget for cell in self.cells)

    def resources_for(self, model: str) -> Resources:
        models = self.spec.models or {}
        return (models.get(model) and models[model].resources) or self.spec.resources

    def breakdown(self) -> Counter:
        counts = Counter(t.model.name for t in self.trials)
        for cell in self.cells:
            counts[cell.config.model.name] += cell.budget
        return counts

    def cell_of(self, config_json: str) -> tuple[int, TrialConfig] | None:
        """The index of the search cell a stored trial (its row's `config_json`) belongs to, with its config; None:
        no cell of this plan."""
        if config_json not in self._cells_found:
            self._cells_found[config_json] = self._find_cell(config_json)
        return self._cells_found[config_json]

    def _find_cell(self, config_json: str) -> tuple[int, TrialConfig] | None:
        try:
            cfg = TrialConfig.model_validate(json.loads(config_json))
        except (ValidationError, ValueError):  # a row of an older config schema: no cell of this plan
            return None
        paths = self._searched_paths.get(cfg.model.name)
        index = None if paths is None else self._cell_index.get(cell_key(cfg, paths))
        return None if index is None else (index, cfg)

    @functools.cached_property
    def _cell_index(self) -> dict[str, int]:
        return {cell.key: i for i, cell in enumerate(self.cells)}

    @functools.cached_property
    def _searched_paths(self) -> dict[str, list[str]]:
        return {cell.config.model.name: list(cell.space) for cell in self.cells}

    @functools.cached_property
    def _cells_found(self) -> dict[str, tuple[int, TrialConfig] | None]:
        return {}

    def search_params(self) -> list[str]:
        """The searched config paths, every model's, in spec order."""
        models = self.spec.models or {}
        return list(dict.fromkeys([*self.spec.search.space, *(p for m in models.values() for p in m.space)]))

    def search_meta(self):
        """sweep.json's record of the search (sweeps.meta.SearchMeta); None for a grid."""
        from sweeps.meta import SearchMeta

        search = self.spec.search
        if search.method == "grid":
            return None
        return SearchMeta(
            method=search.method,
            objective=search.column,
            mode=search.mode,
            oracle=search.oracle,
            params=self.search_params(),
            num_samples=search.num_samples,
            seed=search.seed,
        )


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
    cells: list[SearchCell] = []
    short: list[int] = []  # per model, the random samples its space cannot hold
    for name, mspec in models.items():
        model_trials, paths = _expand_model(spec, name, mspec, source, problems, axis_values, cells, short)
        trials += model_trials
        axes_used += [p for p in paths if p not in axes_used]
    problems += _search_problems(spec, models, source)
    problems += _asha_problems(spec, trials, source)
    if problems:
        raise SpecError("\n".join(dict.fromkeys(problems)))
    trials, repeats = _drop_repeated_samples(trials) if spec.search.method != "grid" else (trials, 0)
    repeats += sum(short)
    _check_unique(trials + [cell.config for cell in cells], source)
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
        repeated_samples=repeats,
        cells=cells,
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
    spec: SweepSpec,
    name: str,
    mspec: ModelSpec,
    source: str,
    problems: list[str],
    axis_values: dict[str, list],
    cells: list[SearchCell],
    short: list[int],
) -> tuple[list[TrialConfig], list[str]]:
    """One model's trials and the config paths it sweeps; for search.method optuna, no trials: its grid cells join
    `cells`; for random samples, the count a small discrete space cannot hold joins `short`. Its problems join
    `problems`; once there are any (this model's or an earlier one's), its values are not validated trial by trial:
    the spec is refused anyway."""
    base = _merge(copy.deepcopy(spec.trial), mspec.trial)
    base.setdefault("model", {})["name"] = name
    base.setdefault("data", {})["root"] = _absolute(spec.data.root)
    where = {
        **{p: "axes" for p in _axis_paths(spec.axes)},
        **{p: f"models.{name}.axes" for p in _axis_paths(mspec.axes)},
    }
    space = _space(spec, mspec, name)
    grid = _grid(spec.axes, source, "axes", problems) + _grid(mspec.axes, source, f"models.{name}.axes", problems)
    grid.append([{"seed": s} for s in spec.seeds])
    _record_axis_values(grid, axis_values)
    for path, field in where.items():
        problems += _check_path(path, name, f"{source}: {field}.{path}")
    for path, (_, field) in space.items():
        problems += _check_path(path, name, f"{source}: {field}.{path}")
        if path in where:
            problems.append(f"{source}: {field}.{path}: also a grid axis ({where[path]}.{path}); search it or grid it")
    if problems:
        return [], []
    _check_values(base, grid, name, source, problems)
    bounds = [[{path: v} for v in dist.bounds()] for path, (dist, _) in space.items()]
    if spec.search.method == "optuna":  # random validates every sample; optuna's come later: one within each range
        bounds += [[{path: dist.sample(np.random.default_rng(0))}] for path, (dist, _) in space.items()]
    _check_values(base, bounds, name, source, problems, kind="searched value")
    if problems:
        return [], []
    if spec.search.method in ("random", "asha"):
        samples = _samples(spec.search, name, {path: dist for path, (dist, _) in space.items()})
        short.append(math.prod(len(options) for options in grid) * ((spec.search.num_samples or 0) - len(samples)))
        grid.append(samples)
    trials = _trials(base, grid, source, problems)
    if spec.search.method == "optuna" and not problems:  # the trials are chosen as the sweep runs
        trees = [tree for tree, _ in _combinations(base, grid)]
        cells += _search_cells(spec.search, space, trials, trees, source, problems)
        return [], list(where)
    return trials, list(where)


def _space(spec: SweepSpec, mspec: ModelSpec, name: str) -> dict[str, tuple[Distribution, str]]:
    """The model's searched paths -> (distribution, the spec field naming it); a model's own `space` wins."""
    return {
        **{p: (d, "search.space") for p, d in spec.search.space.items()},
        **{p: (d, f"models.{name}.space") for p, d in mspec.space.items()},
    }


def _samples(search: SearchSpec, model: str, space: dict[str, Distribution]) -> list[dict]:
    """`num_samples` distinct assignments of the searched paths (all of them, when a discrete space holds fewer).
    Draw i comes from its own generator, seeded by (search.seed, model, i), and a draw that repeats an earlier one is
    skipped: every grid cell of a model gets the same samples (paired across domains and seeds), a discrete space is
    sampled without replacement, and raising num_samples keeps the samples drawn so far (their trials are in the
    store: only the new ones run)."""
    model_key = zlib.crc32(model.encode())
    choices = {path: dist.choice for path, dist in space.items() if dist.choice is not None}
    wanted = min(search.num_samples or 0, _space_size(space, choices))
    samples, seen = [], set()
    for i in range(int(wanted) * 100 + 1000):  # bounded: choices that validate to one value repeat forever
        if len(samples) == wanted:
            break
        rng = np.random.default_rng([search.seed, model_key, i])
        sample = {path: space[path].sample(rng) for path in sorted(space)}
        key = json.dumps(sample, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            samples.append(sample)
    return samples


def _search_cells(
    search: SearchSpec,
    space: dict[str, tuple[Distribution, str]],
    bases: list[TrialConfig],
    trees: list[dict],
    source: str,
    problems: list[str],
) -> list[SearchCell]:
    """optuna: each grid config (validated, and its tree) is a cell's base. Every bound of its space is validated on
    it, and must change nothing but the searched path: not the data a trial reads (its fingerprint is the cell's),
    not a field the model settles (a stored trial would not be found in its cell)."""
    cells = []
    for base, tree in zip(bases, trees):
        key = cell_key(base, space)
        choices: dict[str, list] = {}
        for path, (dist, field) in space.items():
            for value in dist.bounds():
                where = f"{source}: {field}.{path}: {path}={value!r}"
                cfg = _searched_config(tree, path, value, where, problems)
                if cfg is None:
                    continue
                if dist.choice is not None:
                    choices.setdefault(path, []).append(_get_path(cfg.model_dump(mode="json"), path))
                problems += _changed_beyond(base, cfg, space, where)
        space_only = {p: d for p, (d, _) in space.items()}
        budget = int(min(search.num_samples or 0, _space_size(space_only, choices)))
        cells.append(SearchCell(config=base, tree=tree, space=space_only, budget=budget, key=key, choices=choices))
    return cells


def _searched_config(tree: dict, path: str, value: Any, where: str, problems: list[str]) -> TrialConfig | None:
    """A cell's base with one searched value set, validated; None (and a problem) when the cell refuses it."""
    tree = copy.deepcopy(tree)
    set_path(tree, path, copy.deepcopy(value))
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as exc:
        problems.append(describe_errors(exc, f"{where}, in a cell of model {tree['model']['name']}"))
        return None


def _changed_beyond(base: TrialConfig, cfg: TrialConfig, space: dict, where: str) -> list[str]:
    """A searched value may change only itself (search.method optuna: see `_search_cells`)."""
    if splits_read(cfg.data) != splits_read(base.data) or cfg.data.cold_below != base.data.cold_below:
        return [f"{where}: changes the data a trial reads; search.method optuna cannot search it (grid it in axes)"]
    if cell_key(cfg, space) == cell_key(base, space):
        return []
    before, after = flatten_config(base.canonical()), flatten_config(cfg.canonical())
    changed = sorted(p for p in before.keys() | after.keys() if p not in space and before.get(p) != after.get(p))
    return [
        f"{where}: also changes {', '.join(changed)}, which model {base.model.name} settles from it; set "
        f"{'them' if len(changed) > 1 else 'it'} in trial:, so that a cell's trials differ only in the searched values "
        "(search.method optuna)"
    ]


def _space_size(space: dict[str, Distribution], choices: dict[str, list]) -> float:
    """Distinct configs the space holds (inf: a continuous range)."""
    size = 1.0
    for path, dist in space.items():
        if dist.choice is not None:
            size *= len({json.dumps(v, sort_keys=True) for v in choices.get(path, [])})
        elif dist.randint is not None:
            size *= dist.randint[1] - dist.randint[0] + 1
        else:
            return math.inf
    return size


def _get_path(tree: dict, path: str) -> Any:
    for part in path.split("."):
        tree = (tree or {}).get(part)
    return tree


def _record_axis_values(grid: list[list[dict]], axis_values: dict[str, list]) -> None:
    """Every swept value in spec order: the first value of an axis is its baseline (the report's)."""
    for options in grid:
        for path in options[0] if options else []:
            values = axis_values.setdefault(path, [])
            values += [a[path] for a in options if a[path] not in values]


def _trials(base: dict, grid: list[list[dict]], source: str, problems: list[str]) -> list[TrialConfig]:
    """The grid's product on `base`; the first combination that does not validate is named in `problems`."""
    trials = []
    for tree_i, combo in _combinations(base, grid):
        try:
            trials.append(TrialConfig.model_validate(tree_i))
        except ValidationError as exc:
            where_combo = ", ".join(f"{p}={v!r}" for a in combo for p, v in a.items())
            problems.append(describe_errors(exc, f"{source}: trial ({where_combo})"))
            break
    return trials


def _combinations(base: dict, grid: list[list[dict]]) -> Iterator[tuple[dict, tuple[dict, ...]]]:
    """The grid's product on `base`: each combination's config tree (not validated) and its assignments."""
    for combo in itertools.product(*grid):
        tree_i = copy.deepcopy(base)
        for assignment in combo:
            for path, value in assignment.items():
                set_path(tree_i, path, copy.deepcopy(value))
        yield tree_i, combo


def _asha_problems(spec: SweepSpec, trials: list[TrialConfig], source: str) -> list[str]:
    """ASHA ranks trials by a per-epoch metric: every trial of the spec must report the one it names."""
    asha = spec.asha
    if not asha:
        return []
    field = "search.method: asha" if spec.search.method == "asha" else "scheduler: asha"
    return [
        f"{source}: {field} ranks trials by per-epoch {asha.metric!r}; model {t.model.name!r} reports "
        f"{', '.join(sorted(t.model.per_epoch_metrics())) or 'no per-epoch metric'}"
        f"{' (it fits in one epoch)' if t.model.max_epochs() <= 1 else ''} "
        "(use scheduler: fifo / search.method: random, or drop it from this spec)"
        for t in {t.model.name: t for t in trials if asha.metric not in t.model.per_epoch_metrics()}.values()
    ]


def _search_problems(spec: SweepSpec, models: dict[str, ModelSpec], source: str) -> list[str]:
    """The search block as a whole: a method with what it needs, an objective that needs no test labels (unless it
    is named oracle), one scheduler."""
    search, field = spec.search, f"{source}: search"
    if search.method == "grid":
        given = [("search.space", search.space)] + [(f"models.{n}.space", m.space) for n, m in models.items()]
        return [
            f"{source}: {f}: set, but search.method is grid; name random, asha or optuna" for f, space in given if space
        ] + _objective_problems(search, field)
    problems = []
    if search.num_samples is None:
        problems.append(f"{field}.num_samples: required by search.method {search.method} (configs per grid cell)")
    problems += [
        f"{field}.space: model {name!r} has no searched parameter (search.space or models.{name}.space)"
        for name, m in models.items()
        if not (search.space or m.space)
    ]
    if search.method == "asha" and spec.scheduler != "fifo":
        problems.append(f"{field}.method: asha is the scheduler already; drop scheduler: from this spec")
    if search.method == "optuna" and spec.scheduler != "fifo":
        problems.append(
            f"{field}.method: optuna runs every trial to its end; drop scheduler: from this spec (or use method asha: "
            "random samples, ASHA stops the weak early)"
        )
    return problems + _objective_problems(search, field)


def _objective_problems(search: SearchSpec, field: str) -> list[str]:
    metric = METRICS.get(search.column)
    allowed = [m.column for m in METRICS.values() if not m.needs_test_labels and m.higher_is_better is not None]
    if metric is None or metric.higher_is_better is None:
        return [
            f"{field}.objective: {search.objective!r} is not a figure of merit of the results; "
            f"expected one of {', '.join(allowed)} (or oracle:<test metric>, e.g. oracle:image_auroc)"
        ]
    if metric.needs_test_labels and not search.oracle:
        return [
            f"{field}.objective: {search.column!r} is computed from test labels: selecting on it tunes on the test "
            f"set; use one of {', '.join(allowed)}, or name it oracle:{search.column} (the report labels every pick "
            "ORACLE)"
        ]
    if search.oracle and not metric.needs_test_labels:
        return [f"{field}.objective: {search.column!r} needs no test labels; drop the oracle: prefix"]
    return []


def _drop_repeated_samples(trials: list[TrialConfig]) -> tuple[list[TrialConfig], int]:
    """A discrete space can draw one config twice: it runs once (the count is shown by `sweep plan`)."""
    first = {t.trial_id: t for t in reversed(trials)}  # each id's first sample
    kept = [t for t in trials if first.pop(t.trial_id, None) is not None]
    return kept, len(trials) - len(kept)


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


def _check_values(
    base: dict, grid: list[list[dict]], model: str, source: str, problems: list[str], kind: str = "axis value"
) -> None:
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
                f"{source}: model {model}, {kind} {label}: {p}" for p in _problems(tree) if p not in base_problems
            ]


def _problems(tree: dict) -> list[str]:
    try:
        TrialConfig.model_validate(tree)
    except ValidationError as exc:
        return describe_errors(exc, "").splitlines()
    return []
