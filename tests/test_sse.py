"""Server-Sent Events: GET /v1/channels/{channel}/events.

A real uvicorn, a real Redis, and real HTTP streaming clients (httpx; a raw socket with a
tiny receive buffer for the slow consumer). The stream must carry the very messages the
WebSocket carries, resume exactly from Last-Event-ID, and end cleanly on every path.

Every test of the service runs both ways a stream is served: ``ticker serve``'s own
(``ticker.sseproto``, a body delimited by the end of the connection) and the ASGI
endpoint (chunked, as on any other server). tests/test_sseproto.py checks what only the
first does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import RECV_TIMEOUT, Service, free_socket, run_service
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.frames import Batch, Message
from ticker.routes.sse import close_frame


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    """Both ways a stream is served (see the module's docstring)."""
    return str(request.param)


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data)
        return value


def parse_events(lines: list[str]) -> tuple[list[Event | str], int | None]:
    """Parse text/event-stream lines (WHATWG HTML, 9.2.6): events, and comments as str."""
    out: list[Event | str] = []
    retry = None
    kind, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                out.append(Event(kind, "\n".join(data), last_id))
            kind, data = "message", []
            continue
        if line.startswith(":"):
            out.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    return out, retry


class Stream:
    """An open event stream read by a background task into a queue."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[Event | str | None] = asyncio.Queue()
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_id: str | None = None
        self.ended = False

    async def pump(self) -> None:
        kind = "message"
        data: list[str] = []
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    await self.queue.put(Event(kind, "\n".join(data), self.last_id))
                kind, data = "message", []
            elif line.startswith(":"):
                await self.queue.put(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry" and value.isdigit():
                    self.retry = int(value)
                elif name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    self.last_id = value
        await self.queue.put(None)

    async def next(self, timeout: float = RECV_TIMEOUT) -> Event:
        """The next event, skipping comments (kept in ``comments``)."""
        while True:
            item = await asyncio.wait_for(self.queue.get(), timeout)
            if item is None:
                self.ended = True
                raise AssertionError("the stream ended")
            if isinstance(item, str):
                self.comments.append(item)
                continue
            return item

    async def events(self, count: int) -> list[Event]:
        return [await self.next() for _ in range(count)]

    async def until_end(self, timeout: float = RECV_TIMEOUT) -> list[Event]:
        """Every event until the server ends the stream."""
        got: list[Event] = []
        for _ in range(100_000):
            item = await asyncio.wait_for(self.queue.get(), timeout)
            if item is None:
                self.ended = True
                return got
            if isinstance(item, Event):
                got.append(item)
        raise AssertionError("the stream did not end")

    async def nothing_within(self, seconds: float) -> bool:
        try:
            item = await asyncio.wait_for(self.next(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected nothing, got {item}")


@contextlib.asynccontextmanager
async def open_stream(
    service: Service, channel: str, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[Stream]:
    async with service.http.stream(
        "GET", f"/v1/channels/{channel}/events", headers=headers, params=params,
        timeout=httpx.Timeout(10, read=None),
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        stream = Stream(response)
        task = asyncio.create_task(stream.pump())
        try:
            yield stream
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


async def _snapshot_cursor(service: Service, channel: str) -> str:
    async with open_stream(service, channel) as stream:
        snapshot = await stream.next()
        assert snapshot.event == "snapshot" and snapshot.id is not None
        return snapshot.id


async def _hub_settles(service: Service, seconds: float = 5.0) -> None:
    """Wait until the service has no open connection left (bounded)."""
    hub = service.app.state.services.hub
    deadline = time.monotonic() + seconds
    while hub.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not hub.connections and not hub.channels


# Framing, without I/O


def test_an_event_is_named_by_its_type_and_ided_by_its_cursor() -> None:
    message = orjson.dumps({
        "type": "brief", "channel": "world",
        "brief": {"id": "5-0", "text": 'fake "cursor":"9-9" and\nnewline'},
        "cursor": "5-0",
    })
    assert Message(message, "brief", "5-0").sse == b"event: brief\nid: 5-0\ndata: " + message + b"\n\n"
    subscribed = b'{"type":"subscribed","channel":"world","recovered":true,"epoch":"e"}'
    assert Message.control(subscribed).sse == b"event: subscribed\ndata: " + subscribed + b"\n\n"
    batch = Batch([Message(message, "brief", "5-0"), Message.control(subscribed)])
    assert batch.sse == Message(message, "brief", "5-0").sse + Message.control(subscribed).sse
    assert close_frame(4008, "too slow") == (
        b'event: close\ndata: {"type":"close","code":4008,"reason":"too slow"}\n\n'
    )


def test_hostile_text_cannot_break_the_event_framing() -> None:
    text = "a\r\nevent: retraction\r\ndata: x\n\nid: 1-1\u2028\u0085 end"
    message = orjson.dumps({"type": "brief", "channel": "c", "brief": {"text": text}, "cursor": "2-0"})
    events, _ = parse_events(Message(message, "brief", "2-0").sse.decode().split("\n"))
    assert events == [Event("brief", message.decode(), "2-0")]
    assert isinstance(events[0], Event) and events[0].json()["brief"]["text"] == text


# Against the real service


async def test_sse_delivers_the_same_messages_as_the_websocket_live(service: Service) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    ws_snapshot = await sub.recv()
    async with open_stream(service, "world") as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-cache"
        snapshot = await stream.next()
        assert snapshot.event == "snapshot" and snapshot.json() == ws_snapshot
        assert stream.retry == service.app.state.services.settings.sse_retry_ms

        brief = await service.publish("world", "Tsahal ne se retirera pas de cinq avant-postes")
        event = await stream.next()
        ws_event = await sub.recv()
        assert event.event == "brief" and event.id == brief["id"]
        assert event.json() == ws_event == {
            "type": "brief", "channel": "world", "brief": brief, "cursor": brief["id"]
        }

        path = f"/v1/channels/world/briefs/{brief['id']}"
        r = await service.http.patch(path, json={"text": "Fixed"}, headers=service.auth())
        assert r.status_code == 200
        correction = await stream.next()
        assert correction.event == "correction" and correction.json() == await sub.recv()
        assert correction.json()["brief"]["text"] == "Fixed"
        assert correction.id == correction.json()["cursor"]

        r = await service.http.delete(path, headers=service.auth())
        assert r.status_code == 204
        retraction = await stream.next()
        assert retraction.event == "retraction" and retraction.json() == await sub.recv()
        assert retraction.json()["id"] == brief["id"]
        assert retraction.id == retraction.json()["cursor"]

        await service.publish("sport", "other channel")
        assert await stream.nothing_within(0.3)
    await sub.close()


async def test_last_event_id_resumes_with_exactly_the_missed_events_then_live(
    service: Service,
) -> None:
    await service.publish("world", "seen")
    cursor = await _snapshot_cursor(service, "world")
    missed = [await service.publish("world", f"missed {i}") for i in range(30)]

    # ?since= says where to start too, but a reconnecting EventSource's header wins.
    headers = {"Last-Event-ID": cursor}
    async with open_stream(service, "world", headers, since=missed[-1]["id"]) as stream:
        subscribed = await stream.next()
        assert subscribed.event == "subscribed" and subscribed.id is None
        assert subscribed.json()["recovered"] is True
        caught_up = await stream.events(30)
        assert [e.json()["brief"] for e in caught_up] == missed
        assert [e.id for e in caught_up] == [b["id"] for b in missed]
        live = await service.publish("world", "live")
        event = await stream.next()
        assert event.json()["brief"] == live
        assert await stream.nothing_within(0.2)


async def test_since_query_parameter_resumes_a_first_connection(service: Service) -> None:
    first = await service.publish("world", "one")
    second = await service.publish("world", "two")
    async with open_stream(service, "world", since=first["id"]) as stream:
        assert (await stream.next()).json()["recovered"] is True
        event = await stream.next()
        assert event.json()["brief"] == second and event.id == second["id"]


async def test_unrecoverable_cursor_gives_recovered_false_and_a_snapshot(serve_with: Any) -> None:
    async with serve_with(retention_max_events=20) as service:
        for i in range(5):
            await service.publish("world", f"early {i}")
        cursor = await _snapshot_cursor(service, "world")
        later = [await service.publish("world", f"later {i}") for i in range(50)]
        async with open_stream(service, "world", {"Last-Event-ID": cursor}) as stream:
            subscribed = await stream.next()
            assert subscribed.json()["recovered"] is False
            snapshot = await stream.next()
            assert snapshot.event == "snapshot" and snapshot.id == later[-1]["id"]
            assert snapshot.json()["briefs"] == list(reversed(later[-20:]))
            live = await service.publish("world", "live")
            assert (await stream.next()).json()["brief"] == live


async def test_heartbeat_comments_arrive_while_the_channel_is_idle(serve_with: Any) -> None:
    async with serve_with(sse_heartbeat=0.1) as service, open_stream(service, "quiet") as stream:
        assert (await stream.next()).event == "snapshot"
        for _ in range(3):
            item = await asyncio.wait_for(stream.queue.get(), 5)
            assert item == "ping"


async def test_client_disconnect_ends_the_response_and_frees_the_subscription(
    service: Service,
) -> None:
    async with open_stream(service, "world") as stream:
        await stream.next()
        hub = service.app.state.services.hub
        assert len(hub.connections) == 1 and "world" in hub.channels
    await _hub_settles(service)


async def test_server_shutdown_ends_the_stream_with_a_1012_close_event(serve_with: Any) -> None:
    async with serve_with() as service, open_stream(service, "world") as stream:
        await stream.next()
        brief = await service.publish("world", "last before restart")
        assert (await stream.next()).id == brief["id"]
        started = time.monotonic()
        stopping = asyncio.create_task(service.stop())
        rest = await stream.until_end()
        assert [e.json() for e in rest] == [
            {"type": "close", "code": 1012, "reason": "server restart: reconnect and resume"}
        ]
        await asyncio.wait_for(stopping, 10)
        # Ended by the hub, not by uvicorn's graceful-shutdown timeout.
        assert time.monotonic() - started < 5


async def test_refusals_are_problem_details(serve_with: Any) -> None:
    async with serve_with(allowed_origins=("https://news.example",)) as service:
        evil = {"Origin": "https://evil.example"}
        cases: list[tuple[str, dict[str, str], int, str]] = [
            ("/v1/channels/Bad_Name/events", {}, 400, "bad-channel"),
            ("/v1/channels/world/events", {"Last-Event-ID": "yesterday"}, 400, "bad-cursor"),
            ("/v1/channels/world/events?since=1-2-3", {}, 400, "bad-cursor"),
            ("/v1/channels/world/events", evil, 403, "origin-not-allowed"),
        ]
        for path, headers, status, suffix in cases:
            r = await service.http.get(path, headers=headers)
            assert r.status_code == status, path
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == f"urn:ticker:problem:{suffix}"
        async with open_stream(service, "world", {"Origin": "https://news.example"}) as stream:
            assert stream.response.headers["access-control-allow-origin"] == "https://news.example"
            assert (await stream.next()).event == "snapshot"


class RawStream:
    """An SSE client on a raw socket with a tiny receive buffer, which reads only when told
    to: the slow consumer."""

    def __init__(self, port: int, channel: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /v1/channels/{channel}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        self.sock.setblocking(False)

    async def read_to_end(self, timeout: float = 20, complete: bool = True) -> bytes:
        """The body: chunked (the ASGI path, which ends it with the last chunk) or
        delimited by the end of the connection (``ticker serve``'s, see ticker.sseproto)."""
        loop = asyncio.get_running_loop()
        raw = bytearray()
        async with asyncio.timeout(timeout):
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                try:
                    chunk = await loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:  # dropped by the server
                    break
                if not chunk:
                    break
                raw += chunk
        self.sock.close()
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if b"transfer-encoding: chunked" in head.lower():
            return _dechunk(body, complete)
        assert b"connection: close" in head.lower() and b"content-length" not in head.lower()
        return body


def _dechunk(body: bytes, complete: bool) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        if not size_line and not complete:
            return bytes(out)
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        if len(body) < size + 2 and not complete:
            return bytes(out)
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


@contextlib.asynccontextmanager
async def _stalled_reader(
    settings: Settings, redis_client: aioredis.Redis, ws_impl: str, **overrides: Any
) -> AsyncIterator[tuple[Service, Stream, Any, RawStream, Any, list[str]]]:
    """A service with a fast SSE reader and a stalled one, after publishing until the hub
    closed the stalled one (outbox bound or ping_timeout):
    (service, fast, fast_conn, slow, slow_conn, published ids).

    Kernel send buffers are small (set on the listening socket, inherited by accepted
    ones) so that a stalled reader stalls the server's writes after kilobytes instead of
    megabytes. Bursts of 10 stay well under the bound of 50: only a stalled reader passes it.
    Under ``ticker serve`` the fan-out writes to the socket itself, whose unsent buffer
    counts towards ``outbox_max_bytes`` (as for a WebSocket): 64 KiB, so that the stalled
    reader passes it within the publish rate limit (1 MiB would take some 2,000 briefs).
    """
    sock = free_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    changed = settings.with_overrides(
        outbox_max_messages=50, outbox_max_bytes=65536, retention_max_events=5000, **overrides
    )
    async with run_service(changed, sock, ws_impl) as service:
        service.key = await KeyStore(redis_client).create("test", ["*"])
        hub = service.app.state.services.hub
        port = int(service.base.rsplit(":", 1)[1])
        async with open_stream(service, "world") as fast:
            assert (await fast.next()).event == "snapshot"
            (fast_conn,) = hub.connections
            slow = RawStream(port, "world")
            others: list[Any] = []
            for _ in range(500):  # until the slow one has subscribed (a real signal: the hub)
                others = [c for c in hub.connections if c is not fast_conn]
                if others and others[0].subscriptions:
                    break
                await asyncio.sleep(0.01)
            (slow_conn,) = others
            text = "x" * 480
            published: list[str] = []
            for _ in range(300):
                batch = await asyncio.gather(
                    *(service.publish("world", f"{text} {len(published) + i}") for i in range(10))
                )
                published += sorted(b["id"] for b in batch)
                await _has_seen(fast, published[-1])
                if slow_conn.closing is not None:
                    break
            else:
                raise AssertionError("the slow consumer was never closed")
            assert fast_conn.closing is None
            got = await fast.events(len(published))
            assert [e.id for e in got] == published
            try:
                yield service, fast, fast_conn, slow, slow_conn, published
            finally:
                slow.sock.close()


async def _has_seen(stream: Stream, cursor: str, timeout: float = RECV_TIMEOUT) -> None:
    """Wait (bounded) until a stream's reader has received the event at ``cursor``: the
    fast reader keeps up with each burst before the next, as a reader that is not stalled
    does, so that only the stalled one can pass the outbox bound however late the
    stream reader hands a burst to the hub on a loaded machine."""
    wanted = tuple(int(part) for part in cursor.split("-"))
    async with asyncio.timeout(timeout):
        while stream.last_id is None or tuple(
            int(part) for part in stream.last_id.split("-")
        ) < wanted:
            await asyncio.sleep(0.005)


async def test_slow_consumer_is_closed_with_4008_while_a_fast_one_gets_everything(
    settings: Settings, redis_client: aioredis.Redis, ws_impl: str
) -> None:
    async with _stalled_reader(settings, redis_client, ws_impl) as (
        service, _, _, slow, slow_conn, published,
    ):
        assert slow_conn.closing[0] == 4008
        # The slow client now reads: a prefix of the stream, in order, then the close.
        events, _ = parse_events((await slow.read_to_end()).decode().split("\n"))
        received = [e for e in events if isinstance(e, Event)]
        assert received[0].event == "snapshot"
        close = received[-1].json()
        assert close["type"] == "close" and close["code"] == 4008
        ids = [e.id for e in received[1:-1]]
        # (All of them, when the batch that passed the bound went out before the close.)
        assert ids == published[: len(ids)] and 0 < len(ids) <= len(published)

        # It resumes from its last id and gets exactly the rest, with what came since.
        for i in range(3):
            published.append((await service.publish("world", f"after the close {i}"))["id"])
        assert ids[-1] is not None
        async with open_stream(service, "world", {"Last-Event-ID": ids[-1]}) as again:
            assert (await again.next()).json()["recovered"] is True
            rest = await again.events(len(published) - len(ids))
            assert [e.id for e in rest] == published[len(ids) :]
            assert await again.nothing_within(0.2)


async def test_a_reader_stalled_past_ping_timeout_is_dropped_and_its_connection_freed(
    settings: Settings, redis_client: aioredis.Redis, ws_impl: str
) -> None:
    """The ASGI path drops a reader whose writes wait for ping_timeout; ``ticker serve``'s
    closes it at the bound (4008, the close event behind what the kernel holds) and
    drops its socket when it has not taken that within ping_timeout. Either way the
    reader gets a prefix of the stream and no close event."""
    async with _stalled_reader(settings, redis_client, ws_impl, ping_timeout=0.3) as (
        service, _, fast_conn, slow, slow_conn, published,
    ):
        hub = service.app.state.services.hub
        for _ in range(500):
            if slow_conn not in hub.connections:
                break
            await asyncio.sleep(0.01)
        assert hub.connections == {fast_conn}
        await asyncio.sleep(0.6)  # past ping_timeout: the server has given up on it
        # What it then reads is a prefix of the stream, and no close event: the server
        # dropped the socket without ending the response.
        raw = await slow.read_to_end(complete=False)
        events, _ = parse_events(raw.decode(errors="replace").split("\n"))
        ids = [e.id for e in events if isinstance(e, Event) and e.event == "brief"]
        assert ids == published[: len(ids)] and len(ids) < len(published)
        assert not any(isinstance(e, Event) and e.event == "close" for e in events)
