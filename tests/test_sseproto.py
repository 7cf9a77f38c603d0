"""Event streams on ``ticker serve``'s own way in (ticker.sseproto), on real sockets.

What tests/test_sse.py checks on both paths (the messages, resume, the slow consumer,
shutdown) is not repeated here; these tests check what only the fast path does, and
each fails if a stream is served by uvicorn and Starlette instead: the response is
delimited by the end of the connection (``connection: close``, no chunked coding), the
hub's connection has the stream as its sink, and no task is made per stream.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from tests.conftest import RECV_TIMEOUT, Service, free_socket, run_service, until
from tests.test_gate import closed, connect, problem, response
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.sseproto import MAX_IGNORED, EventSubscriber, parse_events_request

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def get(channel: str = "world", extra: str = "", target: str = "") -> bytes:
    target = target or f"/v1/channels/{channel}/events"
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def stream_head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK", lines[0]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}


async def events(reader: asyncio.StreamReader, count: int) -> list[tuple[str, str | None, Any]]:
    """The next ``count`` events: (event, id, data as JSON); comments are skipped."""
    out: list[tuple[str, str | None, Any]] = []
    while len(out) < count:
        block = await asyncio.wait_for(reader.readuntil(b"\n\n"), RECV_TIMEOUT)
        fields = dict(line.split(": ", 1) for line in block.decode().strip("\n").split("\n")
                      if not line.startswith(":") and ": " in line)
        if "data" in fields:
            out.append((fields.get("event", "message"), fields.get("id"), orjson.loads(fields["data"])))
    return out


async def open_stream(service: Service, extra: str = "", source: str = "127.0.0.2") -> Stream:
    reader, writer = await connect(service.port, source)
    writer.write(get(extra=extra))
    await stream_head(reader)
    return reader, writer


async def metric(service: Service, name: str) -> float:
    text = (await service.http.get("/metrics")).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


def sinks(service: Service) -> list[Any]:
    return [conn.sink for conn in service.hub.connections]


def test_the_parser_takes_only_a_plain_get_of_an_event_stream() -> None:
    """A HEAD, a body, HTTP/1.0, an upgrade, another path: left to uvicorn and the app."""
    taken = parse_events_request(get(extra="Origin: https://a.example \r\nLast-Event-ID: 5-0\r\n",
                                     target="/v1/channels/w%6Frld/events?since=1-0"))
    assert taken is not None
    assert (taken.channel, taken.query, taken.origin, taken.last_event_id) == (
        "world", b"since=1-0", "https://a.example", "5-0")
    for head in (
        b"HEAD /v1/channels/world/events HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/channels/world/events HTTP/1.0\r\nHost: x\r\n\r\n",
        get(extra="Content-Length: 3\r\n"),
        get(extra="Transfer-Encoding: chunked\r\n"),
        get(extra="Upgrade: websocket\r\nConnection: Upgrade\r\n"),
        get(target="/v1/channels/world/events/"),
        get(target="/v1/channels/a/b/events"),
        get(target="/v1/channels//events"),
        b"GET /v1/channels/world/events HTTP/1.1\r\nHost: x\r\n",  # not a whole head
    ):
        assert parse_events_request(head) is None, head


async def test_a_stream_under_ticker_serve_takes_the_fast_path(service: Service) -> None:
    """The marks of the fast path: the body ends with the connection (no chunked coding),
    the hub writes to the socket itself (its sink), and no task stays per stream."""
    await service.publish("world", "before")
    reader, writer = await connect(service.port)
    writer.write(get(extra="Origin: https://news.example\r\n"))
    headers = await stream_head(reader)
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["connection"] == "close"
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert headers["access-control-allow-origin"] == "*" and headers["vary"] == "Origin"
    assert await asyncio.wait_for(reader.readuntil(b"\n\n"), RECV_TIMEOUT) == b"retry: 3000\n\n"
    [(kind, _, snapshot)] = await events(reader, 1)
    assert kind == "snapshot" and snapshot["briefs"][0]["text"] == "before"
    assert [type(s) for s in sinks(service)] == [EventSubscriber]

    tasks = len(asyncio.all_tasks())
    more = [await open_stream(service) for _ in range(20)]
    for r, _ in more:
        assert (await events(r, 1))[0][0] == "snapshot"
    assert len(service.hub.connections) == 21
    assert len(asyncio.all_tasks()) == tasks  # the ASGI path has four per stream
    brief = await service.publish("world", "live")
    for r, _ in [(reader, writer), *more]:
        [(kind, cursor, message)] = await events(r, 1)
        assert kind == "brief" and cursor == brief["id"] and message["brief"] == brief
    for _, w in [(reader, writer), *more]:
        w.close()


async def test_last_event_id_resumes_exactly_on_the_fast_path(service: Service) -> None:
    first = await service.publish("world", "seen")
    missed = [await service.publish("world", f"missed {i}") for i in range(5)]
    reader, writer = await open_stream(service, f"Last-Event-ID: {first['id']}\r\n")
    got = await events(reader, 6)
    assert got[0][0] == "subscribed" and got[0][2]["recovered"] is True
    assert [(kind, cursor) for kind, cursor, _ in got[1:]] == [("brief", b["id"]) for b in missed]
    live = await service.publish("world", "live")
    assert (await events(reader, 1))[0][1] == live["id"]
    assert sinks(service) and all(isinstance(s, EventSubscriber) for s in sinks(service))
    writer.close()


async def test_a_client_that_goes_away_leaves_the_hub_and_the_counts(service: Service) -> None:
    hub, gate = service.hub, service.app.gate
    streams = [await open_stream(service) for _ in range(5)]
    for r, _ in streams:
        await events(r, 1)
    assert hub.readers() == {"world": 5}
    assert await metric(service, "ticker_connections") == 5
    delivered = await metric(service, "ticker_events_delivered_total")
    await service.publish("world", "counted")
    for r, _ in streams:
        await events(r, 1)
    assert await metric(service, "ticker_events_delivered_total") == delivered + 5
    for _, w in streams:
        w.close()
    await until(lambda: not hub.connections and not hub.channels, "the streams are still in the hub")
    assert hub.readers() == {}
    await until(lambda: "127.0.0.2" not in gate.admission.by_address, "the address is still counted")
    assert gate.streams is not None and gate.streams.subscribers == 0


async def test_the_heartbeat_comes_within_sse_heartbeat(serve_with: Any) -> None:
    async with serve_with(sse_heartbeat=0.3) as service:
        reader, writer = await open_stream(service)
        await asyncio.wait_for(reader.readuntil(b"\n\n"), RECV_TIMEOUT)  # retry:
        assert (await events(reader, 1))[0][0] == "snapshot"
        started = time.monotonic()
        arrivals = []
        for _ in range(3):
            assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 2) == b": ping\n\n"
            arrivals.append(time.monotonic() - started)
        # One schedule for every stream, ticking every quarter of the interval: a ping
        # may come up to a tick late, never early by much.
        gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False)]
        assert all(g < 0.3 * 1.5 for g in gaps), gaps
        assert arrivals[-1] > 0.3 * 2, arrivals
        writer.close()


async def test_a_reader_that_stops_reading_gets_4008_behind_what_it_has(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Closed at the bound like a WebSocket: a prefix of the stream, then the close event.
    Small kernel buffers on both ends, so that they fill after kilobytes."""
    listener = free_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    async with run_service(settings.with_overrides(outbox_max_bytes=16384), listener) as service:
        service.key = await KeyStore(redis_client).create("test", ["*"])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", service.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(get())
        await stream_head(reader)
        assert (await events(reader, 1))[0][0] == "snapshot"
        (conn,) = service.hub.connections
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # it stops reading: the buffers fill
        published = []
        for i in range(300):
            published.append((await service.publish("world", f"{'x' * 480} {i}"))["id"])
            if conn.closing is not None:
                break
        assert conn.closing is not None and conn.closing[0] == 4008
        await until(lambda: conn not in service.hub.connections, "still in the hub")
        after = await service.publish("world", "after the close")  # never sent to it
        transport.resume_reading()
        got = ["snapshot"]
        while True:
            [(kind, cursor, data)] = await events(reader, 1)
            got.append(kind)
            if kind == "close":
                assert data["code"] == 4008
                break
            if kind == "brief":
                assert cursor == published[got.count("brief") - 1]
        assert 0 < got.count("brief") <= len(published)
        assert after["id"] not in published
        assert await closed(reader)
        writer.close()


async def test_shutdown_ends_every_stream_with_a_1012_close_event(serve_with: Any) -> None:
    async with serve_with() as service:
        streams = [await open_stream(service) for _ in range(3)]
        for r, _ in streams:
            await events(r, 1)
        stopping = asyncio.create_task(service.stop())
        for r, _ in streams:
            [(kind, _, data)] = await events(r, 1)
            assert (kind, data["code"]) == ("close", 1012)
            assert await closed(r)
        await asyncio.wait_for(stopping, 10)
        for _, w in streams:
            w.close()


async def test_refusals_on_the_fast_path_are_problem_details_and_close(serve_with: Any) -> None:
    """Answered by the gate's stream (``connection: close``), not the app (keep-alive)."""
    async with serve_with(allowed_origins=("https://news.example",)) as service:
        cases = [
            (get("Bad_Name"), 400, "bad-channel"),
            (get(extra="Last-Event-ID: yesterday\r\n"), 400, "bad-cursor"),
            (get(target="/v1/channels/world/events?since=1-2-3"), 400, "bad-cursor"),
            (get(target="/v1/channels/world/events?epoch=" + "e" * 65), 400, "bad-cursor"),
            (get(extra="Origin: https://evil.example\r\n"), 403, "origin-not-allowed"),
        ]
        for head, status, suffix in cases:
            reader, writer = await connect(service.port)
            writer.write(head)
            got, headers, body = await response(reader)
            assert (got, problem(body)["type"]) == (status, f"urn:ticker:problem:{suffix}"), head
            assert headers["connection"] == "close" and headers["content-type"] == "application/problem+json"
            assert await closed(reader)
            writer.close()
        assert not service.hub.connections
        await until(lambda: not service.app.gate.admission.by_address, "refusals still counted")


async def test_streams_count_against_the_per_address_limit(serve_with: Any) -> None:
    async with serve_with(max_connections_per_address=2) as service:
        held = [await open_stream(service) for _ in range(2)]
        reader, writer = await connect(service.port)
        writer.write(get())
        status, headers, body = await response(reader)
        assert status == 429 and headers["retry-after"].isdigit()
        assert problem(body)["type"] == "urn:ticker:problem:too-many-connections"
        writer.close()
        # Through a trusted proxy (127.0.0.1), the forwarded client is counted and refused.
        behind = [await open_stream(service, "X-Forwarded-For: 203.0.113.7\r\n", "127.0.0.1")
                  for _ in range(2)]
        reader, writer = await connect(service.port, "127.0.0.1")
        writer.write(get(extra="X-Forwarded-For: 203.0.113.7\r\n"))
        status, headers, body = await response(reader)
        assert status == 429 and "limit 2" in problem(body)["detail"]
        assert await closed(reader)
        writer.close()
        assert service.app.gate.refused == {"crowded": 2}
        assert service.app.gate.admission.by_address["203.0.113.7"] == 2
        for _, w in [*held, *behind]:
            w.close()
        await until(lambda: not service.app.gate.admission.by_address, "addresses still counted")


async def test_bytes_after_the_request_are_dropped_then_end_the_stream(service: Service) -> None:
    reader, writer = await open_stream(service)
    await events(reader, 1)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # never answered: the stream is the last
    brief = await service.publish("world", "still streaming")
    assert (await events(reader, 1))[0][1] == brief["id"]
    writer.write(b"x" * (MAX_IGNORED + 1))
    assert await closed(reader)
    await until(lambda: not service.hub.connections, "the stream is still in the hub")
    writer.close()


async def test_a_head_request_goes_to_the_app(service: Service) -> None:
    r = await service.http.head("/v1/channels/world/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers.get("connection") != "close"
    assert not service.hub.connections
