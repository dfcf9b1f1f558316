"""The one finish step, run by `hdmap sweep run` at its end and by `hdmap report`: render the report next to the
results (uploaded through the store's filesystem when they are on object storage) or into a local `out` folder,
and log the W&B summary with the sweep's own settings (sweep.json), not defaults. It reads the results and never
writes them: compaction and results.parquet belong to the sweep's driver, so a report on a running sweep or a
copied folder changes no result.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sweeps import tracking
from sweeps.meta import SweepMeta
from sweeps.report import analysis, build_report
from sweeps.store import ResultStore
from sweeps.wandb_report import WandbReportOutcome, write_wandb_report


@dataclass
class Finished:
    html: str  # where the report is: a local path or a URI (s3://.../report.html)
    markdown: str
    wandb_summary: str  # tracking.log_summary's status
    wandb_report: WandbReportOutcome | None = None


def finish(store: ResultStore, meta: SweepMeta | None, out: Path | None = None, wandb_report: bool = False) -> Finished:
    """Render the report (and the W&B Report definition with `wandb_report`), log the summary.

    `out` (a local folder) takes the report instead of the results' folder. Raises OSError for a folder or bucket
    it cannot write and pyarrow.ArrowInvalid for a damaged results file; W&B problems come back as statuses."""
    data = analysis.load(store)
    settings = meta.wandb if meta else tracking.WandbSettings()
    local = out or store.local_path()
    with tempfile.TemporaryDirectory(prefix="hdmap-report-") as tmp:
        target = local or Path(tmp)
        paths = build_report(data, target)
        written = [paths.html, paths.markdown]
        outcome = write_wandb_report(data, settings, target) if wandb_report else None
        if outcome is not None:
            written.append(outcome.path)
        if local is None:  # object storage: upload beside the results
            for path in written:
                store.write_bytes(path.name, path.read_bytes())
            where = {path.name: f"{store.uri.split('?', 1)[0]}/{path.name}" for path in written}
            if outcome is not None:
                outcome.path = Path(where[outcome.path.name])
            html, markdown = where[paths.html.name], where[paths.markdown.name]
        else:
            html, markdown = str(paths.html), str(paths.markdown)
    run_dir = local or store.local_dir(data.name)  # offline W&B runs stay on this machine's disk
    run_dir.mkdir(parents=True, exist_ok=True)
    status = tracking.log_summary(settings, sweep=data.name, table=paths.summary, run_dir=run_dir)
    return Finished(html=html, markdown=markdown, wandb_summary=status, wandb_report=outcome)
