"""One way to write a file atomically, on the local disk or on object storage: readers see the old file or the new
one, never a half-written one, and a writer that fails leaves nothing behind.

    atomic_write("runs/x/report.md", text)                              # str (UTF-8) or bytes
    atomic_write("runs/x/images.npy", lambda f: np.save(f, array))      # or a function writing to a binary file
    atomic_write_table(table, "bucket/sweep/results.parquet", s3)       # Parquet, on any pyarrow filesystem

- local (no filesystem, or a `LocalFileSystem`): a hidden temporary file in the same folder (``.<name>.<pid>.<uuid>
  .tmp``, so globs for ``*.parquet`` never see it), fsync-ed, then ``os.replace``-d over the target (atomic on
  POSIX); the folder is fsync-ed too so the rename survives a power loss. A full disk (or quota) is a
  `hdmap.errors.DiskFullError` naming the target and its disk (a failing ``write()`` names no file).
- S3 and GCS: written directly. Their PUT is atomic (an object becomes visible only once its upload completes;
  a failed multipart upload publishes nothing), so a temporary key plus a move would only add a server-side copy.
  The content is produced in memory first: pyarrow's output streams cannot abort, and closing one after a failing
  `write` function would publish a partial object.
- any other pyarrow filesystem (HDFS, fsspec-wrapped, ...): a temporary name next to the target, then ``move``.

Parent folders must exist (object stores have none to create).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hdmap.errors import disk_full

Content = bytes | str | Callable[[BinaryIO], None]

ATOMIC_PUT = {"s3", "gcs"}  # pyarrow filesystem type names whose uploads become visible all at once


def atomic_write(path: str | Path, content: Content, filesystem: pafs.FileSystem | None = None) -> None:
    """Write `content` (bytes, text, or a function given a binary file to write to) to `path` atomically."""
    write = content if callable(content) else _writer(content)
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        _write_local(Path(path), write)
    elif filesystem.type_name in ATOMIC_PUT:
        buffer = pa.BufferOutputStream()
        write(buffer)
        data = buffer.getvalue()
        with filesystem.open_output_stream(str(path)) as f:
            f.write(data)
    else:
        tmp = _temporary_name(str(path))
        try:
            with filesystem.open_output_stream(tmp) as f:
                write(f)
            filesystem.move(tmp, str(path))
        except BaseException:
            _remove_quietly(filesystem, tmp)
            raise


def atomic_write_table(table: pa.Table, path: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
    """`atomic_write` of a Parquet file."""
    atomic_write(path, lambda f: pq.write_table(table, f), filesystem)


def _writer(content: bytes | str) -> Callable[[BinaryIO], None]:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return lambda f: f.write(data)


def _temporary_name(path: str) -> str:
    folder, slash, name = path.rpartition("/")
    return f"{folder}{slash}.{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _write_local(path: Path, write: Callable[[BinaryIO], None]) -> None:
    tmp = Path(_temporary_name(str(path)))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = disk_full(exc, path)  # a write() on a full disk names no file: name the target (and its disk)
        if full is not None and full is not exc:
            raise full from exc
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform or file system that does not open folders: the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(filesystem: pafs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except OSError:  # never written, or the store is unreachable: the failure being raised says more
        pass
