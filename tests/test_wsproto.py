"""ticker's own WebSocket connections (ticker.wsproto) on raw sockets: what RFC 6455 asks
of a server once the handshake is done, and what the hub relies on.

Every subscriber under ``ticker serve`` is a ``Subscriber``: its frames are parsed by
websockets' sans-I/O protocol and its life is two callbacks, so each way a connection
can end must reach the hub, and each frame a client may send must get its answer.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson
import pytest

from tests.conftest import RawClient, Service, hub_holds, until
from ticker.protocol import Close
from ticker.wsproto import Subscriber

SUBSCRIBE = orjson.dumps({"op": "subscribe", "channel": "world"})


async def _subscribed(service: Service, client: RawClient) -> Any:
    """The hub's connection for the only client, once its snapshot has arrived."""
    assert (await client.json())["type"] == "snapshot"
    await until(lambda: len(service.hub.connections) == 1, "the hub has no connection")
    return next(iter(service.hub.connections))


async def _closed_with(client: RawClient) -> tuple[int, str]:
    """The close frame's code and reason; the server then ends the TCP connection."""
    opcode, payload = await client.frame()
    assert opcode == 0x8, (opcode, payload)
    (code,) = struct.unpack("!H", payload[:2])
    with pytest.raises((EOFError, ConnectionResetError)):
        for _ in range(10):
            await client.frame()
    return code, payload[2:].decode()


async def test_subscribers_take_the_fast_path_and_the_hub_writes_to_them(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_json({"op": "subscribe", "channel": "world"})
        conn = await _subscribed(service, client)
        assert isinstance(conn.sink, Subscriber)
        brief = await service.publish("world", "one")
        message = await client.json()
        assert (message["type"], message["brief"]["id"]) == ("brief", brief["id"])
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/v1/ws?client=widget", "/v1/%77s"])
async def test_the_path_matches_as_routing_would(service: Service, path: str) -> None:
    client = await RawClient.connect(service.port, path)
    try:
        await client.send_json({"op": "subscribe", "channel": "world"})
        conn = await _subscribed(service, client)
        assert isinstance(conn.sink, Subscriber)
    finally:
        client.close()


async def test_frames_sent_behind_the_request_are_not_lost(service: Service) -> None:
    early = RawClient.encode(0x1, SUBSCRIBE) + RawClient.encode(0x1, b'{"op":"ping"}')
    client = await RawClient.connect(service.port, early=early)
    try:
        # The pong may overtake the snapshot (the channel opens first): both must come.
        assert sorted([(await client.json())["type"] for _ in range(2)]) == ["pong", "snapshot"]
    finally:
        client.close()


async def test_a_fragmented_message_is_one_message(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_raw(
            RawClient.encode(0x1, SUBSCRIBE[:10], fin=False)
            + RawClient.encode(0xA, b"unsolicited")  # a control frame may come in between
            + RawClient.encode(0x0, SUBSCRIBE[10:20], fin=False)
            + RawClient.encode(0x0, SUBSCRIBE[20:])
        )
        assert (await client.json())["type"] == "snapshot"
    finally:
        client.close()


async def test_a_binary_message_is_read_like_text(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_frame(0x2, SUBSCRIBE)
        assert (await client.json())["type"] == "snapshot"
    finally:
        client.close()


async def test_a_ping_gets_a_pong_with_its_payload(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_frame(0x9, b"are you there")
        assert await client.frame() == (0xA, b"are you there")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(RawClient.encode(0x1, b'{"op":"ping", "x":"\xff"}'), 1007, id="bad-utf8"),
        pytest.param(RawClient.encode(0x1, SUBSCRIBE, masked=False), 1002, id="unmasked"),
        pytest.param(RawClient.encode(0x0, SUBSCRIBE), 1002, id="stray-continuation"),
        pytest.param(RawClient.encode(0x9, b"x", fin=False), 1002, id="fragmented-ping"),
        pytest.param(RawClient.encode(0x3, b""), 1002, id="reserved-opcode"),
        pytest.param(RawClient.encode(0x1, SUBSCRIBE, rsv=4), 1002, id="reserved-bit"),
        pytest.param(RawClient.encode(0x9, b"x" * 126), 1002, id="long-control-frame"),
        pytest.param(
            RawClient.encode(0x1, SUBSCRIBE[:5], fin=False) + RawClient.encode(0x1, SUBSCRIBE),
            1002, id="new-message-inside-a-fragmented-one",
        ),
        pytest.param(RawClient.encode(0x8, b"\x03"), 1002, id="one-byte-close"),
        pytest.param(RawClient.encode(0x8, struct.pack("!H", 1005)), 1002, id="close-code-1005"),
        pytest.param(RawClient.encode(0x8, struct.pack("!H", 999)), 1002, id="close-code-999"),
        pytest.param(
            RawClient.encode(0x8, struct.pack("!H", 1000) + b"\xff"), 1007, id="close-reason-utf8",
        ),
        # The size limit (ws_max_message_bytes, 4 KiB by default) holds across fragments.
        pytest.param(
            RawClient.encode(0x1, b" " * 3000, fin=False)
            + RawClient.encode(0x0, b" " * 3000), 1009, id="fragments-over-the-limit",
        ),
    ],
)
async def test_a_broken_frame_closes_with_the_rfc_code_and_the_hub_lets_go(
    service: Service, frames: bytes, code: int
) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_json({"op": "subscribe", "channel": "world"})
        conn = await _subscribed(service, client)
        await client.send_raw(frames)
        assert (await _closed_with(client))[0] == code
        await until(lambda: not hub_holds(service.hub, conn), "the hub still holds it")
        # The server ended its side and drops what still comes (a lingering close), so
        # that the client reads the close frame; once the client ends its side, it is gone.
        client.close()
        await until(lambda: conn.sink not in service.server.server_state.connections,
                    "the server still holds the socket")
    finally:
        client.close()


async def test_a_frame_too_large_is_refused_from_its_header(service: Service) -> None:
    """A client that announces a 1 GB frame is closed with 1009 at once, without the
    server waiting for (or buffering) the payload."""
    client = await RawClient.connect(service.port)
    try:
        await client.send_raw(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 30) + b"mask")
        assert (await _closed_with(client))[0] == Close.MESSAGE_TOO_BIG
    finally:
        client.close()


async def test_frames_arriving_a_byte_at_a_time_are_read_whole(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        data = RawClient.encode(0x1, SUBSCRIBE) + RawClient.encode(0x9, b"hi")
        for i in range(len(data)):
            await client.send_raw(data[i:i + 1])
            await asyncio.sleep(0)
        # The pong may overtake the snapshot (the channel opens first): both must come.
        frames = [await client.frame(answer_pings=False) for _ in range(2)]
        assert (0xA, b"hi") in frames
        assert any(op == 0x1 and orjson.loads(p)["type"] == "snapshot" for op, p in frames)
    finally:
        client.close()


async def test_an_empty_close_frame_is_echoed(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_frame(0x8, b"")
        assert await client.frame() == (0x8, b"")
        with pytest.raises((EOFError, ConnectionResetError)):
            await client.frame()
    finally:
        client.close()


async def test_a_flood_of_pings_from_a_client_that_reads_nothing_does_not_grow_the_buffer(
    serve_with: Any,
) -> None:
    """Pongs are not answered while the socket's unsent buffer is past its mark (half of
    ``outbox_max_bytes``): the server's memory stays bounded whatever the client sends.
    (The message allowance, which pings spend too, is lifted to isolate this guard.)"""
    async with serve_with(
        outbox_max_bytes=16_384, ws_message_rate=1e9, ws_message_burst=10**9
    ) as service:
        client = await RawClient.connect(service.port)
        try:
            await client.send_json({"op": "subscribe", "channel": "world"})
            conn = await _subscribed(service, client)
            sink, high = conn.sink, 16_384 // 2
            pong = 2 + 125
            chunk = RawClient.encode(0x9, b"p" * 125) * 500
            largest, paused = 0, False
            for _ in range(200):  # at most 100,000 pings, 13 MB: past any kernel buffer
                await client.send_raw(chunk)
                await asyncio.sleep(0.001)
                largest = max(largest, sink.transport.get_write_buffer_size())
                paused = paused or sink.paused
                if paused and largest > high:
                    break
            assert paused, "the kernel took every pong: the buffer never reached its mark"
            for _ in range(20):  # the pings still in flight
                await asyncio.sleep(0.01)
                largest = max(largest, sink.transport.get_write_buffer_size())
            assert largest <= high + pong, (largest, high)
        finally:
            client.close()


async def test_a_message_of_too_many_fragments_is_refused_with_1009(serve_with: Any) -> None:
    """Empty continuation frames add no bytes but cost memory and time: the fragment
    count is limited as well as the size."""
    async with serve_with(ws_max_fragments=8) as service:
        client = await RawClient.connect(service.port)
        try:
            frames = [RawClient.encode(0x1, b"{", fin=False)]
            frames += [RawClient.encode(0x0, b"", fin=False) for _ in range(6)]
            frames.append(RawClient.encode(0x0, b"}"))  # 8 frames: allowed
            await client.send_raw(b"".join(frames))
            assert (await client.json())["code"] == "unknown_op"  # "{}" has no op
            frames = [RawClient.encode(0x1, b"", fin=False)]
            frames += [RawClient.encode(0x0, b"", fin=False) for _ in range(1000)]
            await client.send_raw(b"".join(frames))
            code, reason = await _closed_with(client)
            assert code == 1009 and "too many fragments" in reason and "8" in reason
        finally:
            client.close()


async def test_a_client_past_its_message_allowance_is_closed_with_1008(serve_with: Any) -> None:
    """Messages (and pings) are spent from an allowance: a burst, refilled at a rate.
    A client within it is served; one that floods is closed with a reason that says the
    limit, and leaves the hub."""
    async with serve_with(ws_message_rate=2.0, ws_message_burst=5) as service:
        client = await RawClient.connect(service.port)
        try:
            await client.send_json(*[{"op": "ping"}] * 5)
            assert [await client.json() for _ in range(5)] == [{"type": "pong"}] * 5
            await asyncio.sleep(0.6)  # one more message's worth refilled
            await client.send_json({"op": "subscribe", "channel": "world"})
            conn = await _subscribed(service, client)
            await client.send_json(*[{"op": "ping"}] * 20)
            messages, code = await client.until_close()
            assert code == 1008 and messages.count({"type": "pong"}) < 5
            await until(lambda: not hub_holds(service.hub, conn), "the hub still holds it")
        finally:
            client.close()


async def test_a_client_close_is_echoed_and_the_socket_ends(service: Service) -> None:
    client = await RawClient.connect(service.port)
    try:
        await client.send_json({"op": "subscribe", "channel": "world"})
        conn = await _subscribed(service, client)
        await client.send_frame(0x8, struct.pack("!H", 1001) + b"bye")
        assert await _closed_with(client) == (1001, "bye")
        await until(lambda: not hub_holds(service.hub, conn), "the hub still holds it")
    finally:
        client.close()


async def test_a_dropped_socket_reaches_the_hub(service: Service) -> None:
    client = await RawClient.connect(service.port)
    await client.send_json({"op": "subscribe", "channel": "world"})
    conn = await _subscribed(service, client)
    client.close()
    await until(lambda: not hub_holds(service.hub, conn), "the hub still holds it")
    await until(lambda: conn.sink not in service.server.server_state.connections,
                "uvicorn still counts it")


async def test_keepalive_pings_keep_an_answering_client_and_drop_a_silent_one(
    serve_with: Any,
) -> None:
    async with serve_with(ping_interval=0.2, ping_timeout=0.5) as service:
        answering = await RawClient.connect(service.port)
        silent = await RawClient.connect(service.port)
        try:
            # The answering client sees several pings (answered by RawClient.frame on the
            # way) and is still served after them.
            for _ in range(3):
                opcode, payload = await answering.frame(answer_pings=False)
                assert opcode == 0x9 and len(payload) == 4
                await answering.send_frame(0xA, payload)
            # The silent one gets one ping, then, ping_timeout later, a close and EOF.
            assert (await silent.frame(answer_pings=False))[0] == 0x9
            code, reason = await _closed_with(silent)
            assert (code, reason) == (Close.INTERNAL_ERROR, "keepalive ping timeout")
            await answering.send_json({"op": "subscribe", "channel": "world"})
            assert (await answering.json())["type"] == "snapshot"
            await until(lambda: len(service.hub.connections) == 1, "the silent one is held")
        finally:
            answering.close()
            silent.close()
