"""One driver per sweep (sweeps/lease.py): a second `sweep run` on a live sweep stops; a dead driver's sweep is
taken over at once on its host and after the TTL from another."""

import json
import socket
import subprocess
import sys
import time

import pytest

from sweeps.lease import LEASE_FILE, LEASE_TTL_S, DriverLease, SweepBusyError
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


def test_another_hosts_lease_holds_until_the_ttl(tmp_path):
    store = ResultStore(str(tmp_path / "s"))
    held_by(tmp_path / "s", "gpu-node-7", 12345, age_s=10)
    with pytest.raises(SweepBusyError, match=r"gpu-node-7.*if it died, the sweep is free 1\d\d s from now"):
        DriverLease(store).acquire()
    held_by(tmp_path / "s", "gpu-node-7", 12345, age_s=LEASE_TTL_S + 1)
    DriverLease(store).acquire()


def test_release_never_removes_another_drivers_lease(tmp_path):
    store = ResultStore(str(tmp_path / "s"))
    lease = DriverLease(store)
    lease.acquire()
    held_by(tmp_path / "s", "gpu-node-7", 12345)  # taken over while this driver was paused past the TTL
    lease.release()
    assert json.loads((tmp_path / "s" / LEASE_FILE).read_text())["host"] == "gpu-node-7"
