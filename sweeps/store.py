"""The sweep's results store: one Parquet part per trial (the source of truth), compacted into rolling chunks.

    <sweep_dir>/parts/results/<trial_id>.parquet   written by the trial itself, wherever it ran (atomic)
    <sweep_dir>/parts/scores/<trial_id>.parquet
    <sweep_dir>/results/chunk-NNNNN.parquet        compacted chunks (the driver only), each <= CHUNK_TRIALS trials:
    <sweep_dir>/scores/chunk-NNNNN.parquet           `pyarrow.dataset`, duckdb and pandas read the folders as one table
    <sweep_dir>/manifest.json                      which part (by its size and mtime) each chunk holds + each trial's
                                                   status, so resume and status never read 20,000 files
    <sweep_dir>/results.parquet, scores.parquet    one-file copies of the chunks, written by `export` (a sweep's end)
    <sweep_dir>/sweep.json                         the sweep's metadata (sweeps.meta.SweepMeta)
    <sweep_dir>/driver.json                        the running driver's lease (sweeps.lease): one driver per sweep
    <sweep_dir>/parts/attempts/<trial_id>/         one empty file per start of the trial
    <sweep_dir>/parts/timeouts/<trial_id>.json     the trial's watchdog killed it (sweeps.worker): the driver's error
    <sweep_dir>/logs/ray-driver.log, ray/, cache/  this machine's by-products (`local_dir`): Ray's log, Tune's state,
                                                   the feature cache (results on object storage: ~/ray_results/...);
                                                   wandb/ holds the offline W&B runs (named by W&B)

No other code names a file of this folder: the driver, the workers and the lease go through the methods here (the
report's own files, report.html / report.md, are written beside the results with `write_bytes`, by sweeps.finish).

Parts: a part is written to a temporary name and renamed, so a crash never leaves a half-written part, two trials
never write the same file, and a retried trial overwrites its own part (no duplicate rows). A results part is
the commit marker of a finished trial (its scores part is written first).

Compaction costs O(new parts): one listing of parts/results (names, sizes, mtimes), then only the parts that are
new or changed since the manifest are read; they are appended to the open (last) chunk until it holds
CHUNK_TRIALS trials, then to new chunks; a trial whose part changed (a retry) leaves the chunk it was in. Chunks
can always be rebuilt from the parts; a chunk is never rebuilt from parts that lack some of its trials. Reads
(`results`, `status_by_trial`) take the chunks plus the parts not yet compacted, and write nothing.
`sweep_dir` may be a local path or any pyarrow URI (s3://, gs://).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hdmap.io import atomic_write, atomic_write_table
from hdmap.results import SCORE_SCHEMA, results_schema
from hdmap.trial import TrialResult, failed_trial
from sweeps.meta import SweepMeta
from sweeps.redact import redact, redact_uri

if TYPE_CHECKING:
    from hdmap.config import TrialConfig

CHUNK_TRIALS = 100  # trials per chunk: bounds the rewrite of the open chunk (scores: ~2,000 rows a trial)
MANIFEST = "manifest.json"
META_FILE = "sweep.json"
LEASE_FILE = "driver.json"
MANIFEST_FORMAT = "hdmap-store/1"
KINDS = {"results": results_schema, "scores": lambda: SCORE_SCHEMA}


class ResultStore:
    def __init__(self, sweep_dir: str) -> None:
        if "://" in str(sweep_dir):
            # `uri` is what messages, reports and files show: credentials stay in `fs` and in `uri_with_secrets`,
            # which only opens the store again in another process, in memory (sweeps.runner: tune.with_parameters)
            self.uri_with_secrets, self.uri = str(sweep_dir), redact_uri(str(sweep_dir))
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(self.uri_with_secrets)
            except (pa.ArrowInvalid, OSError) as exc:  # an unknown scheme or option: pyarrow quotes the whole URI
                raise ValueError(redact(str(exc), self.uri_with_secrets)) from None
        else:  # absolute: trials write from other processes and working directories
            self.uri = self.uri_with_secrets = self.root = os.path.abspath(sweep_dir)
            self.fs = pafs.LocalFileSystem()
        self._lock = threading.Lock()  # one compaction at a time (the driver's background pass and its final one)
        # reading creates nothing: `hdmap report` may point at a copied folder

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
            result.scores.schema.get_field_index("sweep"),
            "sweep",
            pa.array([sweep] * result.scores.num_rows, pa.string()),
        )
        self.write_parts(trial_id, result.results_table(), scores)

    def write_parts(self, trial_id: str, results: pa.Table, scores: pa.Table) -> None:
        """A trial's two parts as they are (`write_trial` stamps them first; benchmarks/store_scale.py fills a store
        with synthetic ones). Scores first: a results part is the commit marker of a finished trial."""
        for sub in ("parts/results", "parts/scores"):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)
        self._atomic_write(scores, f"parts/scores/{trial_id}.parquet")
        self._atomic_write(results, f"parts/results/{trial_id}.parquet")

    def write_failure(
        self,
        cfg: TrialConfig,
        error: BaseException | str,
        sweep: str,
        spec_hash: str,
        status: str = "error",
        epochs_run: int | None = None,
    ) -> None:
        """The one writer of a trial's row when it has no result: status error (or pruned, with the epochs it ran
        before the scheduler stopped it), the error's text (an exception's with its traceback; a note as it is)."""
        failed = failed_trial(cfg, error if isinstance(error, BaseException) else RuntimeError(error))
        failed.rows[0].update(status=status, epochs_run=epochs_run)
        if isinstance(error, str):
            failed.rows[0].update(error=error)
        self.write_trial(failed, sweep, spec_hash)

    def mark_timeout(self, trial_id: str, timeout_s: float) -> None:
        """The trial's watchdog is about to kill its worker: a note for the driver, which records the failure."""
        self._write_json(f"parts/timeouts/{trial_id}.json", {"timeout_s": timeout_s})

    def timed_out(self, trial_id: str) -> float | None:
        """The trial_timeout_s a watchdog killed the trial at (`mark_timeout`), or None."""
        note = self._read_json(f"parts/timeouts/{trial_id}.json")
        return None if note is None else note["timeout_s"]

    # -- small files beside the results ------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """A small file (a rendered report) written atomically: a reader sees the old file or the new one."""
        final = f"{self.root}/{relative}"
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        atomic_write(final, data, self.fs)

    def check_writable(self) -> None:
        """OSError unless a file can be written and removed here (before anything else is)."""
        self._write_json(f"{META_FILE}.probe", {})
        self.fs.delete_file(f"{self.root}/{META_FILE}.probe")

    # -- the running driver's lease (sweeps.lease decides who holds it) ------------------------------
    def lease(self) -> dict | None:
        """driver.json, or None when there is none (or it is damaged)."""
        return self._read_json(LEASE_FILE)

    def write_lease(self, record: dict) -> None:
        self._write_json(LEASE_FILE, record)

    def drop_lease(self) -> None:
        self.fs.delete_file(f"{self.root}/{LEASE_FILE}")

    # -- sweep metadata ------------------------------------------------------------------------
    def write_meta(self, meta: SweepMeta) -> None:
        self.write_bytes(META_FILE, meta.model_dump_json(indent=2).encode())

    def meta(self) -> SweepMeta | None:
        """sweep.json, or None (an `hdmap trial` output); a damaged file is a ValueError naming it."""
        path = f"{self.root}/{META_FILE}"
        text = self._read_text(path)
        if text is None:
            return None
        try:
            return SweepMeta.model_validate_json(text)
        except ValueError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{self.uri}/{META_FILE}: not a readable sweep metadata file ({first})") from None

    # -- compaction (the sweep's driver only; readers never compact) ---------------------------------
    def compact(self) -> bool:
        """Fold the parts that are new or changed since the last pass into the chunks; True if anything changed.

        Cost: one listing of parts/results plus reading the new parts and the open chunk, whatever came before.
        A folder whose single-file results.parquet holds trials its parts lack (copied without parts/, an
        `hdmap trial` output, pruned parts) and that has no manifest yet is left as it is (returns False)."""
        with self._lock:
            manifest = self._manifest()
            fresh = manifest is None
            manifest = manifest or {
                "format": MANIFEST_FORMAT,
                "generation": 0,
                "exported": None,
                "chunks": [],
                "status": {},
            }
            new = self._pending(manifest)
            if not new or (fresh and self._single_file_trials() - {_trial_of(i) for i in new}):
                return False
            ids = [_trial_of(i) for i in new]
            tables = {kind: self._read_parts(kind, ids) for kind in KINDS}
            stamps = {_trial_of(i): _stamp(i) for i in new}
            chunks = manifest["chunks"]
            moved = set(ids)
            for chunk in chunks:  # a retried trial leaves the chunk its earlier part went to
                if moved & set(chunk["trials"]):
                    chunk["trials"] = {t: s for t, s in chunk["trials"].items() if t not in moved}
                    self._write_chunk(chunk["name"], list(chunk["trials"]), None)
            queue = list(ids)
            while queue:
                if not chunks or len(chunks[-1]["trials"]) >= CHUNK_TRIALS:
                    chunks.append({"name": f"chunk-{len(chunks):05d}", "trials": {}})
                chunk = chunks[-1]
                room = CHUNK_TRIALS - len(chunk["trials"])
                take, queue = queue[:room], queue[room:]
                added = {kind: _rows_of(table, take) for kind, table in tables.items()}
                self._write_chunk(chunk["name"], list(chunk["trials"]), added)
                chunk["trials"].update({t: stamps[t] for t in take})
            results = tables["results"]
            manifest["status"].update(zip(results["trial_id"].to_pylist(), results["status"].to_pylist()))
            manifest["generation"] += 1
            self._write_json(MANIFEST, manifest)
            return True

    def _write_chunk(self, name: str, keep: list[str], added: dict[str, pa.Table] | None) -> None:
        """Rewrite a chunk's files: the rows of the trials it keeps (never more: a pass that died before writing
        the manifest may have left others in it), then the rows of `added`."""
        for kind, schema in KINDS.items():
            path = f"{self.root}/{kind}/{name}.parquet"
            old = _rows_of(self._read_files([path], schema()), keep) if keep else schema().empty_table()
            self.fs.create_dir(f"{self.root}/{kind}", recursive=True)
            self._atomic_write(
                pa.concat_tables([old] + ([added[kind]] if added else [])).combine_chunks(), f"{kind}/{name}.parquet"
            )

    def export(self) -> bool:
        """results.parquet and scores.parquet, one file each, from the chunks (the finish step); skipped when
        nothing changed since the last export, and never over a file holding trials the chunks lack."""
        with self._lock:
            manifest = self._manifest()
            if manifest is None or manifest.get("exported") == manifest["generation"]:
                return False
            if self._single_file_trials() - set(manifest["status"]):
                return False
            for kind, schema in KINDS.items():
                self._atomic_write(self._read_kind(kind, schema(), manifest), f"{kind}.parquet")
            manifest["exported"] = manifest["generation"]
            self._write_json(MANIFEST, manifest)
            return True

    # -- read by the driver, the report, W&B and resume ----------------------------------------
    def results(self, columns: list[str] | None = None) -> pa.Table:
        """Every result row on the current schema: the compacted chunks, with the parts written since the last
        pass (a running sweep, a killed driver, a copy whose mtimes changed) in place of the rows they replace.
        Reads only, so `hdmap report` never writes to results it did not produce."""
        manifest = self._manifest()
        table = self._read_kind("results", results_schema(), manifest)
        new = [_trial_of(i) for i in self._pending(manifest or {"chunks": []})]
        if new:
            kept = table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=pa.array(new, pa.string()))))
            table = pa.concat_tables([kept, self._read_parts("results", new)])
        return table.select(columns) if columns else table

    def trial(self, trial_id: str) -> tuple[pa.Table, pa.Table]:
        """One finished trial's results and scores, from its own parts (the driver's W&B logger reads each trial
        as it finishes, whichever node ran it)."""
        results, scores = (
            self._read_files([f"{self.root}/parts/{kind}/{trial_id}.parquet"], schema())
            for kind, schema in KINDS.items()
        )
        return results, scores

    def status_by_trial(self) -> dict[str, str]:
        """trial_id -> status: the manifest's, updated from the parts written since the last pass (only those are
        read), so resume sees every finished trial without reading them all."""
        manifest = self._manifest()
        if manifest is not None:
            status = dict(manifest["status"])
        else:
            held = self._read_kind("results", results_schema(), None)
            status = dict(zip(held["trial_id"].to_pylist(), held["status"].to_pylist()))
        new = self._pending(manifest or {"chunks": []})
        if new:
            table = self._read_files([i.path for i in new], results_schema(), columns=["trial_id", "status"])
            status.update(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))
        return status

    def has_results(self) -> bool:
        return (
            self._exists("results.parquet")
            or self._exists(MANIFEST)
            or self.fs.get_file_info(f"{self.root}/parts/results").type == pafs.FileType.Directory
        )

    def local_path(self) -> Path | None:
        return Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def local_dir(self, sweep: str) -> Path:
        """This machine's folder for the sweep's by-products (Ray's log, Tune's state, offline W&B runs): the sweep
        folder itself, or ~/ray_results/hdmap/<sweep> when the results are on object storage."""
        return self.local_path() or Path.home() / "ray_results" / "hdmap" / sweep

    def driver_log(self, sweep: str) -> Path:
        """Ray's and Tune's log records of the driver: trial tracebacks go there, not to the terminal."""
        return self.local_dir(sweep) / "logs" / "ray-driver.log"

    def tune_dir(self, sweep: str) -> Path:
        """Tune's own experiment state, a by-product (resume uses the store): it may stay on the driver's disk when
        results go to object storage; with a shared file system it sits next to the results."""
        return self.local_dir(sweep) / "ray"

    def feature_cache_dir(self) -> Path | None:
        """The sweep's shared feature cache, next to the results; None when they are on object storage."""
        local = self.local_path()
        return None if local is None else local / "cache"

    # -- internals -----------------------------------------------------------------------------
    def _atomic_write(self, table: pa.Table, relative: str) -> None:
        atomic_write_table(table, f"{self.root}/{relative}", self.fs)

    def _write_json(self, relative: str, payload: dict) -> None:
        self.write_bytes(relative, json.dumps(payload, indent=2, default=str).encode())

    def _read_json(self, relative: str) -> dict | None:
        """A small JSON file of the sweep folder, or None when it is missing or damaged."""
        text = self._read_text(f"{self.root}/{relative}")
        try:
            return None if text is None else json.loads(text)
        except ValueError:
            return None

    def _exists(self, relative: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{relative}").type == pafs.FileType.File

    def _read_text(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def _manifest(self) -> dict | None:
        text = self._read_text(f"{self.root}/{MANIFEST}")
        return None if text is None else json.loads(text)

    def _results_parts(self) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/parts/results", allow_not_found=True))
        return sorted((i for i in infos if i.path.endswith(".parquet")), key=lambda i: i.path)

    def _pending(self, manifest: dict) -> list[pafs.FileInfo]:
        """Results parts that are new, or changed (a retry), since the manifest was written."""
        held = {t: s for chunk in manifest["chunks"] for t, s in chunk["trials"].items()}
        return [i for i in self._results_parts() if held.get(_trial_of(i)) != _stamp(i)]

    def _single_file_trials(self) -> set[str]:
        if not self._exists("results.parquet"):
            return set()
        table = pq.read_table(f"{self.root}/results.parquet", columns=["trial_id"], filesystem=self.fs)
        return set(table["trial_id"].to_pylist())

    def _read_parts(self, kind: str, trial_ids: list[str]) -> pa.Table:
        paths = [f"{self.root}/parts/{kind}/{t}.parquet" for t in trial_ids]
        try:
            return self._read_files(paths, KINDS[kind]())
        except FileNotFoundError:  # a store from before scores parts were always written (error rows)
            return self._read_files(
                [p for p in paths if self.fs.get_file_info(p).type == pafs.FileType.File], KINDS[kind]()
            )

    def _read_kind(self, kind: str, schema: pa.Schema, manifest: dict | None) -> pa.Table:
        """The chunks the manifest lists; without a manifest the single file (a copied sweep, a trial output)."""
        if manifest is not None:
            return self._read_files([f"{self.root}/{kind}/{c['name']}.parquet" for c in manifest["chunks"]], schema)
        if self._exists(f"{kind}.parquet"):
            return self._read_files([f"{self.root}/{kind}.parquet"], schema)
        return schema.empty_table()

    def _read_files(self, paths: list[str], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """Parquet files as one table on the current schema (older files may lack newer config columns: null)."""
        if not paths:
            table = schema.empty_table()
            return table.select(columns) if columns else table
        try:
            return ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs).to_table(columns=columns)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # a column whose type changed since a file was written: cast file by file
            tables = [_conform(pq.read_table(p, filesystem=self.fs), schema) for p in paths]
            table = pa.concat_tables(tables)
            return table.select(columns) if columns else table


def _trial_of(info: pafs.FileInfo) -> str:
    return info.base_name[: -len(".parquet")]


def _stamp(info: pafs.FileInfo) -> list[int]:
    return [info.size, info.mtime_ns]


def _rows_of(table: pa.Table, trial_ids: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table["trial_id"], value_set=pa.array(trial_ids, pa.string())))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    table = table.select([n for n in schema.names if n in table.column_names])
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.table(columns, schema=schema)
