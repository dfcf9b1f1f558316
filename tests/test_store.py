"""The results store: atomic parts, retries overwrite, compaction reads only what changed."""

import pyarrow.parquet as pq
import pytest

from hdmap.config import load_trial_config
from hdmap.results import results_schema
from hdmap.trial import failed_trial
from sweeps.store import ResultStore


def error_result(k: int, message: str = "boom"):
    return failed_trial(load_trial_config(None, [f"model.k={k}"]), RuntimeError(message))


def test_parts_compact_and_retry_overwrite(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "sweep")
    for k in (1, 2):
        store.mark_attempt(error_result(k).rows[0]["trial_id"])
        store.write_trial(error_result(k), "s", "h")
    store.compact()
    table = pq.read_table(tmp_path / "sweep" / "results.parquet")
    assert table.num_rows == 2 and table.schema.equals(results_schema())
    assert table["attempts"].to_pylist() == [1, 1] and set(table["sweep"].to_pylist()) == {"s"}

    real_read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("re-read an unchanged part"))
    assert store.results().num_rows == 2  # served from the store's cache
    monkeypatch.setattr(pq, "read_table", real_read)

    retried = error_result(1, "second attempt")
    store.write_trial(retried, "s", "h")  # a retry replaces its own part: no duplicate row
    rows = store.results().to_pylist()
    assert len(rows) == 2 and any("second attempt" in r["error"] for r in rows)
    assert not list((tmp_path / "sweep").rglob("*.tmp"))
