"""Event streams on ticker's own way in: ``GET /v1/channels/{channel}/events`` under
``ticker serve``, served like a WebSocket subscriber (``ticker.wsproto``).

Through uvicorn and Starlette a stream cost an HTTP protocol object and its parser, a
scope, a request, the app's task, and three tasks of its own (a writer draining the
outbox, a watcher of the disconnect, the subscribe) with their timers: about ten times
the memory of a WebSocket subscriber. Under ``ticker serve`` the gate (``ticker.gate``)
recognises the request from its head (``parse_events_request``) and the socket becomes an
``EventSubscriber``: the hub's sink, which the fan-out writes each batch's SSE form to
(built once per batch, shared by every stream), with no task, queue or timer per stream.
Heartbeats (``: ping``) come from one schedule for all streams, the WebSocket keepalive's
(``wsproto._Shared``): every ``sse_heartbeat`` seconds whether events went out or not (a
per-stream "silence since" would cost a clock read per delivery), spread over the
following ticks when many streams began together. Every other request (a HEAD, a body,
HTTP/1.0, anything malformed, and a stream asked for on a later request of a kept-alive
connection) goes to uvicorn and the ASGI endpoint (``ticker.routes.sse``), which also
serves the streams on any other server.

The response body is delimited by the end of the connection: ``Connection: close``, no
``Content-Length``, no chunked coding (RFC 9112 section 6.3, item 8: a response without
either "is delimited by the server closing the connection"). Why not chunked, as uvicorn
sends it:

* A stream ends only with its connection. Its last event (``close``) tells the client
  why; the client reconnects either way, so the last chunk's proof that the body is
  whole buys nothing, and the connection cannot be reused for another request anyway.
* Every byte written is then the very bytes the hub built once for every stream, with no
  per-write framing (a chunk size line and CRLF per write, to be built or cached).
* Clients read it, checked against this module's responses (a stream ended by the hub
  with 1012): Chromium's ``EventSource`` (the events, the ``close`` event, then its
  reconnection with ``Last-Event-ID`` and exactly the brief it missed), httpx 0.28
  (``aiter_lines`` ends cleanly), aiohttp 3.14, curl (exit 0), and nginx 1.22 as
  docs/deployment.md configures it (``proxy_http_version 1.1``, ``proxy_buffering
  off``): nginx reads an upstream body without length until the upstream closes, passes
  each event on at once (chunked to an HTTP/1.1 client, which curl saw end with its last
  chunk: exit 0, nothing in nginx's error log), and such an upstream connection is simply
  not kept alive (the subscribers' upstream has no ``keepalive`` anyway).
  tests/test_nginx.py streams through it.

What the client sends after its request is not read as HTTP (the stream is the last
answer of the connection): up to ``MAX_IGNORED`` bytes are dropped, then the connection
is closed. A client that stops reading is closed like a slow WebSocket
(``Close.SLOW_CONSUMER`` as a last ``close`` event behind what the kernel holds), and its
socket dropped if it does not take that within ``ping_timeout``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import httptools
import orjson

from ticker.admission import Verdict
from ticker.protocol import Close
from ticker.wsproto import LINGER_SECONDS, _Shared

if TYPE_CHECKING:
    from ticker.hub import Connection

MEDIA_TYPE = "text/event-stream"
HEARTBEAT = b": ping\n\n"
MAX_IGNORED = 4096  # bytes a client may send after its request before it is closed

_PREFIX = "/v1/channels/"
_SUFFIX = "/events"


def close_frame(code: int, reason: str) -> bytes:
    """The last event of a stream: what a WebSocket would say with a close code."""
    data = orjson.dumps({"type": "close", "code": code, "reason": reason})
    return b"event: close\ndata: " + data + b"\n\n"


class EventsRequest(NamedTuple):
    """What a request for an event stream says that ticker needs."""

    channel: str  # the path's segment, decoded, not yet checked (``check_channel``)
    query: bytes  # the raw query string, as ASGI's ``query_string``
    origin: str | None
    last_event_id: str | None  # as sent (``http.parse_resume_point`` reads it)
    forwarded: list[str]  # Forwarded header values (used only from a trusted proxy)
    x_forwarded_for: list[str]  # X-Forwarded-For values (likewise)
    authorization: str | None = None  # a reader token or key for a private channel


class _Head:
    """What httptools' parser reports of a request head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True


def parse_events_request(head: bytes) -> EventsRequest | None:
    """What a request head (up to and with the blank line) for an event stream says:
    a whole ``GET /v1/channels/{channel}/events`` of HTTP/1.1, with no body and no
    upgrade. None for anything else, which uvicorn and the app then answer (a HEAD, for
    one: it streams nothing, and its connection stays open for the next request).

    The head is parsed by httptools, and the path decoded, as uvicorn does; headers read
    as Starlette reads them (the first of a name)."""
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserUpgrade, httptools.HttpParserError):
        return None
    if not parsed.complete or parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
        return None
    raw_path, _, query = parsed.url.partition(b"?")
    query = query.partition(b"#")[0]
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "%" in path:
        path = unquote(path)
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    channel = path[len(_PREFIX) : -len(_SUFFIX)]
    if not channel or "/" in channel:  # the route's {channel} is one segment
        return None
    origin = last_event_id = authorization = None
    forwarded: list[str] = []
    x_forwarded_for: list[str] = []
    for name, value in parsed.headers:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            if name == b"transfer-encoding" or value.strip() != b"0":
                return None  # a body (which httptools waits for: not complete above)
        elif name == b"origin":
            if origin is None:
                # Without the whitespace httptools keeps after a value (RFC 9110 section 5.5).
                origin = value.strip(b" \t").decode("latin-1")
        elif name == b"authorization":
            if authorization is None:
                authorization = value.strip(b" \t").decode("latin-1")
        elif name == b"last-event-id":
            if last_event_id is None:
                last_event_id = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            x_forwarded_for.append(value.strip(b" \t").decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(value.strip(b" \t").decode("latin-1"))
    return EventsRequest(channel, query, origin, last_event_id, forwarded, x_forwarded_for,
                         authorization)


_OPEN, _CLOSED = 0, 1  # closed: the stream is over for the app (its last bytes may be out)


class EventSubscriber(asyncio.Protocol):
    """One event stream after a request ticker answered: the hub's ``Sink`` (``sse``).

    The app (``ticker.routes.sse.admit``) either refuses (``refuse``: a whole HTTP
    answer, then a lingering close) or starts the response (``start``) and ``attach``-es
    the hub connection, which the stream closes when it ends (closed by the hub, or the
    client gone). ``verdict`` and ``key`` are the connection's admission
    (``ticker.admission``), given back when it ends."""

    __slots__ = ("_closer", "_conn", "_drained", "_ignored", "_key", "_verdict", "ended",
                 "next_ping", "paused", "ping_payload", "shared", "state", "transport")

    sse = True  # the hub writes each item's SSE form to it (ticker.hub.Sink)

    def __init__(
        self, transport: Any, shared: _Shared, verdict: Verdict = Verdict.DROP,
        key: str | None = None,
    ) -> None:
        self.transport: asyncio.WriteTransport = transport
        self.shared = shared
        self._verdict = verdict
        self._key = key
        self.state = _OPEN
        self._conn: Connection | None = None
        self._drained: asyncio.Event | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._ignored = 0  # bytes the client sent after its request
        self.next_ping = 0.0  # the heartbeat schedule's (_Shared)
        self.ping_payload = b""  # always empty: a heartbeat awaits no answer
        self.paused = False  # the transport's buffer is above its high-water mark
        self.ended = False  # the hub connection has been let go
        shared.connections.add(self)  # type: ignore[arg-type]
        shared.subscribers += 1

    # The app's side

    def refuse(self, response: bytes) -> None:
        """Answer with a whole HTTP response (problem details), end our side, and drop
        what the client still sends for up to ``LINGER_SECONDS`` (so that it reads the
        answer rather than a reset)."""
        transport = self.transport
        self.state = _CLOSED
        self._gone()
        if transport.is_closing():
            return
        transport.write(response)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._closer = self.shared.loop.call_later(LINGER_SECONDS, transport.abort)

    def start(self, headers: dict[str, str], retry_ms: int) -> None:
        """The response's head, then the ``retry:`` line; heartbeats from now on."""
        head = [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"connection: close\r\n"
        ]
        for name, value in self.shared.default_headers:
            head.append(name + b": " + value + b"\r\n")
        for text_name, text_value in headers.items():
            head.append(f"{text_name.lower()}: {text_value}\r\n".encode("latin-1"))
        head.append(b"\r\nretry: %d\n\n" % retry_ms)
        self.transport.write(b"".join(head))
        self.shared.keep_alive(self)

    def attach(self, conn: Connection) -> None:
        if self.ended:  # gone before it was attached
            _release(conn)
        else:
            self._conn = conn

    # The hub's side (ticker.hub.Sink)

    def limit_buffer(self, high: int) -> None:
        """Pause (``paused``) while more than ``high`` bytes wait to be sent."""
        self.transport.set_write_buffer_limits(high=high)

    async def drained(self) -> None:
        """Return once the transport's buffer is below its low-water mark."""
        while self.paused and not self.ended:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()

    def close_with(self, code: int, reason: str) -> None:
        """The last event, after what is buffered, then the end of the connection (which
        ends the body). A client that does not take it within ``ping_timeout`` (it
        stopped reading but keeps its socket open) has its socket dropped."""
        transport = self.transport
        if self.state == _OPEN and not transport.is_closing():
            self.state = _CLOSED
            transport.write(close_frame(code, reason))
            transport.close()  # once the buffer is out
            self._closer = self.shared.loop.call_later(self.shared.drop_after, transport.abort)
        self.state = _CLOSED
        self._gone()

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        # Nothing is expected after the request; a little is dropped, more ends it.
        self._ignored += len(data)
        if self._ignored > MAX_IGNORED and self.state == _OPEN:
            self.state = _CLOSED
            self._gone()
            self.transport.abort()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.shared.connections.discard(self)
        if self._verdict is not Verdict.DROP:
            self.shared.admission.leave(self._verdict, self._key)
            self._verdict = Verdict.DROP
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        self.resume_writing()
        self._gone()

    def shutdown(self) -> None:
        """uvicorn's server is stopping (after the hub closed its connections with 1012)."""
        if self.state == _OPEN and not self.transport.is_closing():
            self.close_with(Close.SERVICE_RESTART, "server restart: reconnect and resume")
        self.transport.close()

    def _gone(self) -> None:
        """The stream is over for the hub: its connection leaves it now (once)."""
        if self.ended:
            return
        self.ended = True
        self.shared.subscribers -= 1
        if self.next_ping:  # in the heartbeat schedule
            self.shared.ended()
        conn, self._conn = self._conn, None
        if conn is not None:
            _release(conn)

    # Heartbeat (_Shared)

    def ping(self) -> bool:
        """A comment that keeps proxies from closing an idle stream; never awaited. Not
        while the client leaves what is sent unread (it would only grow the buffer)."""
        if self.state == _OPEN and not self.paused and not self.transport.is_closing():
            self.transport.write(HEARTBEAT)
        return False

    def no_pong(self) -> None:  # pragma: no cover - heartbeats await no answer
        pass


def _release(conn: Connection) -> None:
    """The hub lets go of a stream's connection: out of the fan-out and the counts."""
    if conn.closing is None:
        conn.close(Close.GOING_AWAY, "")
    conn.hub.close_connection(conn)
