"""The one results schema: a row per (trial, test domain), a row per scored test image.

The config columns are derived from the config classes (every model's fields as `model.<field>`,
null where a model lacks the field), so adding a model or a field never needs a schema edit here.
How each metric column is labelled, ranked, grouped and shown: hdmap.metric_catalogue.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

from hdmap.metrics import METRIC_KEYS

ROW_FIELDS: list[tuple[str, pa.DataType]] = [
    ("trial_id", pa.string()),
    ("sweep", pa.string()),
    ("spec_hash", pa.string()),
    ("attempts", pa.int64()),  # sweeps: how many times the trial was started (> 1: retried after a failure)
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),
    ("model", pa.string()),
    ("train_domain", pa.string()),
    ("test_domain", pa.string()),
    ("seed", pa.int64()),
    ("n_fit", pa.int64()),
    # epochs actually trained (early stopping may end before model.epochs; a pruned row: before ASHA stopped it)
    ("epochs_run", pa.int64()),
    ("references_removed", pa.int64()),
    # validation normals vs their synthetic faults (hdmap.data.synthetic_val): one figure per trial, no test label;
    # null on error rows and rows written before it existed
    ("val_synth_auroc", pa.float64()),
    ("pretrained_weights", pa.string()),
    ("features_s", pa.float64()),  # feature cache: time to compute or map the splits' backbone features
    ("fit_s", pa.float64()),
    ("predict_s", pa.float64()),
    ("total_s", pa.float64()),
    ("peak_rss_mb", pa.float64()),
    ("peak_gpu_mb", pa.float64()),
    ("cache_hits", pa.int64()),  # disk-cache entries (features, coreset, kNN) reused / computed by this trial;
    ("cache_misses", pa.int64()),  # null = no cache (`--no-feature-cache`, or `hdmap trial` without one)
    ("device", pa.string()),
    ("host", pa.string()),
    ("git_sha", pa.string()),
    ("versions", pa.string()),  # JSON: package -> version
    # JSON {split or sidecar: hash} of the data the trial read (hdmap.data.fingerprint): a resumed sweep or an
    # `hdmap trial --out` refuses a stored result of the same trial on other data; null: not recorded (older rows)
    ("data_fingerprint", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("config_json", pa.string()),
]

SCORE_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("sweep", pa.string()),
        ("test_domain", pa.string()),
        ("file", pa.string()),
        ("label", pa.int8()),
        ("condition", pa.string()),
        ("score", pa.float64()),
        ("gate", pa.string()),
        ("severity_pred", pa.float64()),
        ("severity_true", pa.float64()),
    ]
)


def _arrow_type(annotation: Any) -> pa.DataType:
    """int/float/bool/str map to Arrow scalars; anything structured (lists, tuples, unions) is JSON text."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _arrow_type(args[0]) if len(args) == 1 else pa.string()
    if origin is typing.Annotated:
        return _arrow_type(get_args(annotation)[0])
    if origin is Literal:
        values = get_args(annotation)
        return _arrow_type(type(values[0])) if len({type(v) for v in values}) == 1 else pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(annotation, pa.string())


def config_columns() -> dict[str, pa.DataType]:
    """Dotted config path -> Arrow type, over TrialConfig and every registered model config."""
    from hdmap.config import TrialConfig
    from hdmap.models.registry import MODELS

    columns: dict[str, pa.DataType] = {}

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, info in cls.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif name != "model" or prefix:
                columns.setdefault(f"{prefix}{name}", _arrow_type(ann))

    walk(TrialConfig, "")
    for entry in MODELS.values():
        walk(entry.config, "model.")
    columns.pop("runtime.progress", None)
    columns.pop("runtime.data_fingerprint", None)  # the row's own `data_fingerprint` column
    return columns


def results_schema() -> pa.Schema:
    fields = list(ROW_FIELDS)
    fields += [(key, pa.int64() if key.startswith("n_") else pa.float64()) for key in METRIC_KEYS]
    taken = {name for name, _ in fields}
    fields += [(name, dtype) for name, dtype in config_columns().items() if name not in taken]  # e.g. `seed`
    return pa.schema(fields)


def flatten_config(canonical: dict) -> dict[str, Any]:
    """Nested config -> {dotted path: value}; structured values become JSON text (see `_arrow_type`)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(canonical, "")
    return out


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> a table with exactly `schema`; missing keys are null, structured values JSON."""
    columns = {}
    for f in schema:
        values = [row.get(f.name) for row in rows]
        if pa.types.is_string(f.type):
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        elif pa.types.is_integer(f.type):
            values = [None if v is None else int(v) for v in values]
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=schema)
