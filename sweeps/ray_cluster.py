"""The Ray a sweep runs on: which one (`--address`, checked before anything is written), starting or joining it, the
switches Tune reads from the environment, and where Ray's own log records go. The driver's only Ray start-up code.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from hdmap.errors import UserError

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our store is the record; skip Tune's CSV/JSON/TBX
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # sweeps.signals handles Ctrl-C (and SIGTERM) the same way
# A trial that records its own user error ends without a final report, so without the scheduler's metric; that
# every model reports the metric is checked by the spec (sweeps/spec.py), before launch.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
NODE_ARRAY_CACHE = "/tmp/hdmap-array-cache"


class SweepEnvironmentError(UserError):
    """The machine, not the spec, is wrong (output not writable, no Ray cluster at --address): one line, exit 2."""


def ray_address(address: str | None) -> str:
    """The Ray to run on: "local", this sweep's own new instance, unless --address names a cluster. Plain
    ray.init() would join whatever runs on the machine (a `ray start`, another sweep, a test's cluster, an exported
    RAY_ADDRESS); `--address auto` does that on purpose, on a cluster's head node, and is the default in a Ray Job.

    A cluster address is checked with one TCP connection first: ray.init retries a head that does not answer for
    minutes, printing GCS warnings, where a typo, a stopped cluster or a stale `ray start` record is one error."""
    given = f"--address {address}"
    if not address and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # set for a Ray Job's entrypoint
        address, given = "auto", "a Ray Job's default --address auto"  # the job's own cluster (RAY_ADDRESS: its GCS)
    if not address or address == "local":
        return "local"
    if address == "auto" and os.environ.get("RAY_ADDRESS"):  # what ray.init does with "auto"
        address, given = os.environ["RAY_ADDRESS"], f"{given} (RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
    if "://" in address:  # ray:// (Ray Client), or a dashboard's http:// where a GCS address belongs
        raise SweepEnvironmentError(
            f"{given}: the sweep's driver must run on the cluster (it compacts the results and logs W&B where it "
            "runs), so Ray Client (ray://) and dashboard (http://) addresses are not used; submit the sweep with "
            "`ray job submit` or cluster/submit_sweep.py (cluster/README.md), which run `hdmap sweep run SPEC "
            "--address auto` on the head node, or give the head's GCS address, host:6379"
        )
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address  # ray.init's own look-up of "auto"

        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError as exc:
            raise _no_cluster(given, str(exc).splitlines()[0]) from None
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise SweepEnvironmentError(f"{given}: expected 'auto' or the head's GCS address host:port, e.g. head:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise _no_cluster(given, f"nothing answers at {target}: {exc or type(exc).__name__}") from None
    return address


def _no_cluster(given: str, why: str) -> SweepEnvironmentError:
    return SweepEnvironmentError(
        f"{given}: no Ray cluster to connect to ({why}); start one with `ray start --head` (see cluster/README.md),"
        " or drop --address to run on a local Ray instance"
    )


def start_ray(address: str, num_cpus: int | None) -> None:
    """Start this sweep's own Ray ("local") or join the cluster at `address` (from `ray_address`), once per
    process: a restarted Tune run keeps the Ray it had."""
    import ray

    if ray.is_initialized():
        return
    # decoded splits are shared by every worker of a node through a node-local memory-mapped cache
    env = {"HDMAP_ARRAY_CACHE": os.environ.get("HDMAP_ARRAY_CACHE", NODE_ARRAY_CACHE)}
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address == "local" else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="ERROR",
            runtime_env={"env_vars": env},
        )
    except ConnectionError as exc:
        raise _no_cluster(f"--address {address}", str(exc).splitlines()[0]) from None


def is_ray_worker_loss(exc: BaseException) -> bool:
    """Tune itself stopped on a lost worker (the exception, or what it was raised from, is a Ray error)."""
    from ray.exceptions import RayError

    return any(isinstance(e, RayError) for e in (exc, exc.__cause__, exc.__context__))


@contextmanager
def ray_logs_to(path: Path):
    """Ray's and Tune's log records (a traceback per failed attempt) go to `path`, not the terminal: the
    progress display and the failure table are what a user reads; the log is where the details are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    handler = _BestEffortFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = ray_logger.handlers[:]
    ray_logger.handlers = [handler]
    try:
        yield
    finally:
        ray_logger.handlers = saved
        handler.close()


class _BestEffortFileHandler(logging.FileHandler):
    """A log that never fails the sweep: on a full disk its records are dropped, without logging's "--- Logging
    error ---" traceback on the terminal per record, and closing it raises nothing."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last buffered records did not fit
            pass
