"""HTTP plumbing shared by the routes: problem details, JSON bodies with limits."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ticker.errors import ProblemError, StoreUnavailable

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
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return problem(
        503, "Service Unavailable",
        "The store is unreachable right now and nothing was written; retry shortly "
        "(with the same Idempotency-Key, if you sent one).",
        "unavailable", {"Retry-After": str(RETRY_AFTER_SECONDS)},
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


async def on_error(request: Request, exc: Exception) -> Response:
    log.exception("Unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "Internal Server Error", "The server failed; this is a bug.", "internal")


EXCEPTION_HANDLERS = {
    ProblemError: on_problem,
    StoreUnavailable: on_unavailable,
    HTTPException: on_http_exception,
    Exception: on_error,
}


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
    too_large = ProblemError(
        f"The request body is larger than {max_bytes} bytes.",
        status=413, title="Content Too Large", type_suffix="too-large", limit=max_bytes,
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        raise ProblemError(
            f"The request body is not valid JSON: {exc}.",
            status=400, title="Malformed JSON", type_suffix="malformed-json",
        ) from None


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
