"""The package's exceptions: one base, :class:`ProactiveError`, and a few kinds under it.

Every error a user can cause (a bad config key, a missing or corrupt checkpoint, a dataset that cannot be
read or fetched, a stale eval directory) is a ``ProactiveError`` whose message names what is wrong, where
(file, line, tensor, config key) and what was expected. ``proactive-jax`` turns it into one line on stderr
and exit code 2 (:func:`proactive_jax.cli.main`); anything else is a bug and keeps its traceback.

The kinds also derive from the built-in class a caller may catch (``ValueError``; the checkpoint errors
from ``RuntimeError`` too). A few modules name a narrower kind under these (``data.example.ExampleError``,
``data.loaders.LoaderError``, ``method.probe.ProbeError``, ...).
"""

from __future__ import annotations


class ProactiveError(Exception):
    """Base of every error this package raises on bad input or bad state (one line, no traceback)."""

    exit_code = 2


class ConfigError(ProactiveError, ValueError):
    """A configuration (YAML run config, override, config.json, head spec) is malformed."""


class CheckpointError(ProactiveError, ValueError, RuntimeError):
    """A checkpoint (Orbax run directory or Hugging Face directory) is missing, partial or malformed."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes differ from what was written: a checksum mismatch naming the step and tensor."""


class DataError(ProactiveError, ValueError):
    """Data (a dataset, a row, an example, a cache) cannot be used; the message names where. ``reason``: a short
    category (``"bad row"``, ``"bad audio"``, ...) that skip counters group by."""

    def __init__(self, message: str = "", *, reason: str = "bad row"):
        super().__init__(message)
        self.reason = reason


class OfflineError(DataError):
    """Something had to be fetched over the network and could not be (offline mode or no network)."""


class EvalError(ProactiveError, ValueError):
    """Bad evaluation input or an eval directory that belongs to another evaluation."""


class SessionError(ProactiveError, ValueError):
    """Bad use of a live session (closed, bad unit); the message says which row and why."""


class TrainingDiverged(ProactiveError, RuntimeError):
    """The loss or gradient norm became NaN/Inf (exit code 3)."""

    exit_code = 3
