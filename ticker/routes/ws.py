"""The WebSocket endpoint ``/v1/ws``: pumps frames between a socket and the hub.

Under ``ticker serve`` the connection has a sink (``ticker.wsproto``): the hub writes its
frames itself, and the handler detaches the connection and returns, leaving two callbacks
(a client message; the end). On any other ASGI server the handler stays, reading client
messages, and a writer task drains the outbox with ASGI sends. A subscribe that memory
can answer is served at once; any other runs its catch-up in a task of its own, so that
one slow catch-up never blocks the others or the reading of client messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from ticker import protocol
from ticker.auth import origin_allowed
from ticker.errors import StoreUnavailable
from ticker.hub import Connection, Hub
from ticker.protocol import Close, ErrorCode, ProtocolError
from ticker.services import Services
from ticker.wsproto import EXTENSION

log = logging.getLogger("ticker.ws")


async def websocket_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    hub = services.hub
    settings = services.settings
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
    # Refusals come after the handshake so that browsers can read the code and reason.
    if not origin_allowed(websocket.headers.get("origin"), settings.allowed_origins):
        await websocket.close(Close.POLICY_VIOLATION, "origin not allowed")
        return
    if hub.shutting_down:
        await websocket.close(Close.SERVICE_RESTART, "server restart: reconnect and resume")
        return

    sink = websocket.scope.get("extensions", {}).get(EXTENSION, {}).get("sink")
    if sink is not None:
        # ticker's own protocol: the hub writes, the protocol calls back, no task stays.
        conn = hub.open(sink)
        limit = settings.max_subscriptions
        sink.detach(lambda data: _handle(hub, conn, data, limit), lambda: _gone(hub, conn))
        return

    conn = hub.open()
    writer = asyncio.create_task(_write(websocket, conn))
    try:
        while conn.closing is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            _handle(hub, conn, data, settings.max_subscriptions)
    finally:
        if conn.closing is None:
            conn.close(Close.NORMAL, "")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, settings.shutdown_drain + 1)
        writer.cancel()
        hub.close_connection(conn)


def _gone(hub: Hub, conn: Connection) -> None:
    """A detached connection is over (closed by either side, or lost)."""
    if conn.closing is None:
        conn.close(Close.NORMAL, "")
    hub.close_connection(conn)


def _handle(hub: Hub, conn: Connection, data: str | bytes, max_subscriptions: int) -> None:
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
    if not hub.subscribe_now(conn, request):
        conn.tasks[channel] = asyncio.create_task(_subscribe(hub, conn, request))


async def _subscribe(hub: Hub, conn: Connection, request: protocol.Subscribe) -> None:
    try:
        await hub.subscribe(conn, request)
    except StoreUnavailable as exc:
        log.warning("subscribe to %r failed: %s", request.channel, exc)
        conn.close(Close.TRY_AGAIN_LATER, "store unavailable: reconnect later and resume")
    finally:
        # Only this task's entry: after an unsubscribe, a new subscribe may own the name.
        if conn.tasks.get(request.channel) is asyncio.current_task():
            del conn.tasks[request.channel]


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
