"""The results store: atomic parts, retries overwrite, compaction reads only the new parts into rolling chunks."""

import json

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from hdmap.config import load_trial_config
from hdmap.results import results_schema
from hdmap.trial import failed_trial
from sweeps import store as store_module
from sweeps.meta import SweepMeta
from sweeps.store import ResultStore
from sweeps.tracking import WandbSettings


def error_result(k: int, message: str = "boom"):
    return failed_trial(load_trial_config(None, [f"model.k={k}"]), RuntimeError(message))


def write(store: ResultStore, k: int, message: str = "boom") -> str:
    result = error_result(k, message)
    store.mark_attempt(result.rows[0]["trial_id"])
    store.write_trial(result, "s", "h")
    return result.rows[0]["trial_id"]


def test_parts_compact_export_and_retry_overwrite(tmp_path):
    store = ResultStore(tmp_path / "sweep")
    for k in (1, 2):
        write(store, k)
    assert store.compact() and store.export()
    table = pq.read_table(tmp_path / "sweep" / "results.parquet")
    assert table.num_rows == 2 and table.schema.equals(results_schema())
    assert table["attempts"].to_pylist() == [1, 1] and set(table["sweep"].to_pylist()) == {"s"}
    assert not store.compact() and not store.export()  # nothing new: no rewrite

    write(store, 1, "second attempt")  # a retry replaces its own part: no duplicate row
    assert store.compact()
    rows = store.results().to_pylist()
    assert len(rows) == 2 and any("second attempt" in r["error"] for r in rows)
    assert not list((tmp_path / "sweep").rglob("*.tmp"))


def test_a_pass_reads_only_new_parts_into_rolling_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHUNK_TRIALS", 2)
    store = ResultStore(tmp_path / "sweep")
    ids = [write(store, k) for k in (1, 2, 3)]
    store.compact()
    read: list[list[str]] = []
    real = ResultStore._read_parts
    monkeypatch.setattr(ResultStore, "_read_parts", lambda self, kind, t: read.append(t) or real(self, kind, t))
    ids += [write(store, k) for k in (4, 5)]
    assert store.compact()
    assert [sorted(t) for t in read] == [sorted(ids[3:])] * 2  # results and scores of the new trials, no others
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    chunks = [set(c["trials"]) for c in manifest["chunks"]]
    assert [len(c) for c in chunks] == [2, 2, 1] and set().union(*chunks[1:]) >= set(ids[3:])
    assert chunks[0] | chunks[1] >= set(ids[:3])  # the open chunk took the first new trial
    # the chunk folders are one dataset for any Parquet reader, and the store's read is the same rows
    assert sorted(ds.dataset(tmp_path / "sweep" / "results").to_table()["trial_id"].to_pylist()) == sorted(ids)
    assert sorted(store.results()["trial_id"].to_pylist()) == sorted(ids)


def test_reads_see_parts_not_compacted_yet_and_write_nothing(tmp_path):
    store = ResultStore(tmp_path / "sweep")
    first = write(store, 1)
    store.compact()
    second = write(store, 2)
    write(store, 1, "second attempt")  # a retry since the pass: its new row replaces the compacted one
    files = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    assert store.status_by_trial() == {first: "error", second: "error"}
    rows = store.results().to_pylist()
    assert sorted(r["trial_id"] for r in rows) == sorted([first, second])
    assert "second attempt" in next(r["error"] for r in rows if r["trial_id"] == first)
    assert {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()} == files  # read only


def test_never_rewrites_a_file_holding_trials_the_parts_lack(tmp_path):
    store = ResultStore(tmp_path / "copied")
    write(store, 1)
    store.compact() and store.export()
    other = ResultStore(tmp_path / "other")
    write(other, 2)
    (tmp_path / "other" / "results.parquet").write_bytes((tmp_path / "copied" / "results.parquet").read_bytes())
    before = (tmp_path / "other" / "results.parquet").read_bytes()
    assert not other.compact() and not other.export()
    assert (tmp_path / "other" / "results.parquet").read_bytes() == before
    assert not (tmp_path / "other" / "manifest.json").exists()


def test_sweep_meta_round_trip_and_damaged_file(tmp_path):
    store = ResultStore(tmp_path / "sweep")
    assert store.meta() is None
    meta = SweepMeta(
        name="s",
        axes={"model.k": [3, 1]},
        trial_ids=["a"],
        state="running",
        wandb=WandbSettings(project="gearbox", entity="lab"),
    )
    store.write_meta(meta)
    assert store.meta() == meta
    (tmp_path / "sweep" / "sweep.json").write_text("{not json")
    with pytest.raises(ValueError, match="sweep.json: not a readable sweep metadata file"):
        store.meta()


def test_a_store_uri_with_credentials_writes_and_shows_none(tmp_path, s3, monkeypatch):
    """Credentials in the store's URI (s3://KEY:SECRET@...) open it, and reach nothing it shows or writes: its `uri`,
    the parts, chunks, manifest and sweep.json, and the report uploaded beside them (finish)."""
    import pyarrow.fs as pafs

    from sweeps.finish import finish

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the summary's run folder for results on object storage
    key_id, secret = "AKIDSTORE", "S3CR3TSTORE"
    store = ResultStore(f"s3://{key_id}:{secret}@lab/studies/creds?{s3}")
    assert store.uri == f"s3://***@lab/studies/creds?{s3}"
    for k in (1, 2):
        write(store, k)
    store.write_meta(SweepMeta(name="creds", wandb=WandbSettings(mode="disabled")))
    assert store.compact() and store.export()
    done = finish(store, store.meta())
    assert done.html == "s3://***@lab/studies/creds/report.html"
    fs = store.fs
    files = [i.path for i in fs.get_file_info(pafs.FileSelector("lab", recursive=True)) if i.type == pafs.FileType.File]
    assert {"lab/studies/creds/report.html", "lab/studies/creds/sweep.json"} <= set(files)
    for path in files:
        with fs.open_input_stream(path) as f:
            text = f.read()
        assert key_id.encode() not in text and secret.encode() not in text, path
    local = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in local if secret.encode() in p.read_bytes() or key_id.encode() in p.read_bytes()]


def test_a_trial_stopped_by_the_scheduler_is_recorded_pruned_with_its_epochs(tmp_path):
    """Tune marks `done` the report the scheduler stopped a trial on; that report's 0-based `epoch` says how many
    epochs it trained (the report's `asha` line in the search section adds them up)."""
    from types import SimpleNamespace

    from hdmap.config import TrialConfig
    from sweeps.callbacks import PruneRecorder

    store = ResultStore(str(tmp_path / "sweep"))
    recorder = PruneRecorder(store, "s", "h")
    trial = SimpleNamespace(config={"trial": TrialConfig().model_dump(mode="json")})
    recorder.on_trial_result(0, [], trial, {"training_iteration": 3, "epoch": 2})  # going on: no row
    assert store.results(["trial_id"]).num_rows == 0
    recorder.on_trial_result(0, [], trial, {"training_iteration": 3, "epoch": 2, "done": True})
    (row,) = store.results(["status", "epochs_run", "error"]).to_pylist()
    assert row == {"status": "pruned", "epochs_run": 3, "error": "stopped early by the scheduler after 3 reports"}
