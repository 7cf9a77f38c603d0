"""ticker's WebSocket protocol for uvicorn: uvicorn's own, plus a sink for ready frames.

The hub builds each brief's WebSocket frame once and joins what is pending for a socket
into one write (``ticker.hub``). Through ASGI every message would be one ``send`` per
subscriber, with an await, a dict and a frame built per socket; under ``ticker serve`` the
connection's scope instead carries the extension ``ticker.sink``, whose ``sink`` writes
pre-built frames straight to the socket's transport. The app checks for the extension
and falls back to plain ASGI sends when it is absent, so it still runs (more slowly) on
any ASGI server.

An idle subscriber should cost little memory, and an ASGI connection keeps a task, its
chain of middleware coroutines, a receive queue and the handshake's headers for as long
as it lives. So once the app has accepted the connection it may ``detach`` it: it gives
two callbacks (a client message; the connection is over) and returns, and the protocol
keeps the socket open and calls them, with no task. The handshake's request, response
and scope are dropped then.

The sink also closes a connection at once, without a task: the close frame goes behind
what is already buffered, and a client that does not take it within the ping timeout
(it stopped reading but keeps its socket open) has its socket aborted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent, WebSocketScope
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol

EXTENSION = "ticker.sink"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def _upgrade(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """(target, headers, Sec-WebSocket-Accept) of a plain, valid WebSocket upgrade as
    uvicorn hands it over (header names in lower case); None for anything else."""
    request_line, *lines = head.split(b"\r\n")
    method, _, rest = request_line.partition(b" ")
    target, _, version = rest.rpartition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not target.startswith(b"/"):
        return None
    headers: list[tuple[bytes, bytes]] = []
    seen: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        name, value = name.lower(), value.strip()
        if name in seen and name in (b"upgrade", b"sec-websocket-key", b"sec-websocket-version"):
            return None
        seen[name] = value
        headers.append((name, value))
    tokens = {t.strip().lower() for t in seen.get(b"connection", b"").split(b",")}
    if seen.get(b"upgrade", b"").lower() != b"websocket" or b"upgrade" not in tokens:
        return None
    if seen.get(b"sec-websocket-version") != b"13":
        return None
    key = seen.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return target, headers, accept


class _Callbacks:
    """Stands in for the receive queue of a detached connection: each event the
    protocol would queue for the app becomes a call."""

    __slots__ = ("gone", "on_gone", "on_message")

    def __init__(self, on_message: Callable[[str | bytes], None], on_gone: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_gone = on_gone
        self.gone = False

    def put_nowait(self, event: ASGIReceiveEvent) -> None:
        if event["type"] == "websocket.receive":
            if not self.gone:
                text = event.get("text")
                self.on_message(text if text is not None else event.get("bytes") or b"")
        elif event["type"] == "websocket.disconnect" and not self.gone:
            self.gone = True
            self.on_gone()


class TickerWebSocketProtocol(WebSocketsSansIOProtocol):
    detached: _Callbacks | None = None
    _accept: bytes | None = None  # Sec-WebSocket-Accept of a handshake taken the fast way

    # The opening handshake. A plain, valid upgrade (what every browser and client sends)
    # is answered here; anything else takes websockets' full path with its error answers.

    def data_received(self, data: bytes) -> None:
        if self.handshake_initiated:
            super().data_received(data)
            return
        head, _, _ = data.partition(b"\r\n\r\n")
        upgrade = _upgrade(head)
        if upgrade is None:
            super().data_received(data)
            return
        target, headers, self._accept = upgrade
        self.handshake_initiated = True
        raw_path, _, query_string = target.partition(b"?")
        path = raw_path.decode("latin-1")
        subprotocols = [
            token.strip()
            for name, value in headers if name == b"sec-websocket-protocol"
            for token in value.decode("latin-1").split(",")
        ]
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(path),
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, EXTENSION: {"sink": self}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[EXTENSION] = {"sink": self}

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] != "websocket.accept"
            or self._accept is None
            or self.handshake_complete
            or self.initial_response is not None
        ):
            await super().send(message)
            return
        if self.disconnected:
            raise ClientDisconnected()
        if self.transport.is_closing():
            return
        self.logger.info(
            '%s - "WebSocket %s" [accepted]',
            get_client_addr(self.scope),
            get_path_with_query_string(self.scope),
        )
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + self._accept + b"\r\n"
        ]
        for name, value in [*self.default_headers, *message.get("headers", [])]:
            lines.append(name + b": " + value + b"\r\n")
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n")
        lines.append(b"\r\n")
        # From here on, frames: websockets' protocol moves to the open state and its
        # frame parser, as it does itself after a handshake it answered.
        self.conn.state = OPEN
        self.conn.parser = Protocol.parse(self.conn)
        next(self.conn.parser)
        self.handshake_complete = True
        self.transport.write(b"".join(lines))
        self.start_keepalive()

    # The sink (ticker.hub.Sink)

    def limit_buffer(self, high: int) -> None:
        """Pause (``writable`` cleared) while more than ``high`` bytes wait to be sent."""
        self.transport.set_write_buffer_limits(high=high)

    def close_with(self, code: int, reason: str) -> None:
        """Send a close frame after what is buffered, and tell the app it is over."""
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # The client's echo closes the socket (handle_close); without it, drop the socket.
        timeout = self.ping_timeout or self.close_timeout
        self.close_timer = self.loop.call_later(timeout, self.transport.abort)

    def detach(
        self, on_message: Callable[[str | bytes], None], on_gone: Callable[[], None]
    ) -> None:
        """From now on, call ``on_message`` for each client message and ``on_gone`` once
        when the connection is over; the app returns and the socket stays open."""
        callbacks = _Callbacks(on_message, on_gone)
        pending = self.queue
        self.queue = callbacks  # type: ignore[assignment]
        self.detached = callbacks
        # What the client sent before the app detached.
        while not pending.empty():
            callbacks.put_nowait(pending.get_nowait())
        self._resume_reading()
        # The handshake is over: what only it needed can go.
        self.request = self.response = None  # type: ignore[assignment]
        self.scope = cast(WebSocketScope, {})

    # Detached, nobody calls receive(), which is where reading resumes.

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        if self.detached is not None:
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()

    async def run_asgi(self) -> None:
        """uvicorn's, except that a detached connection stays open when the app returns."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and self.detached is None:
            self.transport.close()
