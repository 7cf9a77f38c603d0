"""Keeping reader tokens out of logs.

A browser's ``EventSource`` and an ``<iframe>`` of ``/embed`` cannot send a header, so a
reader token may come as ``?token=`` in a URL; uvicorn's access log writes every
request's path with its query string. ``TokenFilter`` rewrites the value of every
``token`` query parameter (and of ``access_token``, its usual other name) as
``[redacted]`` in each record of the loggers it is installed on, before any handler
formats it. ticker's own logs name channels and paths, never a query string.
"""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"((?:^|[?&;])(?:access_)?token=)[^&;#\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"
LOGGERS = ("uvicorn.access", "uvicorn.error")  # (a logger's filter sees only its own records)


def redact(text: str) -> str:
    return _TOKEN.sub(lambda m: m[1] + REDACTED, text)


class TokenFilter(logging.Filter):
    """Redacts ``token=`` values in a record's message and arguments (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(a, str) and "token=" in a.lower() for a in args
        ):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        return True


_FILTER = TokenFilter()


def install() -> None:
    """Add the filter to the loggers that may see a URL (once each)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
