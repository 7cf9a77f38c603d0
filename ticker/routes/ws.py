"""The WebSocket endpoint ``/v1/ws``: pumps frames between a socket and the hub.

Under ``ticker serve`` the handshake never reaches ASGI: ticker's HTTP protocol calls
``admit`` with the parsed request and a ``Subscriber`` (``ticker.wsproto``), the hub
writes frames to it itself and it calls back with each client message and at the end;
no task stays per connection. On any other ASGI server ``websocket_endpoint`` is an
ordinary handler: it stays, reading client messages, and a writer task drains the outbox
with ASGI sends. Either way a subscribe that memory can answer is served at once; any
other runs its catch-up in a task of its own, so that one slow catch-up never blocks the
others or the reading of client messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from ticker import access, protocol
from ticker.auth import origin_allowed
from ticker.errors import ProblemError, StoreUnavailable
from ticker.hub import Connection
from ticker.protocol import Close, ErrorCode, ProtocolError
from ticker.services import Services
from ticker.tokens import Grant
from ticker.wsproto import Subscriber

log = logging.getLogger("ticker.ws")


def admit(services: Services, sub: Subscriber, origin: str | None, offered: list[str]) -> None:
    """The endpoint under ticker's own protocol: answer the handshake, then refuse with a
    close code or hand the connection to the hub."""
    hub = services.hub
    sub.accept(protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
    refusal = _refusal(services, origin)
    if refusal is not None:
        sub.close_with(*refusal)
        return
    sub.attach(_Client(services, hub.open(sub), services.settings.max_subscriptions))


async def websocket_endpoint(websocket: WebSocket) -> None:
    """The endpoint on any ASGI server."""
    services: Services = websocket.app.state.services
    hub = services.hub
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
    refusal = _refusal(services, websocket.headers.get("origin"))
    if refusal is not None:
        await websocket.close(*refusal)
        return
    conn = hub.open()
    writer = asyncio.create_task(_write(websocket, conn))
    settings = services.settings
    loop = asyncio.get_running_loop()
    allowance = protocol.Allowance(settings.ws_message_burst, loop.time())
    try:
        while conn.closing is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if not allowance.spend(loop.time(), settings.ws_message_rate, settings.ws_message_burst):
                conn.close(Close.POLICY_VIOLATION, protocol.too_many_messages(
                    settings.ws_message_rate, settings.ws_message_burst))
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            _handle(services, conn, data, services.settings.max_subscriptions)
    finally:
        if conn.closing is None:
            conn.close(Close.NORMAL, "")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, services.settings.shutdown_drain + 1)
        writer.cancel()
        hub.close_connection(conn)


def _refusal(services: Services, origin: str | None) -> tuple[int, str] | None:
    """Why this connection is closed right after the handshake, if it is. Refusals come
    after the handshake so that browsers can read the code and reason."""
    if not origin_allowed(origin, services.settings.allowed_origins):
        return Close.POLICY_VIOLATION, "origin not allowed"
    if services.hub.shutting_down:
        return Close.SERVICE_RESTART, "server restart: reconnect and resume"
    return None


class _Client:
    """A Subscriber's listener: its client's messages, then its end."""

    __slots__ = ("conn", "limit", "services")

    def __init__(self, services: Services, conn: Connection, limit: int) -> None:
        self.services = services
        self.conn = conn
        self.limit = limit

    def message(self, data: str | bytes) -> None:
        _handle(self.services, self.conn, data, self.limit)

    def gone(self) -> None:
        """Closed by either side, or lost."""
        if self.conn.closing is None:
            self.conn.close(Close.NORMAL, "")
        self.services.hub.close_connection(self.conn)


def _handle(services: Services, conn: Connection, data: str | bytes,
            max_subscriptions: int) -> None:
    hub = services.hub
    if conn.closing is not None:
        return  # closing: what the client says now changes nothing
    try:
        request = protocol.parse_client_message(data)
    except ProtocolError as exc:
        conn.push(protocol.error_message(exc.code, exc.message, exc.channel))
        return
    if isinstance(request, protocol.Ping):
        conn.push(protocol.PONG)
        return
    channel = request.channel
    # A subscribe whose task has not run yet counts too: messages that arrive together
    # are handled here before any of their tasks starts.
    subscribed = channel in conn.subscriptions or channel in conn.tasks
    if isinstance(request, protocol.Unsubscribe):
        if not subscribed:
            conn.push(protocol.error_message(
                ErrorCode.NOT_SUBSCRIBED, f"Not subscribed to {channel!r}.", channel))
            return
        hub.unsubscribe(conn, channel)
        conn.push(protocol.unsubscribed_message(channel))
        return
    if subscribed:
        conn.push(protocol.error_message(
            ErrorCode.ALREADY_SUBSCRIBED,
            f"Already subscribed to {channel!r}; unsubscribe first to subscribe again.", channel))
        return
    if len(conn.subscriptions.keys() | conn.tasks.keys()) >= max_subscriptions:
        conn.close(Close.POLICY_VIOLATION, f"too many subscriptions (limit {max_subscriptions})")
        return
    # A channel known public (the common case: a set lookup) subscribes at once; any
    # other is checked first (``ticker.access``), in a task.
    if request.token is not None or not hub.is_public(channel):
        conn.tasks[channel] = asyncio.get_running_loop().create_task(
            _checked(services, conn, request))
        return
    if not hub.subscribe_now(conn, request):
        hub.subscribe_task(conn, request)


async def _checked(services: Services, conn: Connection, request: protocol.Subscribe) -> None:
    """Subscribe once the channel is known public, or the request's token opens it;
    else an ``error`` for this channel (the connection goes on)."""
    hub = services.hub
    channel = request.channel
    try:
        if await access.is_private(hub, channel):
            grant: Grant | None = await access.grant(services, channel, request.token)
        else:
            grant = None
    except ProblemError as exc:
        if conn.tasks.get(channel) is asyncio.current_task():
            del conn.tasks[channel]
            conn.push(protocol.error_message(access.refusal_code(exc), exc.detail, channel))
        return
    except StoreUnavailable as exc:
        log.warning("checking access to %r failed: %s", channel, exc)
        conn.close(Close.TRY_AGAIN_LATER, "store unavailable: reconnect later and resume")
        return
    if conn.tasks.get(channel) is not asyncio.current_task() or conn.closing is not None:
        return  # unsubscribed or closed meanwhile
    del conn.tasks[channel]
    done = hub.subscribe_now(conn, request)
    if grant is not None:
        hub.grant(conn.subscriptions[channel], grant)
    if not done:
        hub.subscribe_task(conn, request)


async def _write(websocket: WebSocket, conn: Connection) -> None:
    send = websocket.send
    try:
        while True:
            await conn.wakeup.wait()
            conn.wakeup.clear()
            for item in conn.take():
                for message in item.messages:
                    await send({"type": "websocket.send", "text": message.text})
            if conn.closing is not None and not conn.outbox:
                code, reason = conn.closing
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return
    except Exception:  # the client is gone: nothing more to write
        conn.close(Close.GOING_AWAY, "")


PATH = "/v1/ws"
routes = [WebSocketRoute(PATH, websocket_endpoint)]
