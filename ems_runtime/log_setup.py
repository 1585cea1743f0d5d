"""Logging for the EMS command lines (``ems-edge``, ``ems-ingest``, ``ems-northbound``).

``configure_logging(level, stream)`` replaces the root logger's handlers with one
on ``stream`` (default stderr): readable lines on a terminal, JSON lines
otherwise, one object a record ``{"ts", "level", "logger", "msg"}`` (plus
``"exc"`` with a traceback), ``ts`` in UTC with milliseconds. Only the CLI
modules call it; everything else logs through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ``ts`` (``2026-12-06T17:05:09.123Z``), ``level``, ``logger``, ``msg``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every record at ``level`` (``info``, ``debug``...) and above to ``stream``, formatted for who reads it."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
