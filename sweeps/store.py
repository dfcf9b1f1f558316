"""The sweep's results store: one Parquet part per trial (atomic), compacted into one dataset file.

    <sweep_dir>/parts/results/<trial_id>.parquet   written by the trial itself, wherever it ran
    <sweep_dir>/parts/scores/<trial_id>.parquet
    <sweep_dir>/results.parquet, scores.parquet    compaction of the parts (driver), atomic replace

Parts are the source of truth: a part is written to a temporary name and renamed, so a crash never
leaves a half-written part, two trials never write the same file, and a retried trial overwrites
its own part (no duplicate rows). `sweep_dir` may be a local path or any pyarrow URI (s3://, gs://).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hdmap.results import SCORE_SCHEMA, results_schema
from hdmap.trial import TrialResult


class ResultStore:
    def __init__(self, sweep_dir: str) -> None:
        if "://" in str(sweep_dir):
            self.uri = str(sweep_dir)
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:  # absolute: trials write from other processes and working directories
            self.uri = self.root = os.path.abspath(sweep_dir)
            self.fs = pafs.LocalFileSystem()
        self._cache: dict[str, tuple] = {}  # reading creates nothing: `hdmap report` may point at a copied folder

    # -- written by trials -------------------------------------------------------------------
    def mark_attempt(self, trial_id: str) -> None:
        """One marker per start of a trial, so its row can say how often it was retried (node loss, OOM, ...)."""
        folder = f"{self.root}/parts/attempts/{trial_id}"
        self.fs.create_dir(folder, recursive=True)
        with self.fs.open_output_stream(f"{folder}/{uuid.uuid4().hex}"):
            pass

    def attempts(self, trial_id: str) -> int:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/parts/attempts/{trial_id}", allow_not_found=True))
        return len(infos)

    def write_trial(self, result: TrialResult, sweep: str, spec_hash: str) -> None:
        trial_id = result.rows[0]["trial_id"]
        attempts = self.attempts(trial_id)
        for row in result.rows:
            row.update(sweep=sweep, spec_hash=spec_hash, attempts=attempts)
        scores = result.scores.set_column(
            result.scores.schema.get_field_index("sweep"), "sweep", pa.array([sweep] * result.scores.num_rows, pa.string())
        )
        for sub in ("parts/results", "parts/scores"):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)
        # scores first: a results part is the commit marker of a finished trial.
        self._atomic_write(scores, f"parts/scores/{trial_id}.parquet")
        self._atomic_write(result.results_table(), f"parts/results/{trial_id}.parquet")

    def _atomic_write(self, table: pa.Table, relative: str) -> None:
        final = f"{self.root}/{relative}"
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, final)

    # -- read by the driver, the report and resume ---------------------------------------
    def _parts(self, kind: str) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/parts/{kind}", allow_not_found=True))
        return sorted((i for i in infos if i.path.endswith(".parquet")), key=lambda i: i.path)

    def results(self) -> pa.Table:
        return self._read("results", results_schema())

    def scores(self) -> pa.Table:
        return self._read("scores", SCORE_SCHEMA)

    def _read(self, kind: str, schema: pa.Schema) -> pa.Table:
        """All parts of a kind on the current schema; a part unchanged since the last read is not read again."""
        tables = []
        for info in self._parts(kind):
            stamp = (info.mtime_ns, info.size)
            cached = self._cache.get(info.path)
            if cached is None or cached[0] != stamp:
                # older parts may lack newer config columns: unify on the current schema
                cached = (stamp, _conform(pq.read_table(info.path, filesystem=self.fs), schema))
                self._cache[info.path] = cached
            tables.append(cached[1])
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def trial(self, trial_id: str) -> tuple[pa.Table, pa.Table]:
        """One finished trial's results and scores, from its own parts (the driver's W&B logger reads each trial
        as it finishes, whichever node ran it)."""
        return tuple(_conform(pq.read_table(f"{self.root}/parts/{kind}/{trial_id}.parquet", filesystem=self.fs),
                              schema) for kind, schema in (("results", results_schema()), ("scores", SCORE_SCHEMA)))

    def status_by_trial(self) -> dict[str, str]:
        table = self.results()
        return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))

    def compact(self, scores: bool = True) -> bool:
        """Rewrite results.parquet (and scores.parquet, the big one) from the parts (single writer: the driver).

        Only from parts that hold every trial the compacted file holds: a folder copied without its parts, an
        `hdmap trial` output or a store whose parts were pruned keeps its files as they are (returns False)."""
        results = self.results()
        compacted = f"{self.root}/results.parquet"
        if self.fs.get_file_info(compacted).type != pafs.FileType.NotFound:
            held = set(pq.read_table(compacted, columns=["trial_id"], filesystem=self.fs)["trial_id"].to_pylist())
            if not held <= set(results["trial_id"].to_pylist()):
                return False
        elif not results.num_rows:
            return False
        self._atomic_write(results, "results.parquet")
        if scores:
            self._atomic_write(self.scores(), "scores.parquet")
        return True

    def write_json(self, relative: str, payload: dict) -> None:
        path = f"{self.root}/{relative}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(json.dumps(payload, indent=2, default=str).encode())

    def local_path(self) -> Path | None:
        return Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    table = table.select([n for n in schema.names if n in table.column_names])
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)

