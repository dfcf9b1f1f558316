"""One driver per sweep (sweeps/lease.py): a second `sweep run` on a live sweep stops; a dead driver's sweep is
taken over at once on its host and after the TTL from another."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

import sweeps.lease as lease_module
from sweeps.lease import LEASE_FILE, DriverLease, SweepBusyError
from sweeps.store import ResultStore


def held_by(folder, host: str, pid: int, age_s: float = 0.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LEASE_FILE).write_text(
        json.dumps(
            {"host": host, "pid": pid, "token": "other", "started_at": "then", "renewed_at": time.time() - age_s}
        )
    )


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_second_driver_stops_while_the_first_holds_the_sweep(tmp_path):
    store = ResultStore(str(tmp_path / "s"))
    with DriverLease(store):
        held = json.loads((tmp_path / "s" / LEASE_FILE).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] > 0
        with pytest.raises(SweepBusyError, match=rf"pid {held['pid']} on {socket.gethostname()}"):
            DriverLease(store).acquire()
    assert not (tmp_path / "s" / LEASE_FILE).exists()  # released at the end
    with DriverLease(store):  # and free again
        pass


def test_dead_driver_on_this_host_is_taken_over_at_once(tmp_path):
    held_by(tmp_path / "s", socket.gethostname(), dead_pid())
    with DriverLease(ResultStore(str(tmp_path / "s"))) as lease:
        assert json.loads((tmp_path / "s" / LEASE_FILE).read_text())["token"] == lease.token


def test_another_hosts_lease_is_busy_while_renewed_and_taken_over_once_it_lapses(tmp_path, monkeypatch):
    """A lease from another host cannot be checked by pid: watch it. Renewed while we wait: its driver lives
    (a duplicate launch fails). Not renewed until its TTL ends: its driver died with its node (a requeued job
    takes over instead of failing)."""
    monkeypatch.setattr(lease_module, "LEASE_TTL_S", 1.5)
    monkeypatch.setattr(lease_module, "POLL_S", 0.1)
    store = ResultStore(str(tmp_path / "s"))
    held_by(tmp_path / "s", "gpu-node-7", 12345, age_s=0.5)
    renewer = threading.Timer(0.3, held_by, args=(tmp_path / "s", "gpu-node-7", 12345))
    renewer.start()
    with pytest.raises(SweepBusyError, match=r"pid 12345 on gpu-node-7"):
        DriverLease(store).acquire()
    renewer.join()

    held_by(tmp_path / "s", "gpu-node-7", 12345, age_s=0.5)  # never renewed again
    t0 = time.perf_counter()
    lease = DriverLease(store)
    lease.acquire()
    assert 0.7 < time.perf_counter() - t0 < 3
    assert json.loads((tmp_path / "s" / LEASE_FILE).read_text())["token"] == lease.token

    held_by(tmp_path / "s", "gpu-node-7", 12345, age_s=lease_module.LEASE_TTL_S + 1)  # lapsed long ago: no wait at all
    t0 = time.perf_counter()
    DriverLease(store).acquire()
    assert time.perf_counter() - t0 < 0.5


def test_release_never_removes_another_drivers_lease(tmp_path):
    store = ResultStore(str(tmp_path / "s"))
    lease = DriverLease(store)
    lease.acquire()
    held_by(tmp_path / "s", "gpu-node-7", 12345)  # taken over while this driver was paused past the TTL
    lease.release()
    assert json.loads((tmp_path / "s" / LEASE_FILE).read_text())["host"] == "gpu-node-7"
