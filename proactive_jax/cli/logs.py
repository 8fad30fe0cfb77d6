"""Logging of the long-running commands (train, export)."""

from __future__ import annotations

import logging


class _NoTraceback(logging.Filter):
    """Library log records keep their message but lose the traceback: a failed background save is reported
    once, as one line, by the error that stops the run (orbax logs the same failure from several threads)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} [{type(exc).__name__}: {exc}]"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def setup_logging() -> None:
    """INFO lines for the run's own progress; the checkpoint and JAX libraries at ERROR (``-v``: WARNING), without
    tracebacks."""
    from proactive_jax.cli.startup import verbose

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "etils"):
        logger = logging.getLogger(noisy)
        logger.setLevel(logging.WARNING if verbose() else logging.ERROR)
        if not any(isinstance(f, _NoTraceback) for f in logger.filters):
            logger.addFilter(_NoTraceback())
