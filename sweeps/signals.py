"""Ctrl-C and SIGTERM in the sweep's driver: how a signal stops a running sweep (sweeps.runner)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopSignals:
    """Ctrl-C and SIGTERM stop a sweep the way Tune stops on Ctrl-C: no new trials start, running ones end
    without a row (they run again on resume), `tuner.fit()` returns. The signal is kept for the exit code.

    Tune's own SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER) because it swallows the signal: the driver
    could not tell an interrupted sweep from a finished one. Tune's graceful stop is the handler it installs
    for SIGUSR1 inside `fit()` (ray/tune/tune.py, _setup_signal_catching); a second signal stops at once.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_fit = False

    def note_interrupt(self) -> None:
        """A KeyboardInterrupt reached the driver (a second signal, or one outside `fit`): the sweep stops now."""
        self.received = self.received or signal.SIGINT

    @contextmanager
    def handling(self):
        """Install the handlers (after `ray.init`, which installs its own SIGTERM handler); main thread only."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    @contextmanager
    def fitting(self):
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def _handle(self, signum, frame) -> None:
        first, self.received = self.received is None, self.received or signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.in_fit and callable(tune_stop):
            tune_stop(signum, frame)
        else:
            raise KeyboardInterrupt
