"""The optional node-local decoded-array cache (HDMAP_ARRAY_CACHE): shared across processes, never stale."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile

from hdmap.data.arrays import CACHE_ENV, clear_cache, load_split
from hdmap.data.layout import DataLayoutError

N_TEST = 8  # files in the test split written by write_layout below (4 good + 4 fault)


def write_layout(root, n_train=6, n_test=4):
    """Same layout as tests/test_data.py: <root>/domain_C/{train/good,test/good,test/fault}/NNNNNN.tiff."""
    rng = np.random.default_rng(1)
    for sub, n in (("train/good", n_train), ("test/good", n_test), ("test/fault", n_test)):
        folder = root / "domain_C" / sub
        folder.mkdir(parents=True)
        for i in range(n):
            img = (rng.random((31, 95)) * 0.5).astype(np.float32)
            if sub == "test/fault":
                img[10] += 1.5
            tifffile.imwrite(folder / f"{i:06d}.tiff", img)
    return root


# A fresh interpreter that loads the test split and saves what it got. mode "forbid": decoding fails the
# child; mode "count": every decoded file appends "<pid>" to a marker file (slowly, so concurrent loads
# overlap). With a "go" path, the child first signals readiness and waits for it (a start barrier).
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np, tifffile
    root, out, mode, marker, ready, go = sys.argv[1:7]
    original = tifffile.imread
    def forbidden(*a, **k):
        raise AssertionError("child decoded a TIFF although the node cache holds the split")
    def counting(*a, **k):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.05)
        return original(*a, **k)
    tifffile.imread = forbidden if mode == "forbid" else counting
    from hdmap.data.arrays import load_split
    if go != "-":
        open(ready, "w").close()
        deadline = time.time() + 20
        while not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.005)
    s = load_split(root, "C", "test")
    np.save(out + ".npy", s.images)
    with open(out + ".json", "w") as f:
        json.dump({"files": list(s.files), "labels": s.labels.tolist(), "conditions": list(s.conditions),
                   "severity": [None if np.isnan(v) else v for v in s.severity],
                   "plain": type(s.images) is np.ndarray, "writeable": bool(s.images.flags.writeable)}, f)
    """
)


def start_child(root, out, cache, mode, marker="-", ready="-", go="-"):
    env = {**os.environ, CACHE_ENV: str(cache)}
    args = [sys.executable, "-c", CHILD, str(root), str(out), mode, str(marker), str(ready), str(go)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, out):
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return np.load(f"{out}.npy"), json.loads(open(f"{out}.json").read())


def cache_entries(cache):
    """The committed "arrays" entries of the node cache: <cache>/arrays/<digest>/{images.npy,meta.json}."""
    folder = cache / "arrays"
    entries = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.exists() else []
    for entry in entries:
        assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "meta.json"], entry
    return entries


def assert_no_temp_files(cache):
    stray = [p.name for p in (cache / "arrays").iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not stray, stray


pytestmark = pytest.mark.usefixtures("fresh_arrays")


@pytest.fixture
def counted_decodes(monkeypatch):
    calls = []
    original = tifffile.imread

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imread", counting)
    return calls


def test_fresh_process_reads_the_node_cache_without_decoding(tmp_path, monkeypatch):
    root, cache = write_layout(tmp_path / "r"), tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    here = load_split(root, "C", "test")  # decodes and fills the node cache
    assert len(cache_entries(cache)) == 1
    assert_no_temp_files(cache)

    images, meta = finish(start_child(root, tmp_path / "child", cache, "forbid"), tmp_path / "child")
    assert images.dtype == np.float32 and np.array_equal(images, here.images)
    assert meta["files"] == list(here.files) and meta["labels"] == here.labels.tolist()
    assert meta["conditions"] == list(here.conditions) == ["cold", "cold", "warm", "warm"] * 2
    assert meta["severity"] == [None] * N_TEST
    assert meta["plain"] and not meta["writeable"]  # a plain read-only array over the shared mapping

    # in-process too: after the per-process cache is dropped, the hit path needs no decoding
    clear_cache()
    monkeypatch.setattr(tifffile, "imread", lambda *_: pytest.fail("decoded despite the node cache"))
    again = load_split(root, "domain_C", "test")
    assert np.array_equal(again.images, here.images) and again.images.max() > 1.5  # never clipped
    assert load_split(root, "C", "test") is again  # the lru_cache still sits in front


def test_changed_file_invalidates_the_entry(tmp_path, monkeypatch, counted_decodes):
    root, cache = write_layout(tmp_path / "r"), tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    before = load_split(root, "C", "test")
    assert len(counted_decodes) == N_TEST

    changed = root / "domain_C/test/good/000001.tiff"
    new_values = np.full((31, 95), 7.25, np.float32)
    tifffile.imwrite(changed, new_values)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    clear_cache()
    after = load_split(root, "C", "test")
    assert len(counted_decodes) == 2 * N_TEST  # re-decoded, not served stale
    assert np.array_equal(after.images[1], new_values) and not np.array_equal(before.images[1], new_values)
    assert np.array_equal(np.delete(after.images, 1, 0), np.delete(before.images, 1, 0))
    assert len(cache_entries(cache)) == 2  # a new key, old entry left untouched

    # a removed file changes the key as well
    (root / "domain_C/test/fault/000003.tiff").unlink()
    clear_cache()
    assert len(load_split(root, "C", "test")) == N_TEST - 1
    assert_no_temp_files(cache)


def test_concurrent_first_loads_decode_once(tmp_path):
    root, cache = write_layout(tmp_path / "r"), tmp_path / "cache"
    marker, go = tmp_path / "decodes.txt", tmp_path / "go"
    outs = [tmp_path / f"child{i}" for i in range(2)]
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [start_child(root, o, cache, "count", marker, r, go) for o, r in zip(outs, readies)]
    deadline = time.time() + 20
    while not all(r.exists() for r in readies) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both children are imported and waiting: release them together
    results = [finish(p, o) for p, o in zip(procs, outs)]

    decoders = marker.read_text().split()
    assert len(decoders) == N_TEST and len(set(decoders)) == 1  # one process decoded, the other waited
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert len(cache_entries(cache)) == 1
    assert_no_temp_files(cache)


def test_validation_errors_are_raised_and_never_cached(tmp_path, monkeypatch):
    root, cache = write_layout(tmp_path / "r"), tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    bad = root / "domain_C/train/good/000003.tiff"
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"this is not a tiff")
    for _ in range(2):  # the second attempt must fail the same way, not find a cached entry
        clear_cache()
        with pytest.raises(DataLayoutError, match=r"000003\.tiff: not a readable TIFF"):
            load_split(root, "C", "train")
    tifffile.imwrite(root / "domain_C/test/good/000001.tiff", np.zeros((32, 95), np.float32))
    with pytest.raises(DataLayoutError, match=r"000001\.tiff: shape \(32, 95\), expected \(31, 95\)"):
        load_split(root, "C", "test")
    assert cache_entries(cache) == [] and (cache / "arrays").exists()  # nothing committed, only lock files
    assert all(p.name.endswith(".lock") for p in (cache / "arrays").iterdir())
    bad.write_bytes(good_bytes)
    clear_cache()
    assert len(load_split(root, "C", "train")) == 6


def test_severity_comes_from_the_sidecar_not_the_cache(tmp_path, monkeypatch):
    root, cache = write_layout(tmp_path / "r"), tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    sidecar = root / "ground_truth.csv"

    def write_sidecar(severity):
        sidecar.write_text(
            "domain,split,file,label,condition,fault_row,severity\n"
            f"domain_C,test,domain_C/test/fault/000000.tiff,1,cold,10,{severity}\n"
        )

    write_sidecar(0.25)
    assert load_split(root, "C", "test").severity[4] == 0.25
    write_sidecar(0.75)
    clear_cache()
    monkeypatch.setattr(tifffile, "imread", lambda *_: pytest.fail("decoded despite the node cache"))
    severity = load_split(root, "C", "test").severity
    assert severity[4] == 0.75 and np.isnan(np.delete(severity, 4)).all()


def test_unset_env_writes_no_cache(tmp_path, monkeypatch, counted_decodes):
    root = write_layout(tmp_path / "r")
    would_be = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    first = load_split(root, "C", "train")
    clear_cache()
    second = load_split(root, "C", "train")
    assert len(counted_decodes) == 12  # each process-level load decodes: no disk cache behind it
    assert np.array_equal(first.images, second.images)
    assert not would_be.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    monkeypatch.setenv(CACHE_ENV, "")  # empty counts as unset
    clear_cache()
    load_split(root, "C", "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_unusable_node_cache_warns_and_still_decodes_once(tmp_path, monkeypatch, counted_decodes):
    root = write_layout(tmp_path / "r")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker))  # no folder can be made there
    with pytest.warns(UserWarning, match="unusable"):
        split = load_split(root, "C", "test")
    assert len(counted_decodes) == N_TEST

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    clear_cache()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "full"))
    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)  # the entry cannot be written
    with pytest.warns(UserWarning, match="could not write"):
        again = load_split(root, "C", "test")
    assert len(counted_decodes) == 2 * N_TEST  # decoded once more, not twice more
    assert np.array_equal(again.images, split.images) and not again.images.flags.writeable
    assert cache_entries(tmp_path / "full") == []
