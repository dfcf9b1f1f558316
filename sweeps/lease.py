"""One driver per sweep: a lease file (driver.json) in the sweep folder, renewed by a driver thread.

Two drivers on one sweep (the same spec launched twice, a requeued job while the first still runs) would run
the same trials twice and race on the manifest: a chunk written by one, the manifest by the other, rows missing
from the report. So `hdmap sweep run` stops at once while another driver holds the sweep: a live process on this
host, or, from another host, a lease renewed within LEASE_TTL_S. A driver that died frees the sweep at once on its
own host (its pid is gone) and after LEASE_TTL_S elsewhere. Readers (`hdmap report`) never look at it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid

from hdmap.errors import UserError
from sweeps.store import ResultStore

LEASE_FILE = "driver.json"
LEASE_TTL_S = 120.0
RENEW_EVERY_S = 30.0  # four renewals per TTL: a slow write (object storage) never lets a live lease lapse


class SweepBusyError(UserError):
    """Another driver is running this sweep."""


class DriverLease:
    """`with DriverLease(store):` holds the sweep for the block, renewing the lease every RENEW_EVERY_S."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.token = uuid.uuid4().hex
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="hdmap-lease", daemon=True)

    def __enter__(self) -> DriverLease:
        self.acquire()
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._renewer.join()
        self.release()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            try:
                self.renew()
            except OSError:  # an object-storage hiccup: the next renewal, well within the TTL, retries
                pass

    def acquire(self) -> None:
        """Take the sweep, or raise SweepBusyError naming the driver that holds it."""
        held = self.store.read_json(LEASE_FILE)
        if held and held.get("token") != self.token:
            age = time.time() - float(held.get("renewed_at", 0))
            if _alive(held, age):
                where = f"pid {held.get('pid')} on {held.get('host')}, started {held.get('started_at')}"
                elsewhere = held.get("host") != socket.gethostname()
                raise SweepBusyError(
                    f"{self.store.uri} is being run by another `hdmap sweep run` ({where}; {self.store.uri}/"
                    f"{LEASE_FILE} renewed {age:.0f} s ago): wait for it or stop it"
                    + (f"; if it died, the sweep is free {LEASE_TTL_S - age:.0f} s from now" if elsewhere else "")
                )
        self.renew()

    def renew(self) -> None:
        self.store.write_json(
            LEASE_FILE,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "started_at": self.started_at,
                "renewed_at": time.time(),
            },
        )

    def release(self) -> None:
        """Remove the lease if it is still this driver's (never another's)."""
        held = self.store.read_json(LEASE_FILE)
        if held and held.get("token") == self.token:
            self.store.delete(LEASE_FILE)


def _alive(held: dict, age: float) -> bool:
    if age > LEASE_TTL_S:
        return False
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True
