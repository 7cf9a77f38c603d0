"""Server-Sent Events: ``GET /v1/channels/{channel}/events``, one channel per stream.

The same messages as the WebSocket (``docs/protocol.md``), framed for ``text/event-stream``:
``event:`` is the message type, ``data:`` the same JSON, and ``id:`` the cursor on brief,
correction, retraction and snapshot events. A client that reconnects with
``Last-Event-ID`` (``EventSource`` does it by itself) or ``?since=`` resumes exactly, or
gets ``subscribed`` with ``recovered: false`` and a snapshot.

Under ``ticker serve`` a stream never reaches ASGI: the gate recognises its request and
calls ``admit`` with an ``EventSubscriber`` (``ticker.sseproto``), a sink the fan-out
writes to, as for a WebSocket subscriber; no task stays per stream. On any other server
``events`` answers it: a ``Connection`` with its bounded outbox, one subscription, and a
writer task that drains the outbox. Both check the request with ``_prepare``.

What the WebSocket says with a close code, a stream says with a last ``close`` event
(``{"type": "close", "code", "reason"}``) before it ends: 4008 slow consumer, 1012 server
restart, 1013 store unavailable, 1011 internal error. Either way the client reconnects
and resumes from its last ``id``.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ticker import access, http, protocol
from ticker.auth import origin_allowed
from ticker.config import Settings
from ticker.errors import ProblemError, StoreUnavailable
from ticker.gate import problem_bytes
from ticker.hub import Connection, Hub
from ticker.models import check_channel
from ticker.protocol import Close
from ticker.services import Services
from ticker.sseproto import HEARTBEAT, MEDIA_TYPE, EventsRequest, EventSubscriber, close_frame
from ticker.store import StreamKey
from ticker.tokens import Grant

log = logging.getLogger("ticker.sse")

__all__ = ["HEARTBEAT", "MEDIA_TYPE", "EventStream", "admit", "close_frame", "events", "routes"]


def resume_point(request: Request) -> tuple[StreamKey | None, str | None]:
    """Where to resume: ``Last-Event-ID`` (sent by a reconnecting EventSource) wins over
    ``?since=``, which a first connection uses; ``?epoch=`` is optional."""
    return http.resume_point(request, header="Last-Event-ID")


def _prepare(
    services: Services, channel: str, origin: str | None, last_event_id: str | None,
    query: QueryParams,
) -> tuple[protocol.Subscribe, dict[str, str]]:
    """The subscription a stream asks for and its response headers, or a ProblemError:
    400 bad channel or cursor, 403 origin not allowed, 503 shutting down."""
    settings = services.settings
    channel = check_channel(channel)
    if origin is not None and not origin_allowed(origin, settings.allowed_origins):
        raise ProblemError(
            f"Origin {origin[:100]!r} may not subscribe; ask the operator to add it to "
            "the 'allowed_origins' setting.",
            status=403, title="Forbidden", type_suffix="origin-not-allowed",
        )
    # Last-Event-ID (sent by a reconnecting EventSource) wins over ?since=.
    since, epoch = http.parse_resume_point(
        last_event_id, query.get("since"), query.get("epoch"), "Last-Event-ID")
    if services.hub.shutting_down:
        raise ProblemError(
            "The server is restarting; reconnect shortly and resume from your last event id.",
            status=503, title="Service Unavailable", type_suffix="shutting-down",
            headers={"Retry-After": "2"},
        )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if origin is not None:
        # EventSource from another site is a CORS request: answer it when allowed.
        headers["Access-Control-Allow-Origin"] = "*" if "*" in settings.allowed_origins else origin
        headers["Vary"] = "Origin"
    return protocol.Subscribe(channel, since, epoch), headers


async def events(request: Request) -> Response:
    """The endpoint on any ASGI server."""
    services: Services = request.app.state.services
    subscribe, headers = _prepare(
        services, request.path_params["channel"], request.headers.get("origin"),
        request.headers.get("last-event-id"), request.query_params,
    )
    grant = await access.check(services, subscribe.channel, request.headers.get("authorization"),
                               request.query_params.get("token"))
    if request.method == "HEAD":
        return Response(None, 200, headers, MEDIA_TYPE)
    return EventStream(services.hub, services.settings, subscribe, headers, grant)


def admit(services: Services, sub: EventSubscriber, request: EventsRequest) -> None:
    """The endpoint under ``ticker serve``'s gate: refuse in problem details, or start
    the stream and hand it to the hub, which writes to it from then on."""
    try:
        subscribe, headers = _prepare(
            services, request.channel, request.origin, request.last_event_id,
            QueryParams(request.query),
        )
    except ProblemError as exc:
        _refuse(sub, exc)
        return
    hub = services.hub
    if not hub.is_public(subscribe.channel):
        # Not known public: checked first (``ticker.access``), in a task.
        task = asyncio.get_running_loop().create_task(
            _checked(services, sub, request, subscribe, headers))
        _checks.add(task)
        task.add_done_callback(_checks.discard)
        return
    _start(services, sub, subscribe, headers, None)


_checks: set[asyncio.Task[None]] = set()  # (a task nobody holds may be collected)


def _refuse(sub: EventSubscriber, exc: ProblemError) -> None:
    sub.refuse(problem_bytes(
        exc.status, exc.title, exc.detail, exc.type_suffix, exc.headers, **exc.extensions))


async def _checked(services: Services, sub: EventSubscriber, request: EventsRequest,
                   subscribe: protocol.Subscribe, headers: dict[str, str]) -> None:
    query = QueryParams(request.query)
    try:
        grant = await access.check(services, subscribe.channel, request.authorization,
                                   query.get("token"))
    except ProblemError as exc:
        if not sub.ended:
            _refuse(sub, exc)
        return
    except StoreUnavailable:
        if not sub.ended:
            _refuse(sub, ProblemError(
                "The store is unavailable: reconnect shortly and resume from your last event id.",
                status=503, title="Service Unavailable", type_suffix="store-unavailable",
                headers={"Retry-After": "2"}))
        return
    if not sub.ended:
        _start(services, sub, subscribe, headers, grant)


def _start(services: Services, sub: EventSubscriber, subscribe: protocol.Subscribe,
           headers: dict[str, str], grant: Grant | None) -> None:
    hub = services.hub
    sub.start(headers, services.settings.sse_retry_ms)
    conn = hub.open(sub)
    sub.attach(conn)
    done = hub.subscribe_now(conn, subscribe)
    if grant is not None:
        hub.grant(conn.subscriptions[subscribe.channel], grant)
    if not done:
        hub.subscribe_task(conn, subscribe)


class EventStream(Response):
    """The streaming response: one hub connection, one subscription, one writer."""

    media_type = MEDIA_TYPE

    def __init__(
        self, hub: Hub, settings: Settings, request: protocol.Subscribe, headers: dict[str, str],
        grant: Grant | None = None,
    ) -> None:
        # Like StreamingResponse: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self.hub = hub
        self.settings = settings
        self.request = request
        self.grant = grant  # what opened a private channel (None: public)
        self.gone = False  # the client disconnected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        conn = hub.open()
        conn.stream = True
        watcher = asyncio.create_task(self._watch_disconnect(receive, conn))
        subscriber: asyncio.Task[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            retry = f"retry: {self.settings.sse_retry_ms}\n\n".encode()
            await self._send(send, retry)
            subscriber = asyncio.create_task(self._subscribe(conn))
            await self._write(send, conn)
        except TimeoutError:
            # The client accepted nothing for ping_timeout seconds: it is gone or stuck.
            # Returning without ending the response makes the server drop the socket.
            log.info("SSE client on %r stopped reading; dropping it", self.request.channel)
        finally:
            watcher.cancel()
            if subscriber is not None:
                subscriber.cancel()
            if conn.closing is None:
                conn.close(Close.GOING_AWAY, "")
            hub.close_connection(conn)

    async def _send(self, send: Send, body: bytes) -> None:
        # Like a WebSocket ping timeout: a write that cannot go out for this long means
        # the client is dead or stopped reading; TimeoutError ends the stream.
        await asyncio.wait_for(
            send({"type": "http.response.body", "body": body, "more_body": True}),
            self.settings.ping_timeout,
        )

    async def _write(self, send: Send, conn: Connection) -> None:
        heartbeat = self.settings.sse_heartbeat
        while True:
            try:
                await asyncio.wait_for(conn.wakeup.wait(), heartbeat)
            except TimeoutError:
                if self.gone:
                    return
                await self._send(send, HEARTBEAT)
                continue
            conn.wakeup.clear()
            items = conn.take()
            if self.gone:
                return
            if items:
                # Everything pending goes out in one write.
                await self._send(send, b"".join([item.sse for item in items]))
            if conn.closing is not None and not conn.outbox:
                code, reason = conn.closing
                await self._send(send, close_frame(code, reason))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

    async def _watch_disconnect(self, receive: Receive, conn: Connection) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                conn.close(Close.GOING_AWAY, "")
                return

    async def _subscribe(self, conn: Connection) -> None:
        try:
            if self.grant is not None:
                hub = self.hub
                done = hub.subscribe_now(conn, self.request)
                hub.grant(conn.subscriptions[self.request.channel], self.grant)
                if done:
                    return
            await self.hub.subscribe(conn, self.request)
        except StoreUnavailable as exc:
            log.warning("SSE subscribe to %r failed: %s", self.request.channel, exc)
            conn.close(Close.TRY_AGAIN_LATER, "store unavailable: reconnect later and resume")
        except Exception:  # a bug: say so on the stream rather than hang it
            log.exception("SSE subscribe to %r failed", self.request.channel)
            conn.close(Close.INTERNAL_ERROR, "internal error: reconnect and resume")


routes = [Route("/v1/channels/{channel}/events", events, methods=["GET"])]
