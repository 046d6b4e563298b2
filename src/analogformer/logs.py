"""The one logger of analogformer: ``logging.getLogger("analogformer")``.

Pipeline messages (study steps, pruning allocations) are INFO records of this logger or of
its children (``analogformer.pruning.allocate`` …). By default they are printed to the
current ``sys.stdout`` as ``[analogformer HH:MM:SS] message``, looked up when each record is
written, so redirected or captured output sees them; a program that configures logging
itself can remove the handler (``logger.handlers.clear()``) or raise the level.
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("analogformer")


class _StdoutHandler(logging.Handler):
    """Writes to whatever `sys.stdout` is at the time of the record (not at import)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # a logging failure must never stop a study
            self.handleError(record)


if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
    _handler = _StdoutHandler(level=logging.INFO)
    _handler.setFormatter(logging.Formatter("[analogformer %(asctime)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)


def get_logger(name: str) -> logging.Logger:
    """The child logger of a module (`get_logger(__name__)`), under "analogformer"."""
    return logging.getLogger(name if name.startswith("analogformer") else f"analogformer.{name}")
