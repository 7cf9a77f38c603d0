"""The way in: every connection ``ticker serve`` accepts passes the gate first.

The gate counts the connection (``ticker.admission``), reads its first request head under
limits of size, header count and time, and then hands the socket on: a subscriber's
WebSocket handshake to a ``Subscriber`` (``ticker.wsproto``), a request for an event
stream to an ``EventSubscriber`` (``ticker.sseproto``), anything else, with the
bytes read so far, to ``GuardedHttpProtocol``, uvicorn's httptools protocol with the
same limits on every later request of the connection and a time limit on each body.

Why here and not in uvicorn: uvicorn's httptools protocol bounds neither a head's size,
nor its header count, nor the time it takes, nor a connection that sends nothing (one
connection streaming header lines grew a process to 4.8 GiB). The defaults follow
nginx (``large_client_header_buffers 4 8k``: 32 KiB of head) and gunicorn
(``limit_request_fields 100``); ``docs/security.md`` gives the reasoning.

What a client gets, and when:

=============================  ===========================================================
nothing sent in idle_timeout   the connection is closed, without an answer (a browser's
                               speculative preconnect is one of these)
head too large / too many      431 problem details, connection closed
head not whole in head_timeout 408 problem details, connection closed
body not whole in body_timeout 408 (or a plain close once a response began)
over a connection limit        429 or 503 with Retry-After (an event stream too: it is
                               plain HTTP); a WebSocket upgrade gets 101 and close code
                               1013 with the reason
=============================  ===========================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ticker.admission import Admission, Verdict
from ticker.config import Settings
from ticker.protocol import SUBPROTOCOL, Close
from ticker.sseproto import EventsRequest, EventSubscriber, parse_events_request
from ticker.wsproto import LINGER_SECONDS, Admit, Subscriber, Upgrade, _Shared, parse_upgrade

log = logging.getLogger("ticker.gate")

RETRY_AFTER_SECONDS = 5
_LOG_EVERY = 60.0  # seconds between two log lines about the same kind of refusal


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What the gate enforces, from the settings."""

    max_head_bytes: int
    max_header_count: int
    idle_timeout: float
    head_timeout: float
    body_timeout: float
    ws_max_fragments: int
    ws_message_rate: float
    ws_message_burst: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


class Gate:
    """The server's entrance: limits, connection counts, and counts of what it refused
    (read by ``/metrics``). One per server, shared by every connection."""

    def __init__(self, settings: Settings, ws_path: str, admit: Callable[[], Admit | None]) -> None:
        self.limits = Limits.of(settings)
        self.admission = Admission(
            settings.max_connections, settings.max_connections_per_address,
            settings.forwarded_allow_ips,
        )
        self.ws_path = ws_path
        self.admit = admit  # the app's subscriber handshake, None until it has started
        self.shared: _Shared | None = None  # the Subscribers', made in the server's loop
        # The app's event streams (``ticker.routes.sse.admit``), set while it runs, and
        # what the streams share (their heartbeat schedule), made in the server's loop.
        self.events: Callable[[EventSubscriber, EventsRequest], None] | None = None
        self.streams: _Shared | None = None
        self.sse_heartbeat = settings.sse_heartbeat
        self.refused: dict[str, int] = {}  # by reason: busy, crowded, dropped
        self.answered: dict[str, int] = {}  # limits hit, by kind: head_size, head_timeout...
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (last line's time, since)

    def refusing(self, kind: str, what: str) -> None:
        """Count a refused connection, and say so (``what``) in the log at most once a
        minute per kind: an operator must hear of it, and a flood must not flood the log."""
        self.refused[kind] = self.refused.get(kind, 0) + 1
        now = asyncio.get_running_loop().time()
        last, since = self._logged.get(kind, (-_LOG_EVERY, 0))
        if now - last >= _LOG_EVERY:
            more = f" ({since} more like it since the last report)" if since else ""
            log.warning("%s%s", what, more)
            self._logged[kind] = (now, 0)
        else:
            self._logged[kind] = (last, since + 1)

    def stopped(self, kind: str) -> None:
        """Count a request stopped by a limit (``/metrics``); these are not logged: each
        is the client's own, and a flood of them must not flood the log."""
        self.answered[kind] = self.answered.get(kind, 0) + 1

    def take_subscriber(
        self, head: bytes, early: bytes, transport: asyncio.Transport, config: Config,
        state: ServerState, admitted: tuple[Verdict, str | None], handed_over: Callable[[], None],
    ) -> bool:
        """Make the socket a Subscriber if ``head`` is a subscriber's handshake (on a
        connection's first request, or a later one of a kept-alive connection, as a proxy
        sends them); False, and nothing done, if it is not one.

        ``admitted`` is the connection's admission; ``handed_over`` is called when the
        socket passes on (the Subscriber gives the admission back at its end). Through a
        trusted proxy the subscriber counts, from now on, against its client's address,
        and is refused (101, then close 1013) when that address holds its share."""
        admit = self.admit()
        upgrade = None if admit is None else parse_upgrade(head)
        if admit is None or upgrade is None:
            return False
        path = upgrade.target.partition(b"?")[0].decode("latin-1")
        if "%" in path:
            path = unquote(path)
        if path != self.ws_path:
            return False
        verdict, key = admitted
        peer = _peer_host(transport)
        client = self.admission.client_of(peer, upgrade.forwarded, upgrade.x_forwarded_for)
        crowded = False
        if client is not None:
            claimed = self.admission.claim(client)
            crowded = claimed is None
            key = key if claimed is None else claimed
        handed_over()
        sub = Subscriber(transport, self.subscribers(config, state), upgrade.accept, verdict, key)
        transport.set_protocol(sub)
        if crowded:
            self.refusing("crowded", f"Refusing connections from {client!r} (forwarded): it "
                          f"holds max_connections_per_address ({self.admission.per_address})")
            sub.accept(SUBPROTOCOL if SUBPROTOCOL in upgrade.protocols else None)
            sub.close_with(Close.TRY_AGAIN_LATER, (
                f"too many connections from your address (limit {self.admission.per_address}); "
                "reconnect later"))
            return True
        if log.isEnabledFor(logging.INFO):
            # The client's address and target as written by the client: quoted (%r), so
            # that nothing in them can pass for another log line or a terminal control.
            log.info('%r - "WebSocket %r" [accepted]', client or peer or "",
                     upgrade.target.decode("latin-1"))
        admit(sub, upgrade.origin, upgrade.protocols)
        if early and not sub.ended:
            sub.data_received(early)
        return True

    def take_events(
        self, head: bytes, early: bytes, transport: asyncio.Transport, config: Config,
        state: ServerState, admitted: tuple[Verdict, str | None], handed_over: Callable[[], None],
    ) -> bool:
        """Make the socket an EventSubscriber if ``head`` asks for an event stream (on a
        connection's first request); False, and nothing done, if it does not. Admission
        as in ``take_subscriber``; a client address that holds its share gets 429."""
        events = self.events
        if events is None or not head.startswith(b"GET /v1/channels/"):
            return False  # (cheaply: every first request that is not a subscriber's comes here)
        request = parse_events_request(head)
        if request is None:
            return False
        verdict, key = admitted
        peer = _peer_host(transport)
        client = self.admission.client_of(peer, request.forwarded, request.x_forwarded_for)
        crowded = False
        if client is not None:
            claimed = self.admission.claim(client)
            crowded = claimed is None
            key = key if claimed is None else claimed
        handed_over()
        sub = EventSubscriber(transport, self.event_streams(config, state), verdict, key)
        transport.set_protocol(sub)
        if crowded:
            self.refusing("crowded", f"Refusing connections from {client!r} (forwarded): it "
                          f"holds max_connections_per_address ({self.admission.per_address})")
            sub.refuse(_too_many_from(self.admission.per_address))
            return True
        if log.isEnabledFor(logging.INFO):
            log.info('%r - "EventStream %r" [accepted]', client or peer or "", request.channel)
        events(sub, request)
        if early and not sub.ended:
            sub.data_received(early)
        return True

    def event_streams(self, config: Config, state: ServerState) -> _Shared:
        if self.streams is None:
            # The WebSocket keepalive's schedule, for heartbeats that await no answer.
            self.streams = _Shared(
                config, state, self.admission, 0, 0.0, 0,
                ping_interval=self.sse_heartbeat, ping_timeout=0.0,
            )
        return self.streams

    def subscribers(self, config: Config, state: ServerState) -> _Shared:
        if self.shared is None:
            limits = self.limits
            self.shared = _Shared(
                config, state, self.admission, limits.ws_max_fragments,
                limits.ws_message_rate, limits.ws_message_burst,
            )
        return self.shared


def problem_bytes(
    status: int, reason: str, detail: str, type_suffix: str, extra: dict[str, str] | None = None,
    **extensions: Any,
) -> bytes:
    """A whole HTTP/1.1 response with RFC 9457 problem details, that closes the connection."""
    body = orjson.dumps({
        "type": f"urn:ticker:problem:{type_suffix}", "title": reason, "status": status,
        "detail": detail, **extensions,
    })
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (extra or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _too_many_from(per_address: int) -> bytes:
    return problem_bytes(
        429, "Too Many Requests",
        f"Your address holds too many connections to this server (limit {per_address}); "
        "close some and retry.",
        "too-many-connections", {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _head_too_large(limits: Limits, header_count: bool) -> bytes:
    if header_count:
        detail = f"The request has more than {limits.max_header_count} header fields."
        limit = limits.max_header_count
    else:
        detail = f"The request head (request line and headers) is larger than {limits.max_head_bytes} bytes."
        limit = limits.max_head_bytes
    return problem_bytes(431, "Request Header Fields Too Large", detail, "head-too-large", limit=limit)


def _timed_out(what: str, seconds: float) -> bytes:
    return problem_bytes(
        408, "Request Timeout", f"The request {what} did not arrive within {seconds:g} s.",
        "request-timeout",
    )


def _answer_and_linger(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, response: bytes
) -> asyncio.TimerHandle | None:
    """Send an error answer and end our side; the caller drops what the client still
    sends until it ends its side or the returned timer closes the socket."""
    if transport.is_closing():
        return None
    if response:
        transport.write(response)
    if not transport.can_write_eof():
        transport.close()
        return None
    transport.write_eof()
    return loop.call_later(LINGER_SECONDS, transport.abort)


def _peer_host(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class GateProtocol(asyncio.Protocol):
    """The first protocol of a connection, until its first request head is whole.

    ``gate_protocol(gate)`` makes the class that ``ticker serve`` gives uvicorn."""

    gate: Gate

    __slots__ = ("app_state", "buffer", "config", "key", "lines", "lingering", "loop",
                 "scanned", "server_state", "timer", "transport", "verdict")

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_running_loop()
        self.buffer = bytearray()
        self.scanned = 0  # bytes of the buffer searched for the end of the head
        self.lines = 0  # line feeds in those bytes
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.verdict = Verdict.DROP
        self.key: str | None = None
        self.lingering = False  # answered an error: what comes now is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self.gate
        self.transport = cast(asyncio.Transport, transport)
        peer = _peer_host(transport)
        self.verdict, self.key = gate.admission.arrive(peer)
        if self.verdict is Verdict.DROP:
            gate.refusing("dropped", "Closing new connections at once: the process is "
                       "at its connection limit and has no room left even to refuse them")
            self.transport.abort()
            return
        if self.verdict is Verdict.BUSY:
            gate.refusing("busy", f"Refusing connections: the process holds "
                       f"max_connections ({gate.admission.max_connections})")
        elif self.verdict is Verdict.CROWDED:
            gate.refusing("crowded", f"Refusing connections from {peer}: it holds "
                       f"max_connections_per_address ({gate.admission.per_address})")
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.timer = self.loop.call_later(gate.limits.idle_timeout, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.server_state.connections.discard(self)
        if self.verdict is not Verdict.DROP:
            self.gate.admission.leave(self.verdict, self.key)
            self.verdict = Verdict.DROP  # left: never twice

    def shutdown(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        limits = self.gate.limits
        buffer = self.buffer
        if not buffer:
            if not data:
                return
            # The first byte: the head has head_timeout to arrive. Something that cannot
            # be a request line (TLS, a stray protocol) goes to uvicorn's 400 at once.
            if not 0x41 <= data[0] <= 0x5A:
                self._to_uvicorn(data)
                return
            self._disarm()
            self.timer = self.loop.call_later(limits.head_timeout, self._head_timeout)
        buffer += data
        # The head ends at its blank line: CRLF CRLF, or two bare line feeds (which
        # uvicorn's parser then refuses). Searched only where the new bytes came: a head
        # dripped a byte at a time must not be searched again and again.
        crlf = buffer.find(b"\r\n\r\n", max(0, self.scanned - 3))
        bare = buffer.find(b"\n\n", max(0, self.scanned - 1))
        if crlf < 0 and bare < 0:
            self.lines += data.count(b"\n")
            self.scanned = len(buffer)
            if len(buffer) > limits.max_head_bytes:
                self._answer(_head_too_large(limits, False), "head_size")
            elif self.lines > limits.max_header_count + 1:
                self._answer(_head_too_large(limits, True), "header_count")
            return
        self._disarm()
        bare_first = bare >= 0 and (crlf < 0 or bare < crlf)
        size = bare + 2 if bare_first else crlf + 4
        head = bytes(buffer[:size])
        # The limits first, as when the head comes in pieces and passes them before its end.
        if size > limits.max_head_bytes:
            self._answer(_head_too_large(limits, False), "head_size")
        elif head.count(b"\n") > limits.max_header_count + 2:  # the request line, the end
            self._answer(_head_too_large(limits, True), "header_count")
        elif bare_first:
            self._to_uvicorn(bytes(buffer))
        elif self.verdict is not Verdict.ADMIT:
            self._refuse(head)
        elif not self._subscriber(head, bytes(buffer[size:])):
            self._to_uvicorn(bytes(buffer))

    # Timeouts

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        self.timer = None
        self.gate.stopped("idle_timeout")
        if self.transport is not None:
            self.transport.close()

    def _head_timeout(self) -> None:
        self.timer = None
        self._answer(_timed_out("head", self.gate.limits.head_timeout), "head_timeout")

    def _answer(self, response: bytes, kind: str) -> None:
        """Answer an error and close (what was read, and what comes, is dropped)."""
        self._disarm()
        self.buffer = bytearray()
        self.gate.stopped(kind)
        assert self.transport is not None
        self.lingering = True
        self.timer = _answer_and_linger(self.transport, self.loop, response)

    # Where the connection goes next

    def _handed_over(self) -> None:
        """The socket belongs to another protocol now, and so does its admission."""
        self._disarm()
        self.buffer = bytearray()
        self.server_state.connections.discard(self)
        self.verdict = Verdict.DROP

    def _to_uvicorn(self, data: bytes) -> None:
        assert self.transport is not None
        http = GuardedHttpProtocol(
            config=self.config, server_state=self.server_state, app_state=self.app_state,
            _loop=self.loop,
        )
        http.gate = self.gate
        http.admitted = (self.verdict, self.key)
        self._handed_over()
        self.transport.set_protocol(http)
        http.connection_made(self.transport)
        if data:
            http.data_received(data)

    def _refuse(self, head: bytes) -> None:
        """Over a connection limit: say so, in HTTP or in WebSocket as the client asked."""
        crowded = self.verdict is Verdict.CROWDED
        upgrade = parse_upgrade(head)
        if upgrade is not None:
            if crowded:
                # 1013, not 1008: the client did nothing wrong, its address is busy for now
                # (a NAT's other users), and clients give up after a 1008.
                code, reason = Close.TRY_AGAIN_LATER, (
                    f"too many connections from your address (limit "
                    f"{self.gate.admission.per_address}); reconnect later")
            else:
                code, reason = Close.TRY_AGAIN_LATER, "server full: reconnect later and resume"
            sub = self._to_subscriber(upgrade, b"")
            sub.accept(SUBPROTOCOL if SUBPROTOCOL in upgrade.protocols else None)
            sub.close_with(code, reason)
            return
        if crowded:
            response = _too_many_from(self.gate.admission.per_address)
        else:
            response = problem_bytes(
                503, "Service Unavailable", "The server holds all the connections it can; retry shortly.",
                "server-full", {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        assert self.transport is not None
        self.lingering = True
        self.timer = _answer_and_linger(self.transport, self.loop, response)

    def _to_subscriber(self, upgrade: Upgrade, early: bytes) -> Subscriber:
        assert self.transport is not None
        shared = self.gate.subscribers(self.config, self.server_state)
        sub = Subscriber(self.transport, shared, upgrade.accept, self.verdict, self.key)
        self._handed_over()
        self.transport.set_protocol(sub)
        return sub

    def _subscriber(self, head: bytes, early: bytes) -> bool:
        """Hand a subscriber's handshake to a Subscriber; False if ``head`` is not one."""
        assert self.transport is not None
        admitted = (self.verdict, self.key)
        return self.gate.take_subscriber(
            head, early, self.transport, self.config, self.server_state, admitted,
            self._handed_over,
        ) or self.gate.take_events(
            head, early, self.transport, self.config, self.server_state, admitted,
            self._handed_over,
        )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the gate's limits on every request head after
    the first (keep-alive) and a time limit on every request body.

    Sizes are counted as bytes fed to the parser while a head is incomplete (httptools
    buffers a header until it is whole, so its own memory is bounded by this count);
    timers exist only while a head or a body is incomplete, never for a request that
    arrived whole."""

    gate: Gate
    admitted: tuple[Verdict, str | None] = (Verdict.DROP, None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = False
        self.in_body = False
        self.head_bytes = 0
        self.header_count = 0
        self.too_large = False
        self.lingering = False  # answered an error: what comes now is dropped
        self.started = 0.0  # of the head, then of the body
        self.deadline: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._leave()
        super().connection_lost(exc)

    def _leave(self) -> None:
        verdict, key = self.admitted
        if verdict is not Verdict.DROP:
            self.admitted = (Verdict.DROP, None)
            self.gate.admission.leave(verdict, key)

    def _subscriber(self, early: bytes) -> bool:
        """A subscriber's handshake on a later request of the connection (a proxy keeps
        its connections to ticker alive and sends upgrades on them): the same way as a
        first request's, counted against the client the proxy names."""
        head = b"".join([
            self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.headers), b"\r\n",
        ])

        def handed_over() -> None:
            self._disarm()
            self.connections.discard(self)
            self.admitted = (Verdict.DROP, None)
            self.parser = None  # type: ignore[assignment]  # it refers back to self: no cycle left

        return self.gate.take_subscriber(
            head, early, self.transport, self.config, self.server_state, self.admitted,
            handed_over,
        )

    def handle_websocket_upgrade(self) -> None:
        """A WebSocket that is not a subscriber's fast-path handshake (another path, or
        malformed): uvicorn's WebSocket protocol takes the socket, and its end releases
        the admission."""
        admitted, self.admitted = self.admitted, (Verdict.DROP, None)
        super().handle_websocket_upgrade()
        ws = self.transport.get_protocol()
        lost = ws.connection_lost
        admission = self.gate.admission

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                admission.leave(*admitted)
                vars(ws).pop("connection_lost", None)  # no cycle left for the collector

        ws.connection_lost = connection_lost  # type: ignore[method-assign]

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = self.header_count = 0
        self.started = self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.gate.limits.max_header_count:
            self.too_large = True
            raise OverflowError("too many header fields")  # stops the parser
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm()
        super().on_headers_complete()
        self.in_body = True
        self.started = self.loop.time()

    def on_message_complete(self) -> None:
        self.in_body = False
        self._disarm()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self._unset_keepalive_if_required()
        limits = self.gate.limits
        was_in_head = self.in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                # What follows the head in this chunk is the client's first frames.
                offset = upgrade.args[0] if upgrade.args else len(data)
                if not self._subscriber(bytes(data[offset:])):
                    self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.too_large:
                self._answer(_head_too_large(limits, True), "header_count")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self.in_head:
            # Counted from the chunk in which the head began: at most one chunk too much.
            self.head_bytes = (self.head_bytes if was_in_head else 0) + len(data)
            if self.head_bytes > limits.max_head_bytes:
                self._answer(_head_too_large(limits, False), "head_size")
            elif self.deadline is None:
                self._arm(limits.head_timeout, self._head_timeout)
        elif self.in_body and self.deadline is None:
            self._arm(limits.body_timeout, self._body_timeout)

    # Timeouts

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self.deadline = self.loop.call_at(self.started + seconds, then)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_timeout(self) -> None:
        self.deadline = None
        self._answer(_timed_out("head", self.gate.limits.head_timeout), "head_timeout")

    def _body_timeout(self) -> None:
        self.deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.gate.stopped("body_timeout")
            self.transport.close()  # the app's answer is under way: cut it short
            return
        if cycle is not None:
            # The app waiting for the body hears that the client is gone, and whatever it
            # answers now is not written after ours.
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer(_timed_out("body", self.gate.limits.body_timeout), "body_timeout")

    def _answer(self, response: bytes, kind: str) -> None:
        self.gate.stopped(kind)
        self._disarm()
        self.lingering = True
        self.deadline = _answer_and_linger(self.transport, self.loop, response)


def gate_protocol(gate: Gate) -> type[GateProtocol]:
    """The protocol class ``ticker serve`` gives uvicorn (``http=``)."""
    return type("GateProtocol", (GateProtocol,), {"gate": gate, "__slots__": ()})
