"""TrialConfig: the one config schema of a trial (`hdmap trial`, and every trial of a sweep).

Every field has a default; unknown keys are rejected with the field path and the allowed names.
`trial_id` is a hash of the canonical config, so the same config always names the same trial.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainValidator,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError

from hdmap.data.layout import ALL_DOMAINS, DOMAINS, normalize_domain, normalize_train_domain
from hdmap.data.transform_options import NORMALIZATIONS, PER_IMAGE_NORMS, RESIZE_METHODS
from hdmap.errors import ConfigError
from hdmap.metrics import THRESHOLD_METHODS
from hdmap.models.configs.base import ModelConfig, StrictModel
from hdmap.models.registry import MODELS

Domain = Annotated[str, BeforeValidator(normalize_domain)]
TrainDomain = Annotated[str, BeforeValidator(normalize_train_domain)]
DEFAULT_MODEL = "patchcore"
MAX_IMAGE_SIDE = 4096
# fields added after results existed, as (section, field): left out of `trial_id` at their default, so earlier ids
# stay valid
ID_OMITTED_AT_DEFAULT = (
    ("data", "cold_below"),
    ("data", "allow_negative"),
    ("data", "per_image_norm"),
    ("data", "center_crop"),
    ("eval", "val_synth"),
)


class DataConfig(StrictModel):
    """What a trial fits on and is evaluated on (the rules: hdmap/data/splits.py).

    `domain: all` fits ONE model on the train normals of all four domains (the multi-class setting) and, by
    default, tests on all four, one result row each. `train_shots` and `val_fraction` then apply to each domain
    (every domain contributes the same number of fit images; n_fit = 4 x train_shots), and each test domain's
    threshold comes from that domain's own validation normals."""

    root: str = "data/hdmap-sim"
    domain: TrainDomain = Field(
        "domain_C", description="the domain fitted on; 'all': one model on the train normals of every domain"
    )
    test_domains: list[Domain] | Literal["all"] | None = Field(
        None,
        description="None: test on `domain` (every domain for `domain: all`); a list or 'all': one result row "
        "per test domain",
    )
    train_shots: int | None = Field(
        None,
        ge=0,
        description="images the model is fitted on, per train domain; None = all train; 0 = none (zero-shot models)",
    )
    reference_source: Literal["train", "test"] = Field(
        "train", description="'test' takes references from test/good and removes them from evaluation"
    )
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="train normals held out (per train domain) for thresholds / early stopping"
    )
    image_size: tuple[int, int] = Field(
        (224, 224), description="model input (H, W); an int means square; unset: the backbone's pretraining size"
    )
    resize: Literal[RESIZE_METHODS] = "bilinear"  # type: ignore[valid-type]
    center_crop: tuple[int, int] | None = Field(
        None, description="(H, W) cut from the centre after the resize (Dinomaly: 448 -> 392); an int means square"
    )
    to_rgb: bool = True
    normalization: Literal[NORMALIZATIONS] = "imagenet"  # type: ignore[valid-type]
    per_image_norm: Literal[PER_IMAGE_NORMS] = Field(  # type: ignore[valid-type]
        "none", description="rescale each image to [0, 1] (its min-max or robust percentiles) before the resize"
    )
    cold_below: int | None = Field(
        None,
        ge=0,
        description="test file number < cold_below is cold (any numbering); None: the index rule or "
        "<root>/conditions.csv (hdmap/data/layout.py)",
    )
    allow_negative: bool = Field(False, description="accept negative pixel values (HDMAP files are scaled to >= 0)")
    _shots_set_by: str = PrivateAttr("data.train_shots")  # a few-shot model's own field, when it set train_shots

    @property
    def shots_label(self) -> str:
        """`FIELD=N` as the user set the fit count (`model.k_shot=4` for winclip): what an error about it names."""
        return f"{self._shots_set_by}={self.train_shots}"

    @field_validator("image_size", "center_crop", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("image_size")
    @classmethod
    def _sane_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= side <= MAX_IMAGE_SIDE for side in v):
            raise ValueError(f"each side must be between 1 and {MAX_IMAGE_SIDE} px, e.g. 224 or [64, 192]")
        return v

    def train_domains(self) -> list[str]:
        """The domains whose train normals the model is fitted on."""
        return list(DOMAINS) if self.domain == ALL_DOMAINS else [self.domain]

    @model_validator(mode="after")
    def _crop_inside(self) -> DataConfig:
        crop = self.center_crop
        if crop is not None and not all(1 <= c <= s for c, s in zip(crop, self.image_size)):
            raise ValueError(
                f"data.center_crop {list(crop)} must fit inside data.image_size {list(self.image_size)} (each side)"
            )
        return self

    @property
    def model_input_size(self) -> tuple[int, int]:
        """(H, W) the model receives: the crop if set, else the resize target."""
        return self.center_crop or self.image_size

    def resolved_test_domains(self) -> list[str]:
        if self.test_domains is None:
            return self.train_domains()
        if self.test_domains == "all":
            return list(DOMAINS)
        return list(dict.fromkeys(self.test_domains))


class ValSynthConfig(StrictModel):
    """The synthetic validation set behind `val_synth_auroc` (hdmap/data/synthetic_val.py): validation normals and
    the same normals with one seeded fault each; no test image, no test label."""

    kind: Literal["lines", "cutpaste"] = Field(
        "lines", description="'lines': horizontal bands (HorizontalLineFaults); 'cutpaste': one scaled cut-paste patch"
    )
    seed: int = Field(0, description="seeds the faults, not the trial seed: every trial sees the same faulted set")
    severity_max: float | None = Field(
        None,
        gt=0,
        description="peak added value, raw HDMAP units; None: the generator's default (lines 0.5, cutpaste 1.0)",
    )


class EvalConfig(StrictModel):
    threshold_method: Literal[THRESHOLD_METHODS] = "val_percentile"  # type: ignore[valid-type]
    threshold_percentile: float = Field(99.0, ge=0, le=100)
    threshold_n_std: float = 3.0
    val_synth: ValSynthConfig = ValSynthConfig()


class RuntimeConfig(StrictModel):
    """How a trial runs, not what it computes: excluded from `trial_id`."""

    accelerator: str = "auto"
    num_workers: int = Field(0, ge=0)
    progress: bool = False
    feature_cache: str | None = Field(
        None, description="directory of the disk cache shared by trials (backbone features, coreset, kNN); None = off"
    )
    data_fingerprint: str | None = Field(
        None,
        description="set by the launcher (`hdmap trial`, the sweep's driver), not by hand: the data as listed before "
        "launch (hdmap.data.fingerprint), carried to every row the trial writes, error rows included",
    )


def _model_config(value: Any) -> ModelConfig:
    """The `model` section as the config class its `name` selects, importing only that model's config module.

    What a discriminated union over every model would do, without importing every model: an unknown name is a
    `union_tag_invalid` error, and the errors of the chosen class carry its name in their location
    (`model.patchcore.k`), as a union's do (`describe_errors` reads them)."""
    if isinstance(value, ModelConfig):
        return value
    if not isinstance(value, dict):
        raise PydanticKnownError("model_attributes_type")
    name = value.get("name")
    if name not in MODELS:
        raise PydanticCustomError(
            "union_tag_invalid",
            "Input tag {tag!r} found using 'name' does not match any of the expected tags: {expected_tags}",
            {"tag": name, "expected_tags": ", ".join(map(repr, MODELS)), "discriminator": "'name'"},
        )
    try:
        return MODELS[name].config.model_validate(value)
    except ValidationError as exc:
        errors = [
            {
                "type": e["type"],
                "loc": (name, *e["loc"]),
                "input": e["input"],
                **({"ctx": e["ctx"]} if "ctx" in e else {}),
            }
            for e in exc.errors(include_url=False)
        ]
        raise ValidationError.from_exception_data(exc.title, errors) from None


AnyModelConfig = Annotated[SerializeAsAny[ModelConfig], PlainValidator(_model_config)]


class TrialConfig(StrictModel):
    data: DataConfig = DataConfig()
    model: AnyModelConfig = Field(default_factory=lambda: MODELS[DEFAULT_MODEL].config())
    eval: EvalConfig = EvalConfig()
    seed: int = 0
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_model_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "name" not in data["model"]:
            data = {**data, "model": {"name": DEFAULT_MODEL, **data["model"]}}
        return data

    @model_validator(mode="after")
    def _model_settles_data(self) -> TrialConfig:
        """What the model decides about its data, where the config leaves it open, then checks that need both.

        - `data_defaults()`: unset data fields take the model's native input, e.g. a timm backbone's pretraining size
          (518 x 518 for DINOv2 ViTs), WinCLIP's 240 x 240 nearest with CLIP mean/std.
        - `data_requirements()`: data fields the model only works with (draem_sevnet: gray input); set otherwise: error.
        - `fit_shots()`: a few-shot model's own shot count is `data.train_shots` (one source of truth; 0 = zero-shot).
        """
        model, data = self.model, self.data
        for field, value in model.data_defaults().items():
            if field not in data.model_fields_set:
                setattr(data, field, value)
        for field, (value, why) in model.data_requirements().items():
            if field in data.model_fields_set and getattr(data, field) != value:
                raise ValueError(
                    f"data.{field}={_yaml(getattr(data, field))} does not suit model {model.name}: {why}; "
                    f"set data.{field}={_yaml(value)} or leave it unset"
                )
            setattr(data, field, value)
        shots = model.fit_shots()
        if shots is not None:
            if "train_shots" in data.model_fields_set and data.train_shots != shots:
                raise ValueError(
                    f"data.train_shots={data.train_shots} contradicts model.{model.shots_field}={shots}: model "
                    f"{model.name} fits on exactly its {model.shots_field} references; leave data.train_shots unset"
                )
            data.train_shots = shots
            data._shots_set_by = f"model.{model.shots_field}"
        elif data.train_shots == 0:
            raise ValueError(
                f"data.train_shots=0 leaves model {model.name} nothing to fit on (0 is for zero-shot models); use >= 1"
            )
        if data.reference_source == "test" and data.train_shots is None:
            raise ValueError("data.reference_source='test' needs data.train_shots (how many test/good references)")
        problem = model.input_size_problem(data.model_input_size)
        if problem:
            which = "data.center_crop" if data.center_crop else "data.image_size"
            raise ValueError(f"{which} does not suit model {model.name}: {problem}")
        return self

    def canonical(self) -> dict:
        """The semantic config (runtime excluded), as plain JSON data."""
        tree = self.model_dump(mode="json", exclude={"runtime"})
        for section, name in ID_OMITTED_AT_DEFAULT:
            default = type(getattr(self, section)).model_fields[name].default
            if tree[section][name] == (default.model_dump(mode="json") if isinstance(default, BaseModel) else default):
                del tree[section][name]
        return tree

    @property
    def trial_id(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `3`, `0.1`, `true`, `[blocks.8, blocks.11]`, `C`."""
    return yaml.safe_load(text) if text != "" else ""


def _yaml(value: Any) -> str:
    """A value as `--set` takes it back: `false`, `none`, `3`."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def set_path(tree: dict, path: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating intermediate dicts.

    Under a sweep spec's `axes` the rest of the path is one key, since axes are named by dotted config
    paths: `axes.model.k=[1,9]` and `models.ca_patchcore.axes.model.gating=[mixed,p90]` set one axis."""
    parts = path.split(".")
    if "axes" in parts[:-1]:
        cut = parts.index("axes") + 1
        parts = parts[:cut] + [".".join(parts[cut:])]
    *parents, leaf = parts
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: {key!r} is not a section")
    node[leaf] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load keeps the last of two equal keys: a second `axes:` in a spec would silently drop the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` followed by an own key is an override YAML means
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor's own error follows
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} on line {line} (first on line {first}); YAML would keep only "
                    "the last one: merge them into one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_tree(path: str | Path, expected: str) -> dict:
    """A YAML file that must hold a mapping (no key twice at any level); ConfigError naming the file otherwise."""
    try:
        tree = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; expected a YAML file ({expected})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a YAML file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping ({expected}), got {type(tree).__name__}")
    return tree


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    """`PATH=VALUE` strings (as given to `--set`) applied to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. model.k=3")
        key, text = item.split("=", 1)
        set_path(tree, key.strip(), parse_value(text))
    return tree


def load_trial_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrialConfig:
    """YAML file (optional) + `PATH=VALUE` overrides -> validated TrialConfig."""
    tree = read_yaml_tree(path, "sections data, model, eval, seed") if path is not None else {}
    apply_overrides(tree, overrides)
    return validate_trial_config(tree, str(path) if path is not None else "command line")


def validate_trial_config(tree: dict, source: str = "config") -> TrialConfig:
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None


def describe_errors(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: field.path: what is wrong; allowed: ...`."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path, owner = _resolve_loc(loc)
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(owner.model_fields) if owner else "?"
            lines.append(f"{source + ': ' if source else ''}{path}: unknown field; allowed here: {allowed}")
        elif err["type"] == "union_tag_invalid":
            lines.append(
                f"{source + ': ' if source else ''}{path}.name: unknown model {err['input'].get('name')!r}; "
                f"allowed: {', '.join(MODELS)}"
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"  # a section: too long
            where = "" if not path or msg.startswith(f"{path}.") else f"{path}: "  # a message naming its own field
            lines.append(f"{source + ': ' if source else ''}{where}{msg}{got}")
    return "\n".join(lines)


def _resolve_loc(loc: list[str]) -> tuple[str, type[BaseModel] | None]:
    """Drop pydantic's union-tag segments (`model.patchcore.k` -> `model.k`); return the class owning the last field."""
    owner: type[BaseModel] | None = TrialConfig
    parts: list[str] = []
    for i, part in enumerate(loc):
        if part in MODELS and parts and parts[-1] == "model":
            owner = MODELS[part].config
            continue
        parts.append(part)
        if i < len(loc) - 1:
            owner = _section_class(owner, part) if owner is not None and part in owner.model_fields else None
    return ".".join(parts), owner


def _section_class(owner: type[BaseModel], field: str) -> type[BaseModel] | None:
    annotation = owner.model_fields[field].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
