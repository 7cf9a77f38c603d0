"""HTTP API: publish, correct, retract and read briefs. See docs/api.md."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker import access, answers, ninjs, protocol, views
from ticker.auth import Action, ApiKey, authorize, require_key
from ticker.channel import Channel
from ticker.errors import Conflict, ProblemError
from ticker.http import (
    JSON_TYPE,
    JSONResponse,
    base_url,
    etag_matches,
    link_cache_control,
    query_limit,
    read_json,
    resume_point,
)
from ticker.models import (
    Brief,
    check_brief_id,
    check_channel,
    corrected,
    parse_patch,
    retracted,
)
from ticker.services import Services
from ticker.store import Snapshot, format_key, key_of

MAX_IDEMPOTENCY_KEY = 255


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable() or not value.isascii():
        raise ProblemError(
            f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
            "characters (a UUID is a good choice).",
            type_suffix="bad-idempotency-key", field="Idempotency-Key",
        )
    return value


async def _authorize(s: Services, request: Request, channel: str, action: Action) -> ApiKey:
    """The request's API key, allowed to do ``action`` on ``channel`` (else 401 or 403):
    checked before the body is read, so that nobody without a key makes the server read one."""
    return await require_key(s.keys, request.headers.get("authorization"), channel, action)


def _brief_id(data: bytes) -> str:
    """The id of a stored brief's JSON, which the write script starts with
    (``{"id":"<id>",...``, ``ticker/lua/publish.lua``): no need to parse it all."""
    return data[7 : data.index(b'"', 7)].decode()


def _location(channel: str, brief_id: str) -> str:
    return f"/v1/channels/{channel}/briefs/{brief_id}"


async def publish(request: Request) -> Response:
    s = _services(request)
    with s.metrics.publish_seconds.time():
        return await _publish(request, s)


async def _publish(request: Request, s: Services) -> Response:
    channel = check_channel(request.path_params["channel"])
    key = await _authorize(s, request, channel, "publish")
    idempotency = _idempotency_key(request)
    body, _ = await read_json(request, s.settings.max_body_bytes)
    brief = ninjs.read_brief(request, body, channel)  # native JSON or ninjs
    # Of the parsed body: a retry that serialises the same JSON differently is the same request.
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    # Counted against the key's rate by the store, in the write itself, now that the
    # request is authorized and its body read and valid: a refused request is not a
    # write, and a publisher fixing a bad request is not throttled for the attempts.
    data, replayed = await s.store.publish(
        brief, idempotency=(key.name, idempotency) if idempotency else None,
        fingerprint=fingerprint, writer=key.name,
    )
    brief_id = _brief_id(data)
    s.hub.wrote(channel, key_of(brief_id))
    headers = {"Location": _location(channel, brief_id)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return ninjs.respond(request, data, 201, headers)


async def correct(request: Request) -> Response:
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    brief_id = check_brief_id(request.path_params["id"])
    key = await _authorize(s, request, channel, "correct")
    body, _ = await read_json(request, s.settings.max_body_bytes)
    changes = parse_patch(body)
    if "pinned" in changes:  # pinning is a correction, and an action of its own
        authorize(key, "pin", channel)

    def change(current: Brief) -> Brief:
        if current["status"] == "canceled":
            raise Conflict(f"Brief {brief_id!r} was retracted; it can no longer be corrected.")
        return corrected(current, changes)

    result = await s.store.update(channel, brief_id, change, "correction", writer=key.name)
    assert result is not None
    s.hub.wrote(channel, key_of(result[1]))
    return JSONResponse(result[0], 200)


async def retract(request: Request) -> Response:
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    brief_id = check_brief_id(request.path_params["id"])
    key = await _authorize(s, request, channel, "retract")

    def change(current: Brief) -> Brief | None:
        return None if current["status"] == "canceled" else retracted(current)

    # Retracting twice is not an error: the brief is retracted either way.
    result = await s.store.update(channel, brief_id, change, "retraction", writer=key.name)
    if result is not None:
        s.hub.wrote(channel, key_of(result[1]))
    return Response(status_code=204)


async def list_briefs(request: Request) -> Response:
    """The newest briefs; with ``?since=CURSOR`` (and ``&epoch=``), only what happened
    after the cursor, as a WebSocket resume would bring it (``_changes``). Both come from
    the channel in memory (``ticker.views``), the list rendered once per change.

    Every answer has a strong ``ETag`` made of what it depends on (the channel's epoch
    and cursor, the limit, whether it was a resume), so that a poller's
    ``If-None-Match`` gets ``304`` while nothing changed; ``Cache-Control: no-cache``
    makes caches ask every time."""
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    limit = query_limit(request, s.settings.snapshot_size, s.settings.list_max_limit)
    since, epoch = resume_point(request)
    as_ninjs = ninjs.wanted(request)
    if as_ninjs and since is not None:
        raise ProblemError(
            "ninjs is offered for the list of a channel's newest briefs and for each brief; "
            "a poll with ?since= answers the events of the WebSocket protocol in JSON. Ask "
            "for the list without 'since', or poll with Accept: application/json.",
            type_suffix="bad-format", field="format",
        )
    state = await access.followed(request, channel)
    if as_ninjs:
        return await _ninjs_list(request, s, state, limit)
    if since is not None:
        missed = s.hub.missed(state, since, epoch)
        if missed is not None:
            answers.offer(request, state, format_key(state.position))  # made from memory
            cursor = missed[-1].cursor if missed else None
            return _changes(request, [m.data for m in missed], cursor or format_key(since),
                            state.epoch)
        if not state.empty():  # memory cannot tell (as for a WebSocket resume): Redis does
            recovery = await s.store.since(channel, since, epoch)
            if recovery.recovered:
                events = [protocol.event_message(event) for event in recovery.events]
                cursor = recovery.events[-1].id if recovery.events else format_key(since)
                return _changes(request, events, cursor, recovery.epoch)
    lost = since is not None
    listing = await views.render(
        s.hub, state, ("list", limit, lost), limit, lambda snapshot: _listing(snapshot, limit, lost)
    )
    if not lost:  # (a lost cursor's answer came from Redis)
        answers.offer(request, state, listing.cursor)
    return _conditional(request, listing.etag, listing.body)


async def _ninjs_list(request: Request, s: Services, state: Channel, limit: int) -> Response:
    """The list as one ninjs object (``ninjs.list_item``), rendered once per change of
    the channel and per base of its links."""
    public_url = s.settings.public_url
    base = base_url(request, public_url)

    def build(snapshot: Snapshot) -> views.Rendered:
        briefs = [orjson.loads(brief) for brief in snapshot.briefs]
        item = ninjs.list_item(state.name, briefs, snapshot.cursor, snapshot.epoch, base)
        etag = views.etag("ninjs", (limit, base), snapshot)
        return views.Rendered(etag, orjson.dumps(item), snapshot.cursor, snapshot.epoch)

    listing = await views.render(s.hub, state, ("ninjs", limit, base), limit, build)
    answers.offer(request, state, listing.cursor)
    return _conditional(request, listing.etag, listing.body, ninjs.MEDIA_TYPE,
                        link_cache_control(public_url, "no-cache"))


def _listing(snapshot: Snapshot, limit: int, lost: bool) -> views.Rendered:
    resumed = b',"recovered":false' if lost else b""
    body = (
        b'{"briefs":[' + b",".join(snapshot.briefs)
        + b'],"cursor":"' + snapshot.cursor.encode()
        + b'","epoch":' + orjson.dumps(snapshot.epoch) + resumed + b"}"
    )
    tag = "lost" if lost else "list"
    etag = f'"{tag}-{limit}-{snapshot.epoch}-{snapshot.cursor}"'
    return views.Rendered(etag, body, snapshot.cursor, snapshot.epoch)


def _changes(request: Request, events: list[bytes], cursor: str, epoch: str) -> Response:
    """Every event after the poller's cursor, in order (the messages of the WebSocket
    protocol: briefs, corrections, retractions), and the cursor to poll from next: the
    last event's, or the poller's own when there is none. Its ETag is the same as that
    of the answer to the next poll while nothing changes, so a poller that sends back
    the ETag it got is answered ``304`` until something happens."""
    body = (
        b'{"recovered":true,"events":[' + b",".join(events) + b'],"cursor":"'
        + cursor.encode() + b'","epoch":' + orjson.dumps(epoch) + b"}"
    )
    return _conditional(request, f'"since-{epoch}-{cursor}"', body)


def _conditional(request: Request, etag: str, body: bytes, media_type: str = JSON_TYPE,
                 cache_control: str = "no-cache") -> Response:
    """The answer, or ``304`` when the client holds it. ``Vary: Accept``: the list is JSON
    or ninjs as the client asks."""
    headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Accept"}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type=media_type)


async def get_brief(request: Request) -> Response:
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    brief_id = check_brief_id(request.path_params["id"])
    data = await s.store.get(channel, brief_id)
    if data is None:
        raise ProblemError(
            f"Channel {channel!r} has no brief {brief_id!r} (or it is past retention).",
            status=404, title="Not Found", type_suffix="not-found",
        )
    return ninjs.respond(request, data)


async def brief_history(request: Request) -> Response:
    """Every version of a brief, who wrote it and when (``ticker.history``): for the
    channel's writers only (the key names in it are internal), never cached."""
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    brief_id = check_brief_id(request.path_params["id"])
    await _authorize(s, request, channel, "history")  # a publisher's or an admin's
    versions = await s.store.history(channel, brief_id)
    if versions is None:
        raise ProblemError(
            f"Channel {channel!r} has no brief {brief_id!r} (or it is past retention).",
            status=404, title="Not Found", type_suffix="not-found",
        )
    body = {"channel": channel, "id": brief_id, "versions": versions}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def list_channels(request: Request) -> Response:
    s = _services(request)
    names = await s.store.channels()
    readers = await s.store.readers()
    channels: list[dict[str, Any]] = [
        {"name": name, "readers": readers.get(name, 0)} for name in names
    ]
    return JSONResponse({"channels": channels})


def _route(path: str, **handlers: Callable[[Request], Awaitable[Response]]) -> Route:
    """One route per path with a handler per method, so that a 405 answer's Allow header
    lists every method of the path (separate routes would each list only their own)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers), name=path)


routes = [
    Route("/v1/channels", list_channels, methods=["GET"]),
    _route("/v1/channels/{channel}/briefs", GET=access.guarded(list_briefs), POST=publish),
    _route("/v1/channels/{channel}/briefs/{id}", GET=access.guarded(get_brief, follow=False),
           PATCH=correct, DELETE=retract),
    _route("/v1/channels/{channel}/briefs/{id}/history", GET=brief_history),
]
