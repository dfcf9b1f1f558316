"""`hdmap` command line: simulate | trial | models | sweep plan | sweep run | report.

The top layer: it may import everything below it (hdmap, the sweep modules); nothing imports it.
"""

from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hdmap.errors import UserError, disk_full
from sweeps.redact import redact, redact_uri

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="HDMAP anomaly-detection trials and sweeps.",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, however narrow


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


class _Interrupted(BaseException):
    """SIGINT or SIGTERM during `hdmap trial`. Our own kind, because Lightning's fit turns a KeyboardInterrupt into
    exit 1 and a SIGTERM into a silent exit 0 (lightning.pytorch.trainer.call, SIGTERMException); any other
    exception it tears the fit down for and re-raises."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextmanager
def _interrupts_raise():
    """While the block runs, SIGINT and SIGTERM raise _Interrupted (Lightning calls ours after its own SIGTERM
    handler during a fit, and restores ours after it)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def handle(signum, frame) -> None:
        raise _Interrupted(signum)

    saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@app.command()
def simulate(
    root: Path = typer.Argument(..., help="where to write <root>/domain_X/{train,test}/..."),
    n_train: int = typer.Option(200, min=1, help="train/good images per domain"),
    n_test: int = typer.Option(100, min=2, help="test/good and test/fault images per domain (each; first half cold)"),
    domains: str = typer.Option("A,B,C,D", help="comma-separated domains"),
    seed: int = typer.Option(0),
) -> None:
    """Write a simulated HDMAP data set in the real layout (plus a ground-truth sidecar)."""
    from hdmap.data.layout import normalize_domain
    from hdmap.data.simulate import simulate as run

    try:
        names = [normalize_domain(d) for d in domains.split(",") if d.strip()]
    except ValueError as exc:
        fail(f"--domains {domains!r}: {exc}")
    if not names:
        fail(f"--domains {domains!r}: name at least one of A, B, C, D")
    try:
        out = run(root, n_train=n_train, n_test=n_test, domains=names, seed=seed)
    except OSError as exc:  # a file in the way, a read-only folder, or a root holding data we did not write
        fail(
            f"cannot simulate into {root}: {exc.strerror if exc.filename else exc}"
            + (f" ({exc.filename})" if exc.filename else "")
        )
    console.print(f"simulated HDMAP data written to {out}")


@app.command()
def trial(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="trial YAML (sections data, model, eval, seed)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override PATH=VALUE, e.g. model.name=draem (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default: runs/<trial_id>)"),
    feature_cache: Optional[Path] = typer.Option(
        None, help="disk cache for backbone features / coreset / kNN, shared with later trials (default: none)"
    ),
) -> None:
    """Run one trial without Ray: fit, score, metrics -> OUT/results.parquet, OUT/scores.parquet.

    Exit code: 0 done, 1 the trial failed (its error row is written) or the disk filled up, 2 a mistake in the config,
    the data or --out, 130 (Ctrl-C) / 143 (SIGTERM) interrupted: no result written."""
    from hdmap.config import load_trial_config
    from hdmap.trial import import_trial_code, prepare_output_dir, stamp_data

    cfg = None
    try:
        with _interrupts_raise():
            try:
                cfg = load_trial_config(
                    config, set_ + ([f"runtime.feature_cache={feature_cache}"] if feature_cache else [])
                )
                stamp_data(cfg)
                out = prepare_output_dir(out or Path("runs") / cfg.trial_id, cfg.trial_id, cfg.runtime.data_fingerprint)
            except UserError as exc:
                fail(str(exc))
            import_trial_code(cfg)
            console.print(f"trial {cfg.trial_id}: model={cfg.model.name} domain={cfg.data.domain} seed={cfg.seed}")
            rows = _run_and_write(cfg, out)
    except _Interrupted as stop:
        where = f" to {out}" if out else ""
        fail(
            f"{_trial_name(cfg)} did not finish: interrupted by {stop.name}; no result was written{where} "
            "(the same command starts it again)",
            128 + stop.signum,
        )
    except OSError as exc:
        if (full := disk_full(exc)) is None:
            raise
        fail(f"{full}: {_trial_name(cfg)} did not finish, no result was written; free space and run it again", 1)
    console.print(metrics_table(rows))  # the results are written: a signal from here on is an ordinary one
    console.print(f"results: {out / 'results.parquet'}  per-image scores: {out / 'scores.parquet'}")


def _trial_name(cfg) -> str:
    return f"trial {cfg.trial_id}" if cfg is not None else "the trial"


def _run_and_write(cfg, out: Path) -> list[dict]:
    """Fit and write the results (their rows are returned); a failure writes its error row like a sweep would (not
    on a full disk, where it could not be written either) and is reported."""
    from hdmap.trial import failed_trial, run_trial, write_outputs

    try:
        result = run_trial(cfg)
    except Exception as exc:
        if disk_full(exc) is not None:
            raise
        written = write_outputs(failed_trial(cfg, exc), out, cfg)
        if isinstance(exc, UserError):
            fail(f"{exc} [error row: {written}]")
        raise
    write_outputs(result, out, cfg)
    return result.rows


@app.command()
def models() -> None:
    """List every registered model: its config fields and defaults, per-epoch metric (ASHA) and pretrained weights."""
    from enum import Enum

    from hdmap.models.registry import model_catalog

    catalog = model_catalog()
    columns = ("model", "config fields (defaults)", "per-epoch metric", "pretrained weights", "outputs")
    rows = [
        (
            row["model"],
            ", ".join(f"{k}={v.value if isinstance(v, Enum) else v}" for k, v in row["fields"].items()),
            row["per_epoch_metric"] or "- (no ASHA)",
            "needed (pretrained: false = random init)" if row["needs_pretrained_weights"] else "-",
            ", ".join(row["outputs"]),
        )
        for row in catalog
    ]
    if not console.is_terminal:  # piped (`hdmap models | grep ...`): one model per line, tab-separated, never wrapped
        for line in (columns, *rows):
            print("\t".join(line))
        return
    table = Table(
        title=f"{len(catalog)} models (registry: hdmap/models/registry.py); set fields with --set model.FIELD=V",
        show_lines=True,
    )
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


sweep_app = typer.Typer(no_args_is_help=True, help="Plan and run sweeps (needs the sweeps package: Ray Tune).")
app.add_typer(sweep_app, name="sweep")


def _load_plan(spec: Path, set_: list[str]):
    from sweeps.spec import SpecError, load_spec

    try:
        return load_spec(spec, set_)
    except SpecError as exc:
        fail(str(exc))


@sweep_app.command("plan")
def sweep_plan(
    spec: Path = typer.Argument(..., help="sweep spec YAML"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a spec field PATH=VALUE, e.g. resources.gpu=0"),
) -> None:
    """Expand and validate a sweep spec; print trial count, per-model breakdown and resources. Runs nothing."""
    from sweeps.cells import cell_histories
    from sweeps.preflight import check_data, check_fresh, check_output
    from sweeps.runner import plan_todo
    from sweeps.store import ResultStore

    plan = _load_plan(spec, set_)
    try:
        check_output(plan.spec.sweep_dir())
        notes = check_data(plan)
        notes += check_fresh(plan, ResultStore(plan.spec.sweep_dir()))  # finished trials on other data: refused
    except UserError as exc:
        fail(f"{spec}: {exc}")
    table = Table(title=f"sweep {plan.spec.name}: {plan.n_trials} trials (spec {plan.spec_hash})")
    for column in ("model", "trials", "cpu / trial", "gpu / trial"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for model, n in plan.breakdown().items():
        r = plan.resources_for(model)
        table.add_row(model, str(n), f"{r.cpu:g}", f"{r.gpu:g}")
    console.print(table)
    console.print(
        f"axes: {', '.join(plan.axes) or '-'}; scheduler: {_scheduler_text(plan)}; "
        f"max_concurrent: {plan.spec.max_concurrent or 'as resources allow'}; "
        f"output: {redact_uri(plan.spec.sweep_dir())}"
    )
    search = plan.search_meta()
    if search:
        objective = f"oracle:{search.objective} (ORACLE: test labels)" if search.oracle else search.objective
        console.print(
            f"search: {search.method}, {search.num_samples} samples per grid cell and model (seed {search.seed}) of "
            f"{', '.join(search.params)}; objective {objective}, {search.mode}imised"
        )
    if plan.cells:
        notes += _search_cells_notes(plan)
    if plan.repeated_samples:
        notes.append(
            f"{plan.repeated_samples} samples are not run: the space holds fewer distinct configs than num_samples "
            "(each config runs once)"
        )
    for note in notes:
        console.print(f"note: {note}")
    store = ResultStore(plan.spec.sweep_dir())  # reading creates nothing
    _, done = plan_todo(plan, store, retry_failed=False)
    done += sum(len(history.done(retry_failed=False)) for history in cell_histories(plan, store))
    if done:
        console.print(f"already in the store (will not re-run): {done}")


def _scheduler_text(plan) -> str:
    """`sweep plan`'s scheduler: fifo, asha over the grid's trials, or asha within each cell of a search."""
    asha = plan.spec.asha
    if asha is None:
        return "fifo"
    where = "within each grid cell" if plan.spec.search.method == "asha" else "among trials of one model, data, seed"
    return f"asha on {asha.metric} per epoch ({asha.mode}), {where}"


def _search_cells_notes(plan) -> list[str]:
    """What `sweep plan` can say of a search that chooses its trials as it runs (optuna): cells x samples, and the
    cells whose discrete space holds fewer configs than num_samples."""
    n_samples = plan.spec.search.num_samples
    small = [cell for cell in plan.cells if cell.budget < n_samples]
    notes = [
        f"{len(plan.cells)} grid cells x {n_samples} samples, each cell its own Optuna TPE study: the trials are "
        "chosen as the sweep runs (the data and fit-set checks ran on each cell's base config)"
    ]
    if small:
        runs = sum(cell.budget for cell in small)
        notes.append(
            f"{len(small)} cells hold fewer distinct configs than num_samples: they run each once ({runs} trials)"
        )
    return notes


@sweep_app.command("run")
def sweep_run(
    spec: Path = typer.Argument(..., help="sweep spec YAML"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a spec field PATH=VALUE"),
    address: Optional[str] = typer.Option(
        None,
        help="Ray cluster to run on, from its head node: 'auto' ($RAY_ADDRESS, or the cluster `ray start` "
        "recorded) or host:6379; default: a new local Ray instance of this sweep's own",
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-run trials recorded as failed"),
    report: bool = typer.Option(True, help="write the comparison report at the end"),
    feature_cache: bool = typer.Option(
        True,
        help="share backbone features, coresets and kNN searches between "
        "trials (SWEEP_DIR/cache); --no-feature-cache recomputes them per trial",
    ),
) -> None:
    """Validate, then run every trial not already in the store on Ray Tune; write the report.

    Exit code: 0 all trials have a result, 1 some failed, or the disk filled up (the sweep stops, sweep.json says
    "failed"; the same command resumes), 2 a mistake in the spec or the environment,
    130 (Ctrl-C) / 143 (SIGTERM) interrupted: the trials that did not run are named with the command to resume.
    """
    plan = _load_plan(spec, set_)
    console.print(f"sweep {plan.spec.name}: {plan.n_trials} trials -> {redact_uri(plan.spec.sweep_dir())}")
    outcome = _run_or_fail(plan, address, retry_failed, feature_cache)
    _print_outcome(outcome)
    if outcome.not_run:
        resume = ["hdmap", "sweep", "run", str(spec), *(a for s in set_ for a in ("--set", s))]
        resume += (["--address", address] if address else []) + (["--retry-failed"] if retry_failed else [])
        resume += ([] if feature_cache else ["--no-feature-cache"]) + ([] if report else ["--no-report"])
        console.print(
            f"[bold red]{outcome.not_run} of {outcome.total} trials did not run[/]; resume them with:\n"
            f"  {redact(shlex.join(resume), plan.spec.sweep_dir())}",  # an --set output=URI keeps no credential
            highlight=False,
            soft_wrap=True,
        )
    if report and not outcome.interrupted and not outcome.disk_full:
        from sweeps.store import ResultStore

        store = ResultStore(plan.spec.sweep_dir())  # outcome.sweep_dir is for showing: credentials redacted
        _finish(store, store.meta())
    if outcome.failed:
        _print_failed_trials(outcome)
    if outcome.disk_full:
        stale = "" if outcome.state_recorded else " (sweep.json could not be updated: it still says running)"
        fail(f"{outcome.disk_full}: the sweep stopped{stale}; free space, then run the same command to resume", 1)
    if outcome.interrupted:
        raise typer.Exit(128 + outcome.interrupted)
    if outcome.failed or outcome.not_run:
        raise typer.Exit(1)


def _run_or_fail(plan, address: str | None, retry_failed: bool, feature_cache: bool):
    """sweeps.runner.run_sweep's outcome; a mistake found before any trial ran is one line and its exit code."""
    from sweeps.runner import run_sweep

    try:
        return run_sweep(plan, address=address, retry_failed=retry_failed, feature_cache=feature_cache)
    except UserError as exc:  # spec, data, environment (SpecError and SweepEnvironmentError are UserErrors)
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted before any trial started", 130)
    except OSError as exc:  # a full disk before any trial started (sweep.json, the first compaction)
        if (full := disk_full(exc)) is None:
            raise
        fail(f"{full}: free space, then run the same command again", 1)


def _print_outcome(outcome) -> None:
    """How the run ended, with its counts, the feature cache's and W&B's."""
    ended = "interrupted" if outcome.interrupted else "stopped" if outcome.disk_full else "finished"
    console.print(
        f"{ended}: {outcome.ok} ok, "
        f"{len(outcome.failed)} failed, {outcome.pruned} stopped early, {outcome.skipped} already done; "
        f"wall {outcome.wall_s:,.0f}s (Ray start {outcome.ray_start_s:.1f}s)"
        + (f"; Tune restarted {outcome.restarts}x after lost workers" if outcome.restarts else "")
    )
    if outcome.cache_computed is not None:
        console.print(f"feature cache: {outcome.cache_computed} entries computed, {outcome.cache_reused} reused")
    if outcome.wandb is not None and outcome.wandb.statuses:
        console.print(escape(outcome.wandb.line()), highlight=False, soft_wrap=True)


def _print_failed_trials(outcome) -> None:
    """The failed trials' table (the first line of each error) and where the full tracebacks are."""
    table = Table(title="failed trials", title_style="bold red")
    table.add_column("trial_id", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("error (first line)", overflow="fold")
    for f in outcome.failed:
        table.add_row(f["trial_id"], f["model"], f["error"])
    console.print(table)
    console.print(
        f"tracebacks: the error column of {outcome.sweep_dir}/results.parquet; Ray's log: {outcome.log_path}",
        highlight=False,
        soft_wrap=True,
    )
    console.print("re-run them with --retry-failed once fixed")


@app.command()
def report(
    sweep_dir: str = typer.Argument(
        ..., help="a sweep output (<output>/<name>, a folder or s3://...) or an `hdmap trial` --out"
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="write the report into this local folder (default: beside the results, on object storage too)",
    ),
    wandb: bool = typer.Option(
        False,
        "--wandb",
        help="also write the W&B Report definition (wandb_report.json "
        "beside the report) and publish it when W&B is online",
    ),
) -> None:
    """Write report.html (self-contained) and report.md from a sweep's results; --wandb: a W&B Report too.
    W&B uses the sweep's own settings (tracking.wandb of its spec, kept in sweep.json)."""
    from sweeps.store import ResultStore

    try:
        store = ResultStore(sweep_dir)
        found = store.has_results()
    except (OSError, ValueError) as exc:  # an unknown scheme, a bucket we cannot reach
        fail(f"cannot open {redact_uri(sweep_dir)}: {redact(str(exc), sweep_dir)}")
    if not found:
        shown = redact_uri(sweep_dir)
        fail(f"{shown} holds no sweep results (expected {shown}/results.parquet or parts/results/)")
    try:
        meta = store.meta()
    except ValueError as exc:
        fail(str(exc))
    _finish(store, meta, out, wandb)


def _finish(store, meta, out: Path | None = None, wandb: bool = False) -> None:
    """sweeps.finish.finish with its outcome printed; a folder we cannot write or damaged results: one line, exit 2."""
    import pyarrow as pa

    from sweeps.finish import finish

    try:
        done = finish(store, meta, out, wandb_report=wandb)
    except (pa.ArrowInvalid, OSError) as exc:  # a damaged results file, or a report folder we cannot write
        fail(
            f"cannot write the report of {store.uri}{f' into {out}' if out else ''}: {type(exc).__name__}: "
            f"{redact(str(exc), store.uri_with_secrets)}" + ("" if out else " (write it elsewhere with --out DIR)")
        )
    console.print(
        f"report: {done.html}  (markdown: {done.markdown}; W&B summary: {done.wandb_summary})",
        highlight=False,
        soft_wrap=True,
    )
    if done.wandb_report is not None:
        console.print(escape(done.wandb_report.message(store.uri)), highlight=False, soft_wrap=True)
        if done.wandb_report.failed:
            raise typer.Exit(1)


def metrics_table(rows: list[dict]) -> Table:
    """Metrics down, test domains across (fits a narrow terminal); the oracle figure says so."""
    from hdmap.metric_catalogue import METRICS, columns

    table = Table(title=f"{rows[0]['model']} trained on {rows[0]['train_domain']} (trial {rows[0]['trial_id']})")
    table.add_column("metric")
    for row in rows:
        table.add_column(str(row.get("test_domain")), justify="right")
    for key in columns(view="trial"):
        if any(row.get(key) is not None for row in rows):
            table.add_row(METRICS[key].title, *(_fmt(row.get(key)) for row in rows))
    return table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
