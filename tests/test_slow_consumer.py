"""A subscriber that stops reading is closed with 4008; everyone else gets everything.

The slow client is a raw TCP socket that does the WebSocket handshake by hand with a
small receive buffer, so that the server really backs up once it stops reading. No step
waits for wall-clock time: the test publishes until the server has closed the slow
connection (bounded), and reads what each client has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.conftest import BIG_FIELDS, BIG_TEXT, RawClient, Service, hub_holds
from ticker.hub import Hub
from ticker.protocol import Close


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    """Both ways frames leave: ticker's own protocol's sink, and plain ASGI sends."""
    return str(request.param)

OUTBOX = 20
MAX_PUBLISHES = 3000  # far more than the kernel and transport buffers can hold
BIG, TEXT = BIG_FIELDS, BIG_TEXT  # near the largest allowed (tests/conftest.py)


@pytest.fixture
async def service(serve_with: Any) -> AsyncIterator[Service]:
    async with serve_with(outbox_max_messages=OUTBOX, retention_max_events=10_000) as svc:
        yield svc


async def test_a_client_that_stops_reading_is_closed_with_4008_while_a_fast_one_gets_every_brief(
    service: Service,
) -> None:
    hub: Hub = service.app.state.services.hub
    port = int(service.base.rsplit(":", 1)[1])

    slow = await RawClient.connect(port)
    try:
        await slow.send_json({"op": "subscribe", "channel": "world"})
        opcode, payload = await slow.frame()
        assert opcode == 0x1 and orjson.loads(payload)["type"] == "snapshot"
        assert len(hub.connections) == 1
        slow_conn = next(iter(hub.connections))

        fast = await service.subscriber()
        await fast.subscribe("world")
        assert (await fast.recv())["type"] == "snapshot"
        received: list[dict[str, Any]] = []

        async def read_fast(count: int) -> None:
            while len(received) < count:
                received.append(await fast.recv())

        # The slow client reads nothing from here on: publish until the server gives up on it.
        published: list[dict[str, Any]] = []
        for i in range(MAX_PUBLISHES):
            published.append(await service.publish("world", f"{i} {TEXT}", **BIG))
            # The fast client keeps up: read what it has been sent so far.
            await read_fast(len(published))
            if slow_conn.closing is not None:
                break
        assert slow_conn.closing is not None, f"not closed after {len(published)} briefs"
        assert slow_conn.closing[0] == Close.SLOW_CONSUMER
        # The fan-out drops it at once, without waiting for its client to read again.
        assert all(sub.connection is not slow_conn for sub in hub.channels["world"].subscribers)
        assert len(hub.channels["world"].subscribers) == 1
        # Everyone else is unaffected, also after the slow one was dropped.
        for i in range(5):
            published.append(await service.publish("world", f"after {i}"))
        await read_fast(len(published))
        assert [m["type"] for m in received] == ["brief"] * len(published)
        assert [m["brief"] for m in received] == published
        assert fast.ws.close_code is None  # still open

        # The slow client reads again: what was already sent, in order, then 4008.
        messages, code = await slow.until_close()
        assert code == Close.SLOW_CONSUMER
        ids = [b["id"] for b in published]
        assert [m["type"] for m in messages] == ["brief"] * len(messages)
        assert [m["cursor"] for m in messages] == ids[: len(messages)], "a gap or a reordering"
        assert len(messages) < len(published)

        # The server no longer holds the slow connection (bounded wait for its handler).
        for _ in range(500):
            if not hub_holds(hub, slow_conn):
                break
            await asyncio.sleep(0.01)
        assert not hub_holds(hub, slow_conn)
        assert len(hub.channels["world"].subscribers) == 1

        # Nothing is lost: it resumes from its cursor and gets exactly the rest.
        cursor = messages[-1]["cursor"] if messages else published[0]["id"]
        again = await service.subscriber()
        await again.subscribe("world", since=cursor)
        first = await again.recv()
        assert first["type"] == "subscribed" and first["recovered"] is True
        rest = ids[ids.index(cursor) + 1 :]
        got = await again.recv_until(len(rest))
        assert [m["cursor"] for m in got] == rest
        await again.close()
        await fast.close()
    finally:
        slow.close()


async def test_a_burst_larger_than_the_outbox_does_not_close_clients_that_keep_reading(
    service: Service,
) -> None:
    """200 briefs published at once reach the reader in a few big reads, ten times the
    outbox bound: clients whose sockets take everything must get it all, not 4008."""
    subs = [await service.subscriber() for _ in range(3)]
    for sub in subs:
        await sub.subscribe("world")
        assert (await sub.recv())["type"] == "snapshot"
    published = await asyncio.gather(*(service.publish("world", f"burst {i}") for i in range(200)))
    ids = sorted((b["id"] for b in published), key=lambda s: tuple(map(int, s.split("-"))))
    for sub in subs:
        got = await sub.recv_until(len(ids))
        assert [m["cursor"] for m in got] == ids
        assert sub.ws.close_code is None
        await sub.close()
