"""One driver per sweep: a lease (driver.json, kept by the store in the sweep folder), renewed by a driver thread.

Two drivers on one sweep (the same spec launched twice, a requeued job while the first still runs) would run
the same trials twice and race on the manifest: a chunk written by one, the manifest by the other, rows missing
from the report. So `hdmap sweep run` stops while another driver holds the sweep: at once when that is a live
process on this host; when it runs on another host (no pid to check), as soon as its lease is renewed while we
watch. A driver that died frees the sweep at once on its own host, and LEASE_TTL_S after its last renewal
elsewhere, when the watching driver takes over (a requeued cluster job goes on, no re-submission). Readers
(`hdmap report`) never look at it. This module decides who holds the sweep; the store reads and writes the file.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid

from hdmap.errors import UserError
from sweeps.store import LEASE_FILE, ResultStore

LEASE_TTL_S = 120.0
RENEW_EVERY_S = 30.0  # four renewals per TTL: a slow write (object storage) never lets a live lease lapse
POLL_S = 2.0  # how often a waiting driver re-reads another host's lease


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
        """Take the sweep, or raise SweepBusyError naming the driver that holds it. Another host's lease that is
        not renewed while we watch (at most until its TTL ends) belonged to a driver that died, e.g. with its node:
        a requeued job takes the sweep over instead of failing, while a duplicate launch fails within one renewal
        period."""
        held = self.store.lease()
        if held and held.get("token") != self.token and _alive(held):
            if held.get("host") != socket.gethostname():
                held = self._watch(held)
            if held is not None:
                raise SweepBusyError(
                    f"{self.store.uri} is being run by another `hdmap sweep run` (pid {held.get('pid')} on "
                    f"{held.get('host')}, started {held.get('started_at')}; {self.store.uri}/{LEASE_FILE} renewed "
                    f"{_age(held):.0f} s ago): wait for it to finish or stop it"
                )
        self.renew()

    def _watch(self, held: dict) -> dict | None:
        """The lease once renewed (its driver lives), or None if it lapsed or was released."""
        wait_s = LEASE_TTL_S - _age(held)
        print(
            f"{self.store.uri}/{LEASE_FILE}: held by pid {held.get('pid')} on {held.get('host')}, renewed "
            f"{_age(held):.0f} s ago; waiting up to {wait_s:.0f} s to see whether that driver is still alive",
            flush=True,
        )
        deadline = time.time() + wait_s
        while time.time() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.time())))
            now = self.store.lease()
            if now is None:  # released: that driver finished
                return None
            if now.get("token") != held.get("token") or now.get("renewed_at") != held.get("renewed_at"):
                return now
        return None

    def renew(self) -> None:
        self.store.write_lease(
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
        held = self.store.lease()
        if held and held.get("token") == self.token:
            self.store.drop_lease()


def _age(held: dict) -> float:
    return time.time() - float(held.get("renewed_at", 0))


def _alive(held: dict) -> bool:
    """Possibly alive: renewed within the TTL, and on this host its process still exists."""
    if _age(held) > LEASE_TTL_S:
        return False
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):  # not ours to signal (PermissionError), or no readable pid: assume alive
        return True
    return True
