"""The package's own error types: a user's mistake, reported as one message with the fix.

The command line prints ``error: <message>`` and exits with status 2 for these (and only these):
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MMRecError(Exception):
    """Base of every error that reports a user's mistake (bad file, key, value, run folder)."""

    def __str__(self) -> str:  # one message, never KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


class ConfigError(MMRecError, ValueError):
    """A configuration key or value is invalid; the message names the key."""


class UnknownModelError(ConfigError, KeyError):
    """No model is registered under that name (a KeyError too, as before)."""


class DataError(MMRecError, ValueError):
    """A dataset file is malformed; the message names the file, the place and the fix."""


class RunError(MMRecError):
    """A run directory cannot be used as asked (exists, incomplete, mismatched, unreadable)."""


class RequestError(MMRecError, ValueError):
    """A recommendation request is invalid (unknown user or item id, bad k)."""


class SamplingError(DataError, RuntimeError):
    """No negative item can be drawn for some users (they interacted with every candidate)."""


class UnknownIdError(RequestError):
    """A user or item id outside the dataset's range (HTTP 404)."""
