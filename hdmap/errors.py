"""The errors a user can fix from the message alone — one place, so every command treats them alike.

Each names the file, field or value and what was expected. Commands print them as one line (exit 2, no
traceback); a sweep records them once per trial and never retries them, since a retry cannot succeed.
Anything else is a bug or an environment fault: shown with its traceback, retried by a sweep.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's config, data or environment; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config that does not validate; the message names the source, field path and allowed values."""


class DataLayoutError(UserError, ValueError):
    """A data root does not follow the documented layout; the message names what and where."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights requested but not available locally."""


class OutputError(UserError, OSError):
    """An output location that cannot take the results (a file, read-only, or holding another trial's results)."""
