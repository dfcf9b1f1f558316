"""Numbers behind the sweep report: loading, axes, summaries, paired comparisons, failures (a search's own numbers:
sweeps.report.search).

Pure pandas/numpy over the rows the store returns (no plotting), so the statistics can be tested on their own.

Conventions
- A config value is compared through :func:`value_key`, a canonical string: ``1``, ``1.0`` and
  ``"1"`` from a nullable int column all read ``"1"``; JSON lists are re-serialised canonically;
  null (an axis that does not apply to a model) is :data:`NULL`.
- Means are over result rows (one per trial x test domain); ``std`` is the sample std (ddof=1),
  NaN when n < 2.
- Paired deltas: ``metric(value) - metric(baseline)`` between trials identical in every other
  config column (seed and test domain included), with a seeded percentile bootstrap CI.
- Cells are model x test domain, the test domain labelled with what the model was fitted on when that is
  not the test domain itself (:func:`tested_on`: ``domain_C (trained on all)``), so a model fitted on every
  domain (``data.domain: all``) or on another one never shares a cell with one fitted on the test domain.
  The ``data.domain`` axis itself is compared and plotted per plain test domain: that is its question.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hdmap import metric_catalogue

if TYPE_CHECKING:
    import pyarrow as pa

    from sweeps.meta import SearchMeta, SweepMeta
    from sweeps.store import ResultStore

NULL = "∅"

CONFIG_SECTIONS = ("data.", "model.", "eval.")
NOT_AXES = {"model.name", "data.root", "seed"}
N_BOOT = 2000
BOOT_SEED = 20240601
CI_LEVEL = 0.95
MIN_PAIRS = 3  # fewer pairs: the bootstrap CI means little, so no verdict is given

VERDICT_BETTER = "better"
VERDICT_WORSE = "worse"
VERDICT_UNCLEAR = "no clear difference"
VERDICT_FEW = "too few pairs"


# --------------------------------------------------------------------------- values


def value_key(v: Any) -> str:
    """Canonical text of one config value (see module docstring)."""
    if v is None:
        return NULL
    if isinstance(v, (bool, np.bool_, int, np.integer, float, np.floating)):
        return _number_key(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    if isinstance(v, np.ndarray):
        return value_key(v.tolist())
    try:
        if pd.isna(v):
            return NULL
    except (TypeError, ValueError):
        pass
    if isinstance(v, str):
        return _text_key(v)
    return str(v)


def _number_key(v: bool | int | float | np.generic) -> str:
    """`true`/`false`; an integral number as an int (`1.0` -> `1`); NaN as null."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return NULL
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _text_key(v: str) -> str:
    """JSON text (a list or object) re-serialised canonically; any other text as it is."""
    if v.strip()[:1] in ("[", "{"):
        try:
            return value_key(json.loads(v))
        except ValueError:
            return v
    return v


def sort_values(keys: list[str], preferred: list[str] | None = None) -> list[str]:
    """Axis values in display order: an explicit order first, then numeric if all numeric, else text."""
    keys = list(dict.fromkeys(k for k in keys if k != NULL))
    head = list(dict.fromkeys(k for k in (preferred or []) if k in keys))  # a zip group repeats values
    rest = [k for k in keys if k not in head]

    def num(k: str) -> float | None:
        try:
            return float(k)
        except ValueError:
            return None

    if rest and all(num(k) is not None for k in rest):
        rest.sort(key=lambda k: num(k))
    else:
        rest.sort()
    return head + rest


# --------------------------------------------------------------------------- loading


@dataclass
class SweepData:
    name: str
    sweep_dir: str  # the store's URI: a local folder or s3://...
    rows: pd.DataFrame  # every row, deduplicated
    ok: pd.DataFrame  # status ok rows of trials that finished
    keys: pd.DataFrame  # value_key of every config column, aligned with `ok`
    config_cols: list[str]
    axes: list[str]
    axes_source: str  # "sweep.json" | "inferred"
    value_order: dict[str, list[str]]  # axis -> ordered value keys
    baselines: dict[str, str]  # axis -> baseline value key
    comparison_axes: list[str]
    compare_metrics: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)
    n_trials_ok: int = 0
    n_trials_error: int = 0
    n_trials_missing: int = 0  # planned (sweep.json) but without any row: interrupted, killed or still running
    n_trials_planned: int | None = None
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    search: SearchMeta | None = None  # sweep.json's search record (None: a grid); the report's search section


def config_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c.startswith(CONFIG_SECTIONS) and c != "data.root"]
    if "seed" in df.columns:
        cols.append("seed")
    return cols


def first_error_line(text: Any, limit: int = 300) -> str:
    """The informative line of an error: its first line, or a traceback's last line."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def load(store: ResultStore) -> SweepData:
    """The sweep's rows through its store (any pyarrow filesystem) and its sweep.json (`ResultStore.meta`)."""
    return from_table(store.results(), store.meta(), store.uri)


def from_table(results: pa.Table, meta: SweepMeta | None, sweep_dir: str) -> SweepData:
    """Rows on the results schema (hdmap.results: every column present) and the sweep's metadata -> SweepData.

    The store keeps one part per trial (a retry replaces it), so a trial's rows share one status."""
    df = results.to_pandas()
    notes: list[str] = []
    if "started_at" in df.columns:
        df = df.sort_values("started_at", kind="stable", na_position="first")
    ok = df[df["status"] == "ok"].reset_index(drop=True)
    err = df[df["status"] != "ok"]

    name = meta.name if meta else None
    if not name and df["sweep"].notna().any():
        name = str(df["sweep"].dropna().iloc[0])
    name = str(name or sweep_dir.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])  # a URI's query is no name

    cfg = config_columns(df)
    keys = pd.DataFrame({c: ok[c].map(value_key) for c in cfg}, index=ok.index)
    keys["test_domain"] = ok["test_domain"].map(value_key)
    keys["model"] = ok["model"].map(value_key)

    # axes: the spec's (sweep.json, values in spec order: the first is the baseline), else inferred --------------
    value_order: dict[str, list[str]] = {}
    if meta and meta.axes:
        missing = [a for a in meta.axes if a not in keys.columns]
        if missing:
            notes.append(f"sweep.json lists axes with no results column: {', '.join(missing)} (ignored).")
        axes = [a for a in meta.axes if a in keys.columns and a != "seed"]
        value_order = {a: [value_key(_as_recorded(a, v)) for v in meta.axes[a]] for a in axes}
        axes_source = "sweep.json"
    else:
        axes = [
            c
            for c in cfg
            if c not in NOT_AXES and not c.startswith("runtime.") and keys[c][keys[c] != NULL].nunique() > 1
        ]
        axes_source = "inferred"
    for a in axes:
        value_order[a] = sort_values(list(keys[a]), value_order.get(a))

    baselines = {a: vals[0] for a, vals in value_order.items() if vals}
    comparison_axes = list(axes)
    single_domain = "data.domain" in keys.columns and bool((keys["data.domain"] == keys["test_domain"]).all())
    if single_domain and "data.domain" in comparison_axes:
        # Train = test domain everywhere: domains are never paired (their test domains differ).
        comparison_axes.remove("data.domain")

    n_planned, n_missing = missing_trials(meta, set(df["trial_id"]))
    return SweepData(
        name=name,
        sweep_dir=sweep_dir,
        rows=df,
        ok=ok,
        keys=keys,
        config_cols=cfg,
        axes=axes,
        axes_source=axes_source,
        value_order=value_order,
        baselines=baselines,
        comparison_axes=comparison_axes,
        compare_metrics={a: metric_catalogue.columns(view="comparison") for a in axes},
        notes=notes,
        n_trials_ok=int(ok["trial_id"].nunique()),
        n_trials_error=int(err["trial_id"].nunique()),
        n_trials_missing=n_missing,
        n_trials_planned=n_planned,
        failures=failures_table(err, axes),
        search=meta.search if meta else None,
    )


def _as_recorded(axis: str, value: Any) -> Any:
    """A spec's axis value as the results hold it: `data.domain: [all, C]` is recorded as `all`, `domain_C`."""
    if axis != "data.domain":
        return value
    from hdmap.data.layout import normalize_train_domain

    try:
        return normalize_train_domain(value)
    except ValueError:
        return value


def missing_trials(meta: SweepMeta | None, recorded: set[str]) -> tuple[int | None, int]:
    """(planned, planned without a row) from sweep.json: its trial ids, else its n_trials."""
    if meta is None:
        return None, 0
    if meta.trial_ids is not None:
        return len(meta.trial_ids), len(set(meta.trial_ids) - recorded)
    if meta.n_trials is not None:
        return meta.n_trials, max(0, meta.n_trials - len(recorded))
    return None, 0


def failures_table(err: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    cols = ["trial_id", "model", "domain", "config", "error"]
    if err.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for tid, g in err.groupby("trial_id", sort=False):
        row = g.iloc[0]
        domain = None
        for c in ("data.domain", "train_domain", "test_domain"):
            if c in g.columns and value_key(row.get(c)) != NULL:
                domain = value_key(row[c])
                break
        cfg = ", ".join(
            f"{a}={value_key(row[a])}"
            for a in axes
            if a in g.columns and a != "data.domain" and value_key(row[a]) != NULL
        )
        if "seed" in g.columns and value_key(row["seed"]) != NULL:
            cfg = (cfg + ", " if cfg else "") + f"seed={value_key(row['seed'])}"
        out.append(
            {
                "trial_id": tid,
                "model": row.get("model"),
                "domain": domain or "",
                "config": cfg,
                "error": first_error_line(row.get("error")),
            }
        )
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------- summaries


def metric_values(df: pd.DataFrame, m: str) -> pd.Series:
    """Column `m` as floats; all NaN where the rows lack it (a metric newer than the rows)."""
    if m not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[m], errors="coerce").astype(float)


def tested_on(rows: pd.DataFrame) -> pd.Series:
    """Each row's test domain as a report cell names it: `domain_C`, or `domain_C (trained on all)` where the
    model was fitted on something else (every domain, or another domain in a cross-domain trial)."""
    test = rows["test_domain"].astype(str)
    if "train_domain" not in rows.columns:
        return test
    train = rows["train_domain"].astype(str)
    return test.where(train == test, test + " (trained on " + train + ")")


def summarize(ok: pd.DataFrame, metrics: list[str], by: tuple[str, ...] = ("model", "test_domain")) -> pd.DataFrame:
    """Tidy table: by..., metric, mean, std, n (over result rows); `test_domain` as `tested_on` labels it."""
    by = list(by)
    cols = by + ["metric", "mean", "std", "n"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    if "test_domain" in by:
        ok = ok.assign(test_domain=tested_on(ok))
    rows = []
    for keys, g in ok.groupby(by, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for m in metrics:
            x = metric_values(g, m).dropna().to_numpy()
            rows.append(
                {
                    **dict(zip(by, keys)),
                    "metric": m,
                    "mean": float(x.mean()) if x.size else np.nan,
                    "std": float(x.std(ddof=1)) if x.size > 1 else np.nan,
                    "n": int(x.size),
                }
            )
    out = pd.DataFrame(rows, columns=cols)
    out["n"] = out["n"].astype(int)
    return out


def configs_per_group(data: SweepData) -> dict[tuple[str, str], int]:
    """How many distinct configurations (seed aside) are pooled in each model x test-domain cell."""
    other = [c for c in data.config_cols if c != "seed"]
    if data.ok.empty:
        return {}
    sig = data.keys[other].agg("\x1f".join, axis=1) if other else pd.Series("", index=data.ok.index)
    frame = pd.DataFrame({"model": data.ok["model"], "test_domain": tested_on(data.ok), "sig": sig})
    return {k: int(v) for k, v in frame.groupby(["model", "test_domain"])["sig"].nunique().items()}


def axis_summary(data: SweepData, axis: str) -> pd.DataFrame:
    """The catalogue's ablation metrics vs axis value per model x test domain.

    Rows where the axis does not apply (null) are left out. Other axes are averaged within each
    seed first, so the std is across seeds (n = seeds); without a seed column, across trials.
    """
    cols = ["model", "test_domain", "value", "metric", "mean", "std", "n"]
    k = data.keys[axis]
    mask = k != NULL
    if not mask.any():
        return pd.DataFrame(columns=cols)
    # e.g. gating accuracy, only where some trial of this axis reports it
    metrics = metric_catalogue.columns(view="ablation") + [
        m
        for m in metric_catalogue.columns(view="ablation-when-reported")
        if m in data.ok.columns and data.ok.loc[mask, m].notna().any()
    ]
    frame = pd.DataFrame(
        {
            "model": data.ok.loc[mask, "model"],
            "test_domain": _cell_domain(data, axis)[mask],
            "value": k[mask],
            "seed": data.keys.loc[mask, "seed"] if "seed" in data.keys.columns else data.ok.loc[mask, "trial_id"],
        }
    )
    for m in metrics:
        frame[m] = metric_values(data.ok.loc[mask], m)
    per_seed = frame.groupby(["model", "test_domain", "value", "seed"], sort=False)[metrics].mean().reset_index()
    out = summarize(per_seed, metrics, by=("model", "test_domain", "value"))
    order = {v: i for i, v in enumerate(data.value_order.get(axis, []))}
    out["_o"] = out["value"].map(lambda v: order.get(v, len(order)))
    return out.sort_values(["model", "test_domain", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _cell_domain(data: SweepData, axis: str) -> pd.Series:
    """The test-domain label of each row in `axis`'s plots and comparisons: plain for the train domain's own
    axis (its values are what the label would add), `tested_on` otherwise."""
    return data.ok["test_domain"].astype(str) if axis == "data.domain" else tested_on(data.ok)


def is_single_domain(data: SweepData) -> bool:
    """Every result row tests on the domain it was trained on (data.domain == test_domain)."""
    if "data.domain" not in data.keys.columns or data.ok.empty:
        return False
    return bool((data.keys["data.domain"] == data.keys["test_domain"]).all())


# --------------------------------------------------------------------------- comparisons


def bootstrap_ci(
    deltas: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean; CI is NaN with fewer than 2 values."""
    d = np.asarray(deltas, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, np.nan, np.nan
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // d.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        boots[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)])
    return mean, float(lo), float(hi)


def verdict(metric: str, n: int, lo: float, hi: float) -> str:
    if n < MIN_PAIRS or not (np.isfinite(lo) and np.isfinite(hi)):
        return VERDICT_FEW
    sign = -1.0 if metric_catalogue.lower_is_better(metric) else 1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return VERDICT_BETTER
    if hi < 0:
        return VERDICT_WORSE
    return VERDICT_UNCLEAR


COMPARISON_COLUMNS = [
    "axis",
    "value",
    "baseline",
    "metric",
    "scope",
    "model",
    "test_domain",
    "n_pairs",
    "mean_delta",
    "ci_low",
    "ci_high",
    "verdict",
]


def comparisons(data: SweepData, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[pd.DataFrame, list[str]]:
    """Paired deltas for every comparison axis and non-baseline value; plus notes on axes without pairs.

    scope 'all' pools every pair; further rows break it down per model x test domain (when there
    are several).
    """
    rows: list[dict] = []
    notes: list[str] = []
    if data.ok.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS), notes
    pair_cols = list(dict.fromkeys(data.config_cols + ["model", "test_domain"]))
    for axis in data.comparison_axes:
        base = data.baselines.get(axis)
        values = [v for v in data.value_order.get(axis, []) if v != base]
        if base is None or base not in data.value_order.get(axis, []) or not values:
            continue
        other = [c for c in pair_cols if c != axis]
        sig = data.keys[other].agg("\x1f".join, axis=1)
        ax = data.keys[axis]
        metrics = data.compare_metrics[axis]
        frame = pd.DataFrame(
            {"sig": sig, "value": ax, "model": data.ok["model"], "test_domain": _cell_domain(data, axis)}
        )
        for m in metrics:
            frame[m] = metric_values(data.ok, m)
        b = frame[frame["value"] == base].groupby("sig")[metrics].mean()
        any_pairs = False
        for v in values:
            cur = frame[frame["value"] == v]
            cur_mean = cur.groupby("sig").agg(
                {**{m: "mean" for m in metrics}, "model": "first", "test_domain": "first"}
            )
            joined = cur_mean.merge(b.add_suffix("__base"), how="inner", left_index=True, right_index=True)
            if joined.empty:
                continue
            any_pairs = True
            groups = [("all", None, None, joined)]
            cells = list(joined.groupby(["model", "test_domain"], sort=True))
            if len(cells) > 1:
                groups += [(f"{mo} · {td}", mo, td, g) for (mo, td), g in cells]
            for m in metrics:
                for scope, mo, td, g in groups:
                    d = (g[m] - g[f"{m}__base"]).to_numpy(dtype=float)
                    d = d[np.isfinite(d)]
                    mean, lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
                    rows.append(
                        {
                            "axis": axis,
                            "value": v,
                            "baseline": base,
                            "metric": m,
                            "scope": scope,
                            "model": mo,
                            "test_domain": td,
                            "n_pairs": int(d.size),
                            "mean_delta": mean,
                            "ci_low": lo,
                            "ci_high": hi,
                            "verdict": verdict(m, int(d.size), lo, hi),
                        }
                    )
        if not any_pairs:
            notes.append(
                f"{axis}: no paired trials (no trial at a non-baseline value matches a baseline trial in every "
                f"other config column, seed and test domain) — no deltas."
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS), notes
