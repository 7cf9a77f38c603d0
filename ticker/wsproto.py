"""ticker's own way in for subscribers under uvicorn: the handshake answered from the
first bytes of a connection, and a lean protocol object per subscriber that the hub
writes to.

Through uvicorn and ASGI every subscriber would cost, when it connects, an HTTP protocol
object and its parser, the request serialised again and parsed again by websockets, a
scope, a task, the middleware chain and a WebSocket object; and for as long as it lives,
that task, its coroutines, a receive queue and the handshake's headers. Connections come
in storms (after a deploy, a network blip, a breaking story), so under ``ticker serve``
the subscribers' endpoint takes a shorter way:

* The gate (``ticker.gate``) reads the first request head of every connection. A plain,
  valid WebSocket upgrade of the endpoint's path (what browsers and clients send),
  recognised by ``parse_upgrade``, is answered from its head: the app's ``admit``
  (``ticker.routes.ws``) decides, synchronously, and the socket passes to a
  ``Subscriber``. Anything else (every other request, malformed upgrades, whose error
  answers websockets gives) goes to uvicorn's httptools protocol, and from there to the
  ASGI app.
* ``Subscriber`` is the socket from then on: it parses the client's frames itself
  (masking, fragments, control frames, size and fragment limits, a message rate) and
  the hub writes pre-built frames straight to the transport (it is the hub's ``Sink``).
  Client messages and the end of the connection go to a listener; no task, queue, timer
  or handshake state stays per connection (keepalive is one schedule for all).

The app still runs on any ASGI server (and on uvicorn's own protocols): there the same
endpoint is an ordinary ASGI WebSocket handler with a writer task, slower but the same
protocol (``ticker.routes.ws``).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import random
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from typing import Protocol as Interface

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.exceptions import ProtocolError
from websockets.frames import Close, CloseCode

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from ticker.admission import Admission, Verdict
from ticker.frames import ws_frame
from ticker.protocol import Allowance, too_many_messages

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_KEEPALIVE_TIMEOUT = "keepalive ping timeout"
# After ending a connection for a client's fault, how long what it still sends is read
# and dropped before the socket closes. Closing with unread bytes makes the kernel send a
# reset, and the client may then lose our answer (a close frame, an HTTP error) before it
# reads it: nginx's "lingering close".
LINGER_SECONDS = 2.0
log = logging.getLogger("uvicorn.error")

# (the connection's sink, the request's Origin, the offered subprotocols) -> None
Admit = Callable[["Subscriber", "str | None", list[str]], None]

_UNIQUE = (b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"origin")


class Upgrade(NamedTuple):
    """What a valid RFC 6455 upgrade request says that ticker needs."""

    target: bytes  # the request target: path and query
    accept: bytes  # the Sec-WebSocket-Accept answer
    origin: str | None
    protocols: list[str]  # the offered subprotocols
    forwarded: list[str]  # Forwarded header values (used only from a trusted proxy)
    x_forwarded_for: list[str]  # X-Forwarded-For values (likewise)


class _Head:
    """What httptools' parser reports of a request head."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def parse_upgrade(head: bytes) -> Upgrade | None:
    """What a request head (up to and with the blank line) that is a valid RFC 6455
    upgrade says; None for anything else, which uvicorn and websockets then answer (with
    errors that name the problem). The head is parsed by httptools, as uvicorn parses
    every request."""
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
        return None  # a request, but not an upgrade
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    if parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
        return None
    fields: dict[bytes, bytes] = {}
    protocols: list[str] = []
    forwarded: list[str] = []
    x_forwarded_for: list[str] = []
    for name, value in parsed.headers:
        name = name.lower()
        # httptools keeps the whitespace after a value, which is not part of it (RFC 9110
        # section 5.5): an Origin of "https://a.example " is "https://a.example".
        value = value.strip(b" \t")
        if name in (b"content-length", b"transfer-encoding"):
            if name == b"transfer-encoding" or value != b"0":
                return None  # a body: the switch comes after the whole request (RFC 9110 7.8)
        elif name == b"sec-websocket-protocol":
            protocols.extend(t.strip() for t in value.decode("latin-1").split(","))
        elif name == b"x-forwarded-for":
            x_forwarded_for.append(value.decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
        elif name in _UNIQUE:
            if name in fields:
                return None
            fields[name] = value
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        return None
    if b"upgrade" not in [t.strip().lower() for t in fields.get(b"connection", b"").split(b",")]:
        return None
    if fields.get(b"sec-websocket-version") != b"13":
        return None
    key = fields.get(b"sec-websocket-key", b"")
    try:
        if len(key) != 24 or len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)
    origin = fields.get(b"origin")
    return Upgrade(
        parsed.url, accept, None if origin is None else origin.decode("latin-1"), protocols,
        forwarded, x_forwarded_for,
    )


class _Kept(Interface):
    """A connection in a keepalive schedule: a Subscriber, or an event stream
    (``ticker.sseproto``), whose heartbeats await no answer."""

    ended: bool
    next_ping: float  # when to ping, or the pong's deadline
    ping_payload: bytes  # of the ping not answered yet

    def ping(self) -> bool: ...

    def no_pong(self) -> None: ...


class _Shared:
    """What every Subscriber of one server has in common, and their keepalive.

    Keepalive is one schedule for all, not timers per connection: subscribers wait in
    ``due`` in the order of their next ping; a tick every fraction of a second pings
    those whose time has come (at most twice the average rate, so that a connect storm's
    pings spread out instead of landing together) and moves them to ``awaiting``; there,
    one whose pong has not come by ``ping_timeout`` is closed with 1011. Connections
    that ended are dropped from the queues as they come up."""

    __slots__ = ("admission", "awaiting", "burst", "connections", "default_headers",
                 "drop_after", "due", "loop", "max_fragments", "max_size", "ping_interval",
                 "ping_timeout", "rate", "stale", "subscribers", "tick", "ticking")

    def __init__(
        self, config: Config, state: ServerState, admission: Admission,
        max_fragments: int, rate: float, burst: int,
        ping_interval: float | None = None, ping_timeout: float | None = None,
    ) -> None:
        """``ping_interval`` and ``ping_timeout``, when given, replace the WebSocket ones
        of ``config``: the event streams' schedule (``ticker.sseproto``) sends a comment
        every ``sse_heartbeat`` seconds and awaits no answer (``ping_timeout=0``)."""
        self.loop = asyncio.get_running_loop()
        self.connections = state.connections
        self.default_headers = state.default_headers
        self.admission = admission  # told when a subscriber's connection ends
        self.max_size: int = config.ws_max_size or 1 << 24  # uvicorn's default: 16 MiB
        self.max_fragments = max_fragments  # frames of one message
        self.rate = rate  # client messages per second, sustained ...
        self.burst = burst  # ... and at once
        self.ping_interval = (config.ws_ping_interval if ping_interval is None else ping_interval) or 0.0
        self.ping_timeout = (config.ws_ping_timeout if ping_timeout is None else ping_timeout) or 0.0
        # How long a connection the server closed has to take its last bytes before its
        # socket is dropped (a client that stopped reading but keeps its socket open).
        self.drop_after = config.ws_ping_timeout or 10.0
        self.tick = min(1.0, self.ping_interval / 4, (self.ping_timeout or 4.0) / 4)
        self.subscribers = 0  # open ones
        self.due: deque[_Kept] = deque()
        self.awaiting: deque[_Kept] = deque()
        self.stale = 0  # about how many ended subscribers the two queues still hold
        self.ticking = False

    def keep_alive(self, sub: _Kept) -> None:
        if not self.ping_interval:
            return
        sub.next_ping = self.loop.time() + self.ping_interval
        self.due.append(sub)
        if not self.ticking:
            self.ticking = True
            self.loop.call_later(self.tick, self._tick)

    def ended(self) -> None:
        """A scheduled subscriber ended. Ended ones leave the queues when their turn comes;
        once they are the greater part, the queues are swept at once, so that a flood of
        short connections (refusals, clients closed for a limit) is not held for a whole
        ping interval."""
        self.stale += 1
        if self.stale > 256 and self.stale * 2 > len(self.due) + len(self.awaiting):
            for queue in (self.due, self.awaiting):  # in place: _tick may be iterating
                alive = [sub for sub in queue if not sub.ended]
                queue.clear()
                queue.extend(alive)
            self.stale = 0

    def _tick(self) -> None:
        now = self.loop.time()
        interval, awaiting, due = self.ping_interval, self.awaiting, self.due
        while awaiting and awaiting[0].next_ping <= now:
            sub = awaiting.popleft()
            if sub.ended:
                self.stale -= 1
                continue
            if sub.ping_payload:
                sub.no_pong()
                continue
            sub.next_ping = max(now, sub.next_ping - self.ping_timeout + interval)
            due.append(sub)
        budget = 2 * int(self.subscribers * self.tick / interval) + 1
        while due and due[0].next_ping <= now and budget > 0:
            sub = due.popleft()
            if sub.ended:
                self.stale -= 1
                continue
            budget -= 1
            if sub.ping() and self.ping_timeout:
                sub.next_ping = now + self.ping_timeout
                awaiting.append(sub)
            else:
                sub.next_ping = now + interval
                due.append(sub)
        if due or awaiting:
            self.loop.call_later(self.tick, self._tick)
        else:
            self.ticking = False


class Listener(Interface):
    """Where a Subscriber's client messages go, and its end (called once)."""

    def message(self, data: str | bytes) -> None: ...

    def gone(self) -> None: ...


class _Nobody:
    """The listener before ``attach`` and after the end."""

    def message(self, data: str | bytes) -> None:
        pass

    def gone(self) -> None:
        pass


_NOBODY = _Nobody()


# Opcodes (RFC 6455 section 5.2) and the states of a Subscriber.
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPEN, _CLOSING, _CLOSED = 0, 1, 2  # closing: our close frame is out, the client's not in


def _close_frame(code: int, reason: str) -> bytes:
    data = reason.encode()
    if len(data) > 123:  # a control frame carries at most 125 bytes
        data = data[:123].decode(errors="ignore").encode()
    return ws_frame(code.to_bytes(2, "big") + data, _CLOSE)


class Subscriber(asyncio.Protocol):
    """One WebSocket after a handshake ticker answered: the hub's ``Sink``.

    The app answers the handshake (``accept``) and then either closes (``close_with``)
    or ``attach``-es a listener: each client message, and the end of the connection
    (closed by either side, or lost), called once.

    Frames from the client are read here, as RFC 6455 asks of a server: masked, no
    reserved bits (no extension is ever agreed), control frames short and whole,
    fragments in order, a message no larger than ``ws_max_size``, text in UTF-8; any
    breach closes the connection with the code the RFC gives (1002, 1007, 1009).
    websockets checks the close frames (``Close.parse``) and unmasks (its C
    ``apply_mask``). Pings get their pong, a close frame its echo.

    What one anonymous client can make the server do is bounded: a message has at most
    ``max_fragments`` frames (empty continuation frames cost memory and time without
    adding bytes: 1009), and messages and pings are spent from an allowance of
    ``burst`` refilled at ``rate`` per second (1008 when it runs out), so that no
    connection makes the process subscribe, unsubscribe or answer without end.

    ``verdict`` and ``key`` are the connection's admission (``ticker.admission``),
    given back when it ends."""

    __slots__ = (
        "_accept", "_allowance", "_buffer", "_closer", "_drained", "_fragments", "_key",
        "_listener", "_size", "_text", "_verdict", "ended", "next_ping", "paused",
        "ping_payload", "shared", "state", "transport",
    )

    sse = False  # the hub writes WebSocket frames to it (ticker.hub.Sink)

    def __init__(
        self, transport: Any, shared: _Shared, accept: bytes,
        verdict: Verdict = Verdict.DROP, key: str | None = None,
    ) -> None:
        self.transport: asyncio.WriteTransport = transport
        self.shared = shared
        self._verdict = verdict
        self._key = key
        self._allowance = Allowance(shared.burst, shared.loop.time())
        self._accept: bytes | None = accept
        self.state = _OPEN
        self._buffer = b""  # the start of a frame not complete yet
        self._fragments: list[bytes] | None = None  # of a message not complete yet
        self._size = 0  # of those fragments
        self._text = True
        self._listener: Listener = _NOBODY
        self._drained: asyncio.Event | None = None
        self._closer: asyncio.TimerHandle | None = None
        self.next_ping = 0.0  # keepalive (_Shared): when to ping, or the pong's deadline
        self.ping_payload = b""  # of the ping not answered yet
        self.paused = False  # the transport's buffer is above its high-water mark
        self.ended = False  # the listener has been told
        shared.connections.add(self)  # type: ignore[arg-type]
        shared.subscribers += 1

    # The app's side

    def accept(self, subprotocol: str | None) -> None:
        """Answer the handshake with 101 (and the chosen subprotocol)."""
        assert self._accept is not None, "accepted twice"
        head = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + self._accept + b"\r\n"
        ]
        self._accept = None
        for name, value in self.shared.default_headers:
            head.append(name + b": " + value + b"\r\n")
        if subprotocol:
            head.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))
        self.shared.keep_alive(self)

    def attach(self, listener: Listener) -> None:
        self._listener = listener

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
        """Send a close frame after what is buffered; the connection is over for the app.
        The client's answer closes the socket; without one within the ping timeout
        (it stopped reading but keeps its socket open), the socket is dropped."""
        if self.state != _OPEN or self.transport.is_closing():
            self._gone()
            return
        self.state = _CLOSING
        self.transport.write(_close_frame(code, reason))
        self._gone()
        self._closer = self.shared.loop.call_later(
            self.shared.ping_timeout or 10.0, self.transport.abort)

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end, pos = len(buffer), 0
        max_size = self.shared.max_size
        while self.state != _CLOSED and end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            opcode, length, head = first & 0x0F, second & 0x7F, pos + 2
            if length == 126:
                if end - head < 2:
                    break
                length, head = int.from_bytes(buffer[head:head + 2], "big"), head + 2
            elif length == 127:
                if end - head < 8:
                    break
                length, head = int.from_bytes(buffer[head:head + 8], "big"), head + 8
            if not second & 0x80:
                return self._fail(CloseCode.PROTOCOL_ERROR, "incorrect masking")
            if first & 0x70:
                return self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
            if opcode >= _CLOSE:
                if length > 125:
                    return self._fail(CloseCode.PROTOCOL_ERROR, "control frame too long")
                if not first & 0x80:
                    return self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            elif self._size + length > max_size:
                return self._fail(CloseCode.MESSAGE_TOO_BIG, f"over size limit ({max_size} bytes)")
            if end - head < 4 + length:
                break
            payload = apply_mask(buffer[head + 4:head + 4 + length], buffer[head:head + 4])
            pos = head + 4 + length
            self._frame(opcode, first & 0x80, payload)
        self._buffer = buffer[pos:] if pos < end and self.state != _CLOSED else b""

    def _spend(self) -> bool:
        """Take one message from the allowance; False (and the connection closed with
        1008) when it is spent."""
        shared = self.shared
        if self._allowance.spend(shared.loop.time(), shared.rate, shared.burst):
            return True
        self._fail(CloseCode.POLICY_VIOLATION, too_many_messages(shared.rate, shared.burst))
        return False

    def _frame(self, opcode: int, fin: int, payload: bytes) -> None:
        if opcode in (_TEXT, _BINARY):
            if self._fragments is not None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            if not self._spend():
                return None
            self._text = opcode == _TEXT
            if fin:
                return self._message(payload)
            self._fragments, self._size = [payload], len(payload)
        elif opcode == _CONT:
            if self._fragments is None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            if len(self._fragments) >= self.shared.max_fragments:
                return self._fail(CloseCode.MESSAGE_TOO_BIG, (
                    f"too many fragments (limit {self.shared.max_fragments} frames per message)"))
            self._fragments.append(payload)
            self._size += len(payload)
            if fin:
                data = b"".join(self._fragments)
                self._fragments, self._size = None, 0
                self._message(data)
        elif opcode == _PING:
            # Not while the client leaves what is sent unread (the socket's buffer is past
            # its mark): a flood of pings must not grow the server's memory.
            if self.state == _OPEN and self._spend() and not self.paused:
                self.transport.write(ws_frame(payload, _PONG))
        elif opcode == _PONG:
            if payload == self.ping_payload:
                self.ping_payload = b""
        elif opcode == _CLOSE:
            try:
                Close.parse(payload)
            except ProtocolError as exc:
                return self._fail(CloseCode.PROTOCOL_ERROR, str(exc))
            except UnicodeDecodeError as exc:
                return self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            if self.state == _OPEN:
                self.transport.write(ws_frame(payload, _CLOSE))  # the echo RFC 6455 asks for
            self._end()
        else:
            self._fail(CloseCode.PROTOCOL_ERROR, f"invalid opcode: {opcode:#x}")

    def _message(self, data: bytes) -> None:
        if self.state != _OPEN or self.ended:
            return  # closing: what the client says now changes nothing
        if not self._text:
            self._listener.message(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            return
        self._listener.message(text)

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol or a limit: a close frame, then our side of the
        socket ends and what the client still sends is dropped until it ends its side or
        ``LINGER_SECONDS`` pass (see there: it must not lose the close frame)."""
        transport = self.transport
        if self.state != _OPEN or transport.is_closing() or not transport.can_write_eof():
            if self.state == _OPEN and not transport.is_closing():
                transport.write(_close_frame(code, reason))
            self._end()
            return
        transport.write(_close_frame(code, reason))
        self.state = _CLOSED
        self._buffer = b""
        self._gone()
        transport.write_eof()
        self._closer = self.shared.loop.call_later(LINGER_SECONDS, transport.abort)

    def _end(self) -> None:
        self.state = _CLOSED
        self._buffer = b""
        self._gone()
        self.transport.close()

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
            self.close_with(CloseCode.SERVICE_RESTART, "server restart: reconnect and resume")
        self.transport.close()

    def _gone(self) -> None:
        if not self.ended:
            self.ended = True
            self.shared.subscribers -= 1
            if self.next_ping:  # in the keepalive schedule
                self.shared.ended()
            listener, self._listener = self._listener, _NOBODY
            listener.gone()

    # Keepalive (_Shared)

    def ping(self) -> bool:
        """Send a ping; False if the connection is closing."""
        if self.state != _OPEN or self.transport.is_closing():
            return False
        self.ping_payload = struct.pack("!I", random.getrandbits(32))
        self.transport.write(ws_frame(self.ping_payload, _PING))
        return True

    def no_pong(self) -> None:
        self._fail(CloseCode.INTERNAL_ERROR, _KEEPALIVE_TIMEOUT)
