"""The gate (ticker.gate, ticker.admission) on real sockets: limits on request heads, the
time a client may take, and connections per client address and per process, with the
answers each gets.

Clients connect from several loopback addresses (all of 127.0.0.0/8 is loopback on
Linux): 127.0.0.1 is a trusted proxy by default (``forwarded_allow_ips``), the others
are not.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

import orjson
import pytest
import websockets

from tests.conftest import RECV_TIMEOUT, RawClient, until
from ticker.admission import Admission, Verdict, address_key, forwarded_for
from ticker.wsproto import Subscriber

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str = "127.0.0.2") -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: status, headers (lowercase names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server ends the connection (EOF or reset) within RECV_TIMEOUT."""
    try:
        rest = await asyncio.wait_for(reader.read(1 << 20), RECV_TIMEOUT)
        while rest:
            rest = await asyncio.wait_for(reader.read(1 << 20), RECV_TIMEOUT)
    except ConnectionResetError:
        pass
    return True


def upgrade_head(port: int, extra: str = "", path: str = "/v1/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: ticker.v1\r\n{extra}\r\n"
    ).encode()


async def ws_close(reader: asyncio.StreamReader) -> tuple[int, str]:
    """After a 101, the server's close frame: (code, reason)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    first, second = await asyncio.wait_for(reader.readexactly(2), RECV_TIMEOUT)
    assert first & 0x0F == 0x8, "expected a close frame"
    payload = await reader.readexactly(second & 0x7F)
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def problem(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(body)
    assert document["type"].startswith("urn:ticker:problem:")
    return document


# Request heads


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "later-request"])
async def test_a_head_over_the_size_limit_gets_431_and_the_connection_closes(
    serve_with: Any, keep_alive: bool
) -> None:
    async with serve_with(max_head_bytes=4096) as service:
        reader, writer = await connect(service.port)
        if keep_alive:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(100):  # header lines without end: 100 x 1 KB, far past the limit
            writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await asyncio.sleep(0)
        status, headers, body = await response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert "4096 bytes" in problem(body)["detail"]
        assert await closed(reader)
        writer.close()


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "later-request"])
async def test_too_many_header_fields_get_431(serve_with: Any, keep_alive: bool) -> None:
    async with serve_with(max_header_count=20) as service:
        reader, writer = await connect(service.port)
        if keep_alive:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(reader))[0] == 200
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(25))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        status, _, body = await response(reader)
        assert status == 431 and "more than 20 header fields" in problem(body)["detail"]
        assert await closed(reader)
        writer.close()


async def test_a_head_at_the_limits_is_served(serve_with: Any) -> None:
    async with serve_with(max_head_bytes=4096, max_header_count=20) as service:
        reader, writer = await connect(service.port)
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(19))  # and Host: 20
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        assert (await response(reader))[0] == 200
        big = b"X-Big: " + b"a" * (4096 - 200) + b"\r\n"
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        assert (await response(reader))[0] == 200
        writer.close()


async def test_a_subscriber_handshake_over_the_limit_gets_431(serve_with: Any) -> None:
    async with serve_with(max_head_bytes=2048) as service:
        reader, writer = await connect(service.port)
        writer.write(upgrade_head(service.port, "X-Big: " + "a" * 3000 + "\r\n"))
        status, _, _ = await response(reader)
        assert status == 431
        writer.close()


async def test_bytes_that_are_not_http_get_400_at_once(service: Any) -> None:
    reader, writer = await connect(service.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello's start
    status, _, _ = await response(reader)
    assert status == 400
    writer.close()


# Time


async def test_a_connection_that_sends_nothing_is_closed_after_idle_timeout(serve_with: Any) -> None:
    async with serve_with(idle_timeout=0.3) as service:
        reader, writer = await connect(service.port)
        assert await reader.read(100) == b""  # closed, without an answer
        writer.close()


async def test_a_dripping_head_gets_408_after_head_timeout(serve_with: Any) -> None:
    async with serve_with(head_timeout=0.5, idle_timeout=5) as service:
        for request in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", upgrade_head(service.port)[:-2]):
            reader, writer = await connect(service.port)
            status = None
            for byte in request:  # one byte every 20 ms: the head takes longer than 0.5 s
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)
                if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
                    break
            status, _, body = await response(reader)
            assert status == 408 and "head did not arrive within 0.5 s" in problem(body)["detail"]
            writer.close()


async def test_a_later_dripping_head_gets_408_too(serve_with: Any) -> None:
    async with serve_with(head_timeout=0.5, keepalive_timeout=5) as service:
        reader, writer = await connect(service.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        assert (await response(reader))[0] == 200
        status, _, _ = await response(reader)
        assert status == 408
        assert await closed(reader)
        writer.close()


async def test_a_dripping_body_gets_408_after_body_timeout(serve_with: Any) -> None:
    async with serve_with(body_timeout=0.5) as service:
        reader, writer = await connect(service.port)
        writer.write(
            b"POST /v1/channels/world/briefs HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + service.key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"text\": "
        )
        status, _, body = await response(reader)
        assert status == 408 and "body did not arrive within 0.5 s" in problem(body)["detail"]
        assert await closed(reader)
        writer.close()
        r = await service.http.get("/v1/channels/world/briefs")
        assert r.json()["briefs"] == []  # nothing half-published


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(serve_with: Any) -> None:
    async with serve_with(keepalive_timeout=0.3) as service:
        reader, writer = await connect(service.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await response(reader))[0] == 200
        assert await reader.read(100) == b""
        writer.close()


# Connections per address and per process


async def test_connections_past_the_per_address_limit_are_refused_with_reasons(serve_with: Any) -> None:
    async with serve_with(max_connections_per_address=3) as service:
        held = [await connect(service.port, "127.0.0.2") for _ in range(3)]
        await until(lambda: service.app.gate.admission.by_address.get("127.0.0.2") == 3,
                    "the three connections are not counted")
        reader, writer = await connect(service.port, "127.0.0.2")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 429 and headers["retry-after"].isdigit()
        assert "limit 3" in problem(body)["detail"]
        writer.close()
        reader, writer = await connect(service.port, "127.0.0.2")
        writer.write(upgrade_head(service.port))
        code, reason = await ws_close(reader)
        assert code == 1013 and "too many connections from your address (limit 3)" in reason
        writer.close()
        # Another address is served meanwhile.
        reader, writer = await connect(service.port, "127.0.0.3")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await response(reader))[0] == 200
        writer.close()
        # The held ones end: the address may connect again.
        for _, w in held:
            w.close()
        await until(lambda: "127.0.0.2" not in service.app.gate.admission.by_address,
                    "the address is still counted")
        reader, writer = await connect(service.port, "127.0.0.2")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await response(reader))[0] == 200
        writer.close()
        assert service.app.gate.refused == {"crowded": 2}


async def test_a_full_process_refuses_with_503_and_1013(serve_with: Any) -> None:
    async with serve_with(max_connections=2) as service:
        held = [await connect(service.port, f"127.0.0.{i}") for i in (2, 3)]
        await until(lambda: service.app.gate.admission.open == 2, "not counted")
        reader, writer = await connect(service.port, "127.0.0.4")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 503 and problem(body)["type"] == "urn:ticker:problem:server-full"
        assert headers["retry-after"].isdigit()
        writer.close()
        reader, writer = await connect(service.port, "127.0.0.4")
        writer.write(upgrade_head(service.port))
        assert (await ws_close(reader))[0] == 1013
        writer.close()
        for _, w in held:
            w.close()


async def test_subscribers_through_a_trusted_proxy_count_against_their_forwarded_address(
    serve_with: Any,
) -> None:
    """From 127.0.0.1 (trusted): the address in X-Forwarded-For is limited, not the
    proxy's. From 127.0.0.5 (not trusted): X-Forwarded-For is ignored."""
    async with serve_with(max_connections_per_address=2) as service:
        port = service.port

        async def subscriber(source: str, forwarded: str) -> websockets.ClientConnection:
            return await websockets.connect(
                f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["ticker.v1"],  # type: ignore[list-item]
                additional_headers={"X-Forwarded-For": forwarded}, local_addr=(source, 0),
            )

        behind_proxy = [await subscriber("127.0.0.1", "203.0.113.7") for _ in range(2)]
        third = await subscriber("127.0.0.1", "203.0.113.7")
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(third.recv(), RECV_TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        other = await subscriber("127.0.0.1", "198.51.100.1, 203.0.113.9")  # another client
        await other.send('{"op":"ping"}')
        assert orjson.loads(await other.recv()) == {"type": "pong"}
        # Spoofing from an untrusted peer changes nothing: it counts as 127.0.0.5.
        spoofers = [await subscriber("127.0.0.5", f"192.0.2.{i}") for i in range(2)]
        third = await subscriber("127.0.0.5", "192.0.2.99")
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(third.recv(), RECV_TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        by_address = service.app.gate.admission.by_address
        assert by_address["203.0.113.7"] == 2 and by_address["127.0.0.5"] == 2
        assert "192.0.2.0" not in by_address and "127.0.0.1" not in by_address
        for ws in [*behind_proxy, other, *spoofers]:
            await ws.close()
        await until(lambda: not service.app.gate.admission.by_address, "addresses still counted")


# The counting itself


def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("not an address") == "not an address"


def test_forwarded_header_nodes() -> None:
    assert forwarded_for(['for=192.0.2.60;proto=http;by=203.0.113.43',
                          'For="[2001:db8:cafe::17]:4711", for=198.51.100.2:80']) == [
        "192.0.2.60", "2001:db8:cafe::17", "198.51.100.2"]
    assert forwarded_for(["proto=https"]) == []


def test_past_the_refusal_slots_connections_are_dropped_and_counts_return() -> None:
    admission = Admission(2, 1, ["127.0.0.1"], refusal_slots=1)
    first = admission.arrive("192.0.2.1")
    assert first == (Verdict.ADMIT, "192.0.2.1")
    assert admission.arrive("192.0.2.1") == (Verdict.CROWDED, None)
    assert admission.arrive("192.0.2.1") == (Verdict.DROP, None)  # one refusal in flight
    proxy = admission.arrive("127.0.0.1")
    assert proxy == (Verdict.ADMIT, None)  # a trusted proxy counts for the process only
    assert admission.arrive("192.0.2.2")[0] is Verdict.DROP  # full, and no refusal slot
    admission.leave(Verdict.CROWDED, None)
    assert admission.arrive("192.0.2.2") == (Verdict.BUSY, None)
    admission.leave(Verdict.BUSY, None)
    admission.leave(*first)
    admission.leave(*proxy)
    assert (admission.open, admission.refusing, admission.by_address) == (0, 0, {})


async def test_metrics_count_what_the_gate_refused(serve_with: Any) -> None:
    async with serve_with(max_connections_per_address=1, idle_timeout=0.2) as service:
        held = await connect(service.port, "127.0.0.2")
        reader, writer = await connect(service.port, "127.0.0.2")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await response(reader))[0] == 429
        assert await held[0].read(10) == b""  # closed by the idle timeout
        text = (await service.http.get("/metrics")).text
        assert 'ticker_gate_refused_total{reason="crowded"} 1.0' in text
        assert 'ticker_gate_limit_total{limit="idle_timeout"} 1.0' in text
        assert "ticker_gate_connections " in text
        writer.close()
        held[1].close()


async def test_every_way_a_connection_ends_gives_its_admission_back(serve_with: Any) -> None:
    """Plain requests, subscribers, WebSockets that uvicorn serves (another path), refusals
    and limit answers: once all are closed, the process counts nothing."""
    async with serve_with(max_connections_per_address=4, max_head_bytes=2048) as service:
        admission = service.app.gate.admission
        ws = await service.subscriber()
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"ws://127.0.0.1:{service.port}/v1/other")
        reader, writer = await connect(service.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
        assert (await response(reader))[0] == 431
        held = [await connect(service.port, "127.0.0.3") for _ in range(4)]
        r2, w2 = await connect(service.port, "127.0.0.3")
        w2.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await response(r2))[0] == 429
        await ws.close()
        for _, w in [*held, (reader, writer), (r2, w2)]:
            w.close()
        await until(lambda: (admission.open, admission.refusing, admission.by_address) == (0, 0, {}),
                    "connections still counted")


@pytest.mark.parametrize("ws_impl", ["ticker", "asgi"])
async def test_the_message_allowance_holds_on_either_websocket_path(serve_with: Any) -> None:
    """Under ``ticker serve`` (the Subscriber) and on any ASGI server (the endpoint): a
    flood of messages ends with close 1008 and the limit in the reason."""
    async with serve_with(ws_message_rate=1.0, ws_message_burst=10) as service:
        sub = await service.subscriber()
        for i in range(30):
            try:
                await sub.send({"op": "subscribe", "channel": f"junk-{i}"})
            except websockets.ConnectionClosed:
                break
        with pytest.raises(websockets.ConnectionClosed) as info:
            for _ in range(100):
                await sub.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert "at most 1 per second, 10 at once" in info.value.rcvd.reason


async def test_refused_websockets_do_not_wait_in_the_keepalive_schedule(serve_with: Any) -> None:
    """Each refusal is an accepted WebSocket closed at once; a flood of them must not stay
    queued for pings (a whole ping interval) after they ended."""
    async with serve_with(max_connections_per_address=1) as service:
        held = await connect(service.port, "127.0.0.2")
        for _ in range(6):
            batch = [await connect(service.port, "127.0.0.2") for _ in range(100)]
            for _, writer in batch:
                writer.write(upgrade_head(service.port))
            for reader, writer in batch:
                assert (await ws_close(reader))[0] == 1013
                writer.close()
        shared = service.app.gate.shared
        await until(lambda: shared.subscribers == 0, "refusals still open")
        assert len(shared.due) + len(shared.awaiting) <= 300, "ended ones still queued"
        held[1].close()


async def test_a_subscriber_on_a_kept_alive_proxy_connection_takes_the_fast_path_and_its_client_counts(
    serve_with: Any,
) -> None:
    """A proxy (nginx with upstream keepalive) sends upgrades on connections that served
    requests before: the subscriber takes the same way as on a first request, counted
    against the client the proxy names, and the frames right behind its head are kept."""
    async with serve_with(max_connections_per_address=1) as service:
        streams = []
        for _ in range(2):
            reader, writer = await connect(service.port, "127.0.0.1")  # the trusted proxy
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(reader))[0] == 200
            streams.append((reader, writer))
        (reader, writer), (reader2, writer2) = streams
        ping = RawClient.encode(0x1, b'{"op":"ping"}')
        writer.write(upgrade_head(service.port, "X-Forwarded-For: 203.0.113.7\r\n") + ping)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        first, second = await asyncio.wait_for(reader.readexactly(2), RECV_TIMEOUT)
        assert first & 0x0F == 0x1 and orjson.loads(await reader.readexactly(second)) == {"type": "pong"}
        await until(lambda: any(isinstance(c.sink, Subscriber) for c in service.hub.connections),
                    "not on the fast path")
        assert service.app.gate.admission.by_address == {"203.0.113.7": 1}
        writer2.write(upgrade_head(service.port, "X-Forwarded-For: 203.0.113.7\r\n"))
        code, reason = await ws_close(reader2)
        assert code == 1013 and "limit 1" in reason
        for w in (writer, writer2):
            w.close()
        await until(lambda: not service.app.gate.admission.by_address, "the client still counted")
