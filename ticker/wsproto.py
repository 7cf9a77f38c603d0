"""ticker's WebSocket protocol for uvicorn: uvicorn's own, plus a sink for ready frames.

The hub builds each brief's WebSocket frame once and joins what is pending for a socket
into one write (``ticker.hub``). Through ASGI every message would be one ``send`` per
subscriber, with an await, a dict and a frame built per socket; under ``ticker serve`` the
connection's scope instead carries the extension ``ticker.sink``, whose ``sink`` writes
pre-built frames straight to the socket's transport. The app checks for the extension
and falls back to plain ASGI sends when it is absent, so it still runs (more slowly) on
any ASGI server.

The sink also closes a connection at once, without a task: the close frame goes behind
what is already buffered, and a client that does not take it within the ping timeout
(it stopped reading but keeps its socket open) has its socket aborted.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

EXTENSION = "ticker.sink"


class TickerWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[EXTENSION] = {"sink": self}

    # The sink (ticker.hub.Sink)

    def write_frames(self, data: bytes) -> None:
        if not self.close_sent and not self.transport.is_closing():
            self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

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
