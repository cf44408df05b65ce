"""structlog set-up: one event per line, JSON in production, key=value on a terminal.

Rules: callers never pass plaintext, data keys, secrets or key material; the
request id goes on every request line. JSON lines carry epoch seconds (``ts``, cheap on
the per-request line); console lines start with a local ``YYYY-MM-DD HH:MM:SS`` time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Epoch seconds: a fraction of the cost of an ISO string on the per-request line.
    event["ts"] = round(time.time(), 3)
    return event


def configure(fmt: str = "auto", level: int = logging.INFO) -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(
            colors=False,
            # never rich's tracebacks: they print local variables, which may hold plaintext
            exception_formatter=structlog.dev.plain_traceback,
        ) if console
        else structlog.processors.JSONRenderer()
    )
    stamp: structlog.types.Processor = (
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False) if console
        else _timestamp
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
