"""Errors raised by the client.

    TickerClientError
    ├── ServerUnreachable        no answer from the server, after the retries
    ├── SubscriptionRefused      the server refused a subscription for good (close 1008 ...)
    └── ProblemError             the server answered with RFC 9457 problem details
        ├── AuthenticationError  401: no API key, or an unknown, revoked, expired or
        │                        rotated one (the message says which)
        ├── PermissionDenied     403: the key's channels or role do not allow it
        ├── NotFoundError        404
        ├── InvalidRequest       400, 409, 413, 415, 422: fix the request
        └── ServiceUnavailable   503 (or 429, 502, 504) still, after the retries

Every message is a sentence that says what went wrong and what to do.
"""

from __future__ import annotations

from typing import Any

# The ``code`` of a problem that refused a reader token (the WebSocket protocol's names).
_TOKEN_CODES = frozenset({"invalid_token", "token_required", "token_expired", "token_revoked"})


class TickerClientError(Exception):
    """Base class of every error that ticker_client raises."""


class ServerUnreachable(TickerClientError):
    """The server could not be reached (refused, timed out, name not found)."""


class SubscriptionRefused(TickerClientError):
    """The server refused to serve a subscription, and retrying would not help."""

    def __init__(self, message: str, code: int | None = None, *, error: str | None = None,
                 channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the WebSocket close code, when the connection was closed
        self.error = error  # the protocol's error code (``token_expired`` ...), if any
        self.channel = channel


class ProblemError(TickerClientError):
    """An HTTP error answered with problem details (``application/problem+json``)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", ""))
        self.detail: str = str(problem.get("detail", "") or problem.get("title", ""))
        self.errors: list[dict[str, str]] = list(problem.get("errors") or [])
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.status} {self.title}: {self.detail}".strip()


class AuthenticationError(ProblemError):
    def _message(self) -> str:
        if self.problem.get("code") in _TOKEN_CODES:
            return (
                f"The server refused the reader token ({self.detail}) Pass token=... with a "
                "valid reader token for this channel, or a function that gets one."
            )
        return (
            f"The server refused the API key ({self.detail}) Pass a valid key "
            "(api_key=..., or TICKER_API_KEY for the CLI); an operator creates one with "
            "'ticker keys create'."
        )


class PermissionDenied(ProblemError):
    pass


class NotFoundError(ProblemError):
    pass


class InvalidRequest(ProblemError):
    pass


class ServiceUnavailable(ProblemError):
    pass


def problem_error(status: int, problem: dict[str, Any]) -> ProblemError:
    """The error class for an HTTP status."""
    cls: type[ProblemError]
    if status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = NotFoundError
    elif status in (429, 502, 503, 504):
        cls = ServiceUnavailable
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = ProblemError
    return cls(status, problem)
