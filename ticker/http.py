"""HTTP plumbing shared by the routes: problem details, JSON bodies with limits, the
service's own address for absolute links, and a trailing-slash redirect that is relative."""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import orjson
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Router
from starlette.types import Receive, Scope, Send

from ticker.errors import ProblemError, StoreUnavailable
from ticker.models import parse_stream_id

log = logging.getLogger("ticker.http")

PROBLEM_TYPE = "application/problem+json"
JSON_TYPE = "application/json"
RETRY_AFTER_SECONDS = 2


class JSONResponse(Response):
    media_type = JSON_TYPE

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


def problem(
    status: int, title: str, detail: str, type_suffix: str,
    headers: dict[str, str] | None = None, **extensions: Any,
) -> Response:
    """An RFC 9457 problem details response."""
    body = {
        "type": f"urn:ticker:problem:{type_suffix}",
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_TYPE)


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem(exc.status, exc.title, exc.detail, exc.type_suffix, exc.headers, **exc.extensions)


async def on_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s %r: %s", request.method, request.url.path, exc)
    if request.method in ("GET", "HEAD"):
        # (Also when every connection of the read pool stayed busy: a flood of reads of
        # channels nobody follows yet. Either way, the same answer helps.)
        detail = "The store could not be read right now; retry shortly."
    else:
        detail = ("The store is unreachable right now and nothing was written; retry "
                  "shortly (with the same Idempotency-Key, if you sent one).")
    return problem(
        503, "Service Unavailable", detail, "unavailable",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"There is nothing at {request.url.path}; see docs/api.md for the endpoints.",
        405: f"{request.method} is not allowed on {request.url.path}.",
    }.get(exc.status_code, str(exc.detail))
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, title, detail, title.lower().replace(" ", "-"), headers)


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away in the middle of its body: its own doing, not a server error.
    One line, no traceback; the answer is never sent (the connection is gone)."""
    log.info(
        "%s %r: client disconnected before sending the whole body",
        request.method, request.url.path,
    )
    return Response(status_code=400)


async def on_error(request: Request, exc: Exception) -> Response:
    # Paths are quoted (%r): a decoded %0A must not pass for another log line.
    log.exception("Unexpected error on %s %r", request.method, request.url.path)
    return problem(500, "Internal Server Error", "The server failed; this is a bug.", "internal")


EXCEPTION_HANDLERS = {
    ProblemError: on_problem,
    StoreUnavailable: on_unavailable,
    HTTPException: on_http_exception,
    # Handled by the routes' exception middleware (a handler for Exception itself runs in
    # the outer one, which re-raises, so the server would log a traceback).
    ClientDisconnect: on_client_disconnect,
    Exception: on_error,
}


def _too_large(max_bytes: int) -> ProblemError:
    return ProblemError(
        f"The request body is larger than {max_bytes} bytes.",
        status=413, title="Content Too Large", type_suffix="too-large", limit=max_bytes,
    )


async def read_json(request: Request, max_bytes: int) -> tuple[Any, bytes]:
    """The JSON body of a request and its raw bytes, or a 413/415/400 problem."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE and not (
        content_type.startswith("application/") and content_type.endswith("+json")
    ):
        raise ProblemError(
            "Send the brief as JSON with 'Content-Type: application/json'.",
            status=415, title="Unsupported Media Type", type_suffix="unsupported-media-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        raise ProblemError(
            f"The request body is not valid JSON: {exc}.",
            status=400, title="Malformed JSON", type_suffix="malformed-json",
        ) from None


def etag_matches(request: Request, etag: str) -> bool:
    """The request's ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110
    asks for ``If-None-Match``), or is ``*``."""
    return names_etag(request.headers.get("if-none-match"), etag)


def names_etag(if_none_match: str | None, etag: str) -> bool:
    """``etag_matches`` of an ``If-None-Match`` header's value."""
    header = if_none_match
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


# Last-Modified from a cursor. A stream ID begins with the milliseconds of its write on
# the Redis server's clock, but HTTP dates count whole seconds: a client that got the date
# of a second in which the channel changed again afterwards would be told "not modified"
# by If-Modified-Since. So the date is given only once that second is over by a margin
# (for the two clocks), and until then the ETag alone serves conditional requests.
_SECOND_OVER_MARGIN = 2.0


def last_modified(cursor: str) -> str | None:
    """The ``Last-Modified`` of an answer current at ``cursor``: the second of the
    channel's last change, once that second is safely over; None until then (or for a
    channel that never changed)."""
    second = int(cursor.partition("-")[0] or 0) // 1000
    if not second or time.time() < second + 1 + _SECOND_OVER_MARGIN:
        return None
    return email.utils.formatdate(second, usegmt=True)


def not_modified_since(request: Request, cursor: str) -> bool:
    """The request's ``If-Modified-Since`` is at or after the second of the channel's
    last change (``last_modified``). Ignored with ``If-None-Match`` (RFC 9110, section
    13.1.3) and when it is not a date."""
    header = request.headers.get("if-modified-since")
    if not header or "if-none-match" in request.headers or last_modified(cursor) is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return int(cursor.partition("-")[0]) // 1000 <= since


def resume_point(
    request: Request, header: str | None = None
) -> tuple[tuple[int, int] | None, str | None]:
    """Where a reader resumes: the cursor in ``header`` (an EventSource's
    ``Last-Event-ID``), which wins, or ``?since=``; and ``?epoch=``, optional. A 400
    problem for a cursor or an epoch that cannot be one."""
    return parse_resume_point(
        request.headers.get(header) if header else None, request.query_params.get("since"),
        request.query_params.get("epoch"), header,
    )


def parse_resume_point(
    cursor: str | None, since: str | None, epoch: str | None, header: str | None = None
) -> tuple[tuple[int, int] | None, str | None]:
    """``resume_point`` without a request: ``cursor`` is the value of the header named
    ``header`` (it wins), ``since`` and ``epoch`` the query's; empty ones count as absent.
    Both SSE paths call it (``ticker.routes.sse``: the ASGI one and ``ticker serve``'s own)."""
    raw = cursor or since or None
    epoch = epoch or None
    if epoch is not None and len(epoch) > 64:
        raise ProblemError(
            "Query parameter 'epoch' must be the epoch the server sent (at most 64 characters).",
            type_suffix="bad-cursor", field="epoch",
        )
    if raw is None:
        return None, epoch
    key = parse_stream_id(raw.strip())
    if key is None:
        where = f"{header} or ?since=" if header else "?since="
        raise ProblemError(
            f"{raw[:80]!r} is not a cursor: send the cursor of the last event received "
            f"(such as '1732850000000-0') as {where}.",
            type_suffix="bad-cursor", field=header or "since",
        )
    return key, epoch


def query_limit(request: Request, default: int, maximum: int) -> int:
    """The ``?limit=`` of a list request: 1 to ``maximum``, else a 400 problem."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ProblemError(
            f"Query parameter 'limit' must be an integer from 1 to {maximum}.",
            type_suffix="bad-limit", field="limit",
        )
    return int(raw)


# Absolute links. The Host header is the client's to choose: a link built from it and
# kept by a shared cache that does not key on Host would send every reader to that
# client's host (cache poisoning). See "Caches and public_url" in docs/api.md.


def base_url(request: Request, public_url: str) -> str:
    """The service's address for absolute links, without a trailing slash: the setting
    ``public_url`` when set, else the request's own scheme and Host."""
    if public_url:
        root_path: str = request.scope.get("root_path", "")
        return public_url.rstrip("/") + root_path
    return str(request.base_url).rstrip("/")


def link_cache_control(public_url: str, directives: str) -> str:
    """``Cache-Control`` for a response whose body holds absolute links: ``directives`` as
    given when the links come from ``public_url``; else ``private`` instead of ``public``,
    so that no shared cache hands one client's Host to others (``Vary: Host`` would say
    the same, but many caches ignore it, and a 304 would revalidate a poisoned copy)."""
    if public_url:
        return directives
    rest = [d for d in (part.strip() for part in directives.split(",")) if d != "public"]
    return ", ".join(["private", *rest])


class SlashRedirect:
    """The router's fallback: a request that only matches a route with or without a
    trailing slash is redirected there, like Starlette's ``redirect_slashes``, but with a
    relative ``Location`` (RFC 9110, section 10.2.2): Starlette writes the Host header into
    an absolute one, which a shared cache would keep and serve to everybody. Anything
    else gets the router's 404."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        route_path = path[len(root_path):] if path.startswith(root_path) else path
        if scope["type"] == "http" and route_path not in ("", "/"):
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            # No Host and no server: Starlette's URL is then the path and query alone
            # (escaped, and a leading "//" made "/%2F" so that it cannot name a host).
            target = {**scope, "path": other, "headers": [], "server": None}
            if any(route.matches(target)[0] is not Match.NONE for route in self.router.routes):
                await RedirectResponse(str(URL(scope=target)))(scope, receive, send)
                return
        await self.router.not_found(scope, receive, send)
