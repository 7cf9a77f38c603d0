"""HTTP API of channel objects (``ticker.channels``) and of the audit stream.

    GET    /v1/channels/{channel}   public: name, title, lang, time_zone, readers
    PUT    /v1/channels/{channel}   admin: create, or set every default (absent: none)
    PATCH  /v1/channels/{channel}   admin: set the defaults given (null clears one)
    DELETE /v1/channels/{channel}   admin: delete (409 while it retains briefs, unless
                                    ?force=true)
    POST   /v1/channels/{channel}/tokens  reader or admin key: mint a reader token
    GET    /v1/audit                admin: the audit stream, newest first (?limit=, ?before=)

Every write needs an admin key (``require_key(..., "administer")``), checked before the
body is read; its name is the audit entry's ``by``. Errors are problem details.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker import audit, tokens
from ticker.auth import ApiKey, require_key
from ticker.channels import ChannelInfo, check_name
from ticker.errors import NotFound, ProblemError
from ticker.http import JSONResponse, query_limit, read_json
from ticker.models import millis_rfc3339, parse_stream_id
from ticker.services import Services

MAX_TOKEN_BODY = 1024  # {"ttl", "sub"}: a subject of 200 characters fits
MAX_CHANNEL_BODY = 4096  # a title of 200 characters, lang and zone fit many times over


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _admin(s: Services, request: Request, channel: str | None) -> ApiKey:
    return await require_key(s.keys, request.headers.get("authorization"), channel, "administer")


def _public(info: ChannelInfo, readers: int) -> dict[str, Any]:
    return {
        "name": info.name, "title": info.title, "lang": info.lang,
        "time_zone": info.time_zone, "private": info.private, "readers": readers,
    }


def _admin_view(info: ChannelInfo) -> dict[str, Any]:
    return info.as_json()


async def get_channel(request: Request) -> Response:
    s = _services(request)
    name = check_name(request.path_params["channel"])
    info = await s.channels.get(name)
    if info is None:
        raise NotFound(
            f"There is no channel {name!r}: it was never created nor published to.",
            field="channel",
        )
    readers = (await s.store.readers()).get(name, 0)
    return JSONResponse(_public(info, readers), headers={"Cache-Control": "no-cache"})


async def _values(request: Request, s: Services) -> dict[str, Any]:
    body, _ = await read_json(request, min(MAX_CHANNEL_BODY, s.settings.max_body_bytes))
    if not isinstance(body, dict):
        raise ProblemError(
            "Send the channel as a JSON object, e.g. {\"title\": \"World\", \"lang\": \"en\"}.",
            status=422, title="Invalid channel", type_suffix="invalid-channel",
        )
    return body


async def put_channel(request: Request) -> Response:
    """Create the channel, or replace its defaults: a field left out is unset."""
    s = _services(request)
    name = check_name(request.path_params["channel"])
    key = await _admin(s, request, name)
    values = await _values(request, s)
    full = {"title": None, "lang": None, "time_zone": None, "private": False, **values}
    info, created = await s.channels.update(name, full, key.name, create=True)
    return JSONResponse(_admin_view(info), 201 if created else 200)


async def patch_channel(request: Request) -> Response:
    s = _services(request)
    name = check_name(request.path_params["channel"])
    key = await _admin(s, request, name)
    values = await _values(request, s)
    info, _ = await s.channels.update(name, values, key.name)
    return JSONResponse(_admin_view(info))


async def delete_channel(request: Request) -> Response:
    s = _services(request)
    name = check_name(request.path_params["channel"])
    key = await _admin(s, request, name)
    force = request.query_params.get("force", "false")
    if force not in ("true", "false", "1", "0"):
        raise ProblemError("Query parameter 'force' must be true or false.",
                           type_suffix="bad-force", field="force")
    await s.channels.delete(name, key.name, force=force in ("true", "1"))
    return Response(status_code=204)


async def mint_token(request: Request) -> Response:
    """A reader token for this channel (``ticker.tokens``), for a key that may mint them
    (a reader key of the channel, or an admin key): what a site's backend hands to a
    logged-in reader. Never cached."""
    s = _services(request)
    name = check_name(request.path_params["channel"])
    await require_key(s.keys, request.headers.get("authorization"), name, "mint-token")
    body: Any = {}
    if request.headers.get("content-type") or request.headers.get("content-length", "0") != "0":
        body, _ = await read_json(request, MAX_TOKEN_BODY)
    if not isinstance(body, dict):
        raise ProblemError(
            'Send a JSON object such as {"ttl": 3600, "sub": "reader-42"} (both optional).',
            status=422, title="Invalid token request", type_suffix="invalid-token-request",
        )
    unknown = sorted(set(body) - {"ttl", "sub"})
    if unknown:
        raise ProblemError(
            f"Unknown field {unknown[0][:40]!r}: a token request has 'ttl' and 'sub'.",
            status=422, title="Invalid token request", type_suffix="invalid-token-request",
            field=unknown[0][:40],
        )
    ttl = tokens.check_ttl(body.get("ttl"))
    sub = tokens.check_subject(body.get("sub"))
    token, expires = await s.tokens.mint([name], ttl, sub)
    return JSONResponse(
        {"token": token, "expires_at": millis_rfc3339(int(expires * 1000)), "channel": name},
        201, headers={"Cache-Control": "no-store"},
    )


async def read_audit(request: Request) -> Response:
    """The newest entries first; ``next`` is the ``before`` of the next page (None at
    the end)."""
    s = _services(request)
    await _admin(s, request, None)
    limit = query_limit(request, audit.DEFAULT_LIMIT, audit.MAX_LIMIT)
    before = request.query_params.get("before")
    if before is not None and (len(before) > 41 or parse_stream_id(before) is None):
        raise ProblemError(
            "Query parameter 'before' must be an entry id from an earlier page, such as "
            "'1732850000000-0'.", type_suffix="bad-before", field="before",
        )
    entries = await s.audit.read(limit, before)
    more = len(entries) == limit
    return JSONResponse(
        {"entries": [e.as_json() for e in entries], "next": entries[-1].id if more else None},
        headers={"Cache-Control": "no-store"},
    )


async def _channel(request: Request) -> Response:
    method = "GET" if request.method == "HEAD" else request.method
    handler = {"GET": get_channel, "PUT": put_channel, "PATCH": patch_channel,
               "DELETE": delete_channel}[method]
    return await handler(request)


routes = [
    Route("/v1/channels/{channel}", _channel, methods=["GET", "PUT", "PATCH", "DELETE"]),
    Route("/v1/channels/{channel}/tokens", mint_token, methods=["POST"]),
    Route("/v1/audit", read_audit, methods=["GET"]),
]
