"""hdmap.io.atomic_write: a reader sees the old file or the new one, and a failing writer leaves nothing behind."""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from hdmap.io import atomic_write, atomic_write_table


class WriterFailed(Exception):
    pass


def half_then_fail(f):
    f.write(b"half of the new content")
    raise WriterFailed("disk went away")


def test_local_writes_replace_whole_files_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "report.md"
    atomic_write(target, "first ✓")
    assert target.read_text(encoding="utf-8") == "first ✓"
    atomic_write(str(target), b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(WriterFailed):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"second"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    atomic_write(tmp_path / "a.npy", lambda f: np.save(f, array), pafs.LocalFileSystem())
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "report.md"]  # no temporary file left


def test_parquet_on_a_filesystem_without_atomic_put_goes_through_a_temporary_name(tmp_path):
    mock = pafs._MockFileSystem()  # neither local nor S3/GCS: temporary name + move
    mock.create_dir("bucket")
    table = pa.table({"trial_id": ["a", "b"], "auroc": [0.5, 0.75]})
    atomic_write_table(table, "bucket/results.parquet", mock)
    assert pq.read_table("bucket/results.parquet", filesystem=mock).equals(table)
    with pytest.raises(WriterFailed):
        atomic_write("bucket/results.parquet", half_then_fail, mock)
    assert pq.read_table("bucket/results.parquet", filesystem=mock).equals(table)
    assert [i.path for i in mock.get_file_info(pafs.FileSelector("bucket"))] == ["bucket/results.parquet"]


def test_s3_objects_appear_whole_and_a_failing_writer_publishes_nothing(s3):
    fs, _ = pafs.FileSystem.from_uri(f"s3://lab/x?{s3}")
    table = pa.table({"trial_id": ["a"], "auroc": [0.9]})
    atomic_write_table(table, "lab/sweep/results.parquet", fs)
    assert pq.read_table("lab/sweep/results.parquet", filesystem=fs).equals(table)
    with pytest.raises(WriterFailed):
        atomic_write("lab/sweep/results.parquet", half_then_fail, fs)  # the old object stays as it was
    with pytest.raises(WriterFailed):
        atomic_write("lab/sweep/never.parquet", half_then_fail, fs)  # and no partial object appears
    assert pq.read_table("lab/sweep/results.parquet", filesystem=fs).equals(table)
    atomic_write("lab/sweep/report.md", "# report\n", fs)
    keys = sorted(i.path for i in fs.get_file_info(pafs.FileSelector("lab", recursive=True)) if i.is_file)
    assert keys == ["lab/sweep/report.md", "lab/sweep/results.parquet"]  # no temporary key either
    with fs.open_input_stream("lab/sweep/report.md") as f:
        assert f.read() == b"# report\n"
