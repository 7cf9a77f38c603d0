"""Errors raised by ticker.

    TickerError
    ├── ConfigError          a setting is missing or wrong; raised once at start
    ├── EmbeddedRedisError   the embedded Redis server could not start
    ├── StoreUnavailable     Redis cannot be reached right now (HTTP 503)
    └── ProblemError         a request cannot be served (HTTP problem details)
        ├── ValidationError  one or more fields are invalid (422)
        ├── NotFound         (404)
        ├── Conflict         (409)
        └── NotReplicated    written, but not yet on publish_min_replicas replicas (503)

Every message is a sentence that says what was wrong and, where it helps, what to do.
"""

from __future__ import annotations

from typing import Any


class TickerError(Exception):
    """Base class of every error that ticker raises on purpose."""


class ConfigError(TickerError):
    """A setting is missing or invalid."""


class EmbeddedRedisError(TickerError):
    """The embedded Redis server could not be started."""


class StoreUnavailable(TickerError):
    """Redis could not be reached; the operation wrote nothing."""


class ProblemError(TickerError):
    """An error answered as RFC 9457 problem details."""

    status = 400
    title = "Bad Request"
    type_suffix = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        type_suffix: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        if type_suffix is not None:
            self.type_suffix = type_suffix
        self.headers = headers or {}
        self.extensions = extensions


class ValidationError(ProblemError):
    status = 422
    title = "Invalid brief"
    type_suffix = "validation"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        fields = ", ".join(e["field"] for e in errors)
        first = errors[0]["message"]
        detail = first if len(errors) == 1 else f"{len(errors)} fields are invalid ({fields})."
        super().__init__(detail, errors=errors)
        self.errors = errors


class NotFound(ProblemError):
    status = 404
    title = "Not Found"
    type_suffix = "not-found"


class Conflict(ProblemError):
    status = 409
    title = "Conflict"
    type_suffix = "conflict"


class NotReplicated(ProblemError):
    """A write reached the primary, but fewer replicas than ``publish_min_replicas``
    confirmed it in time: a failover now could lose it. The answer is 503 with
    Retry-After; the detail says how to retry without writing twice."""

    status = 503
    title = "Not yet replicated"
    type_suffix = "not-replicated"
    RETRY_AFTER_SECONDS = 1

    def __init__(self, detail: str, *, replicas: int, required: int) -> None:
        super().__init__(
            detail, headers={"Retry-After": str(self.RETRY_AFTER_SECONDS)},
            replicas=replicas, required=required,
        )
