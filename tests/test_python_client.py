"""The Python client (clients/python, package ticker_client) against the real service.

Plus two small real servers on loopback that misbehave on purpose where the real service
never would: a WebSocket server that replays events and drops connections (resume and
de-duplication), and an HTTP proxy that loses responses (idempotent retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from ticker_client import (
    AuthenticationError,
    BriefEvent,
    Correction,
    Event,
    InvalidRequest,
    PermissionDenied,
    Position,
    Retraction,
    ServerUnreachable,
    ServiceUnavailable,
    Snapshot,
    SubscriptionRefused,
    TickerClient,
)
from websockets.asyncio.server import ServerConnection

from tests.conftest import Service, free_socket, run_service
from ticker.auth import KeyStore
from ticker.config import Settings

TIMEOUT = 10.0


def _client(base: str, **kwargs: Any) -> TickerClient:
    """A client with short backoffs, so that tests reconnect quickly."""
    kwargs.setdefault("backoff_base", 0.02)
    kwargs.setdefault("backoff_max", 0.3)
    return TickerClient(base, **kwargs)


class Collector:
    """Runs ``subscribe`` in a task and queues what it yields."""

    def __init__(self, client: TickerClient, channels: list[str], **kwargs: Any) -> None:
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.positions: dict[str, Position] = {}
        self._task = asyncio.create_task(self._run(client, channels, kwargs))

    async def _run(
        self, client: TickerClient, channels: list[str], kwargs: dict[str, Any]
    ) -> None:
        try:
            async with contextlib.aclosing(
                client.subscribe(channels, positions=self.positions, **kwargs)
            ) as events:
                async for event in events:
                    await self.queue.put(event)
        except Exception as exc:
            await self.queue.put(exc)

    async def next(self, timeout: float = TIMEOUT) -> Event:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def take(self, count: int, timeout: float = TIMEOUT) -> list[Event]:
        return [await self.next(timeout) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        try:
            item = await asyncio.wait_for(self.queue.get(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected nothing, got {item!r}")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def collecting(
    client: TickerClient, channels: list[str], **kwargs: Any
) -> AsyncIterator[Collector]:
    collector = Collector(client, channels, **kwargs)
    try:
        yield collector
    finally:
        await collector.close()


async def test_subscribe_yields_snapshots_then_typed_live_events(service: Service) -> None:
    await service.publish("world", "already there")
    client = _client(service.base, api_key=service.key)
    async with client as c, collecting(c, ["world", "sport"]) as events:
        snapshots = await events.take(2)
        assert all(isinstance(s, Snapshot) for s in snapshots)
        by_channel = {s.channel: s for s in snapshots if isinstance(s, Snapshot)}
        assert [b.text for b in by_channel["world"].briefs] == ["already there"]
        assert by_channel["sport"].briefs == () and by_channel["world"].resumed_from is None

        brief = await c.publish(
            "sport", "Goal", urgency=2, tags=["football"], url="https://x.example/a",
            author="Match desk",
        )
        event = await events.next()
        assert isinstance(event, BriefEvent) and event.brief == brief and event.cursor == brief.id
        assert brief.urgency == 2 and brief.tags == ("football",) and brief.time.tzinfo is not None
        assert brief.author == "Match desk"

        fixed = await c.correct("sport", brief.id, text="Own goal", author=None)
        event = await events.next()
        assert isinstance(event, Correction) and event.brief == fixed and fixed.version == 2
        assert fixed.author is None

        await c.retract("sport", brief.id)
        event = await events.next()
        assert isinstance(event, Retraction) and event.id == brief.id
        assert events.positions["sport"].cursor == event.cursor
        assert await events.nothing_within(0.2)


async def test_poll_brings_a_snapshot_then_exactly_what_happened_then_nothing(
    serve_with: Any,
) -> None:
    async with serve_with(retention_max_events=4) as service:
        first = await service.publish("world", "before the first poll")
        async with _client(service.base) as c:
            position = Position()
            [snapshot] = await c.poll("world", position)
            assert isinstance(snapshot, Snapshot) and snapshot.resumed_from is None
            assert [b.id for b in snapshot.briefs] == [first["id"]]
            assert position.cursor == first["id"] and position.epoch == snapshot.epoch

            second = await service.publish("world", "second")
            fixed = await service.correct(first["id"], text="before the first poll, fixed")
            await service.retract(second["id"])
            events = await c.poll("world", position)
            assert [(type(e).__name__, e.cursor) for e in events] == [
                ("BriefEvent", second["id"]), ("Correction", events[1].cursor),
                ("Retraction", events[2].cursor),
            ]
            assert isinstance(events[1], Correction) and events[1].brief.id == fixed["id"]
            assert isinstance(events[2], Retraction) and events[2].id == second["id"]
            assert position.cursor == events[-1].cursor
            assert await c.poll("world", position) == []

            stale = Position(position.cursor, position.epoch)
            newer = [await service.publish("world", f"brief {i}") for i in range(5)]
            [lost] = await c.poll("world", stale)  # 5 events, 4 kept: not all of them
            assert isinstance(lost, Snapshot) and lost.resumed_from == position.cursor
            assert lost.briefs[0].id == newer[-1]["id"] and stale.cursor == newer[-1]["id"]


async def test_subscribe_since_a_cursor_yields_exactly_the_missed_briefs(service: Service) -> None:
    first = await service.publish("world", "seen")
    missed = [await service.publish("world", f"missed {i}") for i in range(20)]
    async with _client(service.base) as c, collecting(c, ["world"], since=first["id"]) as events:
        got = await events.take(20)
        assert [e.brief.id for e in got if isinstance(e, BriefEvent)] == [b["id"] for b in missed]
        assert await events.nothing_within(0.2)


async def test_service_restart_in_the_middle_loses_nothing_and_duplicates_nothing(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    first = run_service(settings, sock)
    service = await first.__aenter__()
    stopped = False
    try:
        key = await KeyStore(redis_client).create("test", ["*"])
        client = _client(service.base, api_key=key, max_retries=100)
        published: dict[str, list[str]] = {"world": [], "sport": []}
        async with client, collecting(client, ["world", "sport"]) as events:
            assert all(isinstance(e, Snapshot) for e in await events.take(2))

            async def publish(count: int) -> None:
                for i in range(count):
                    channel = ("world", "sport")[i % 2]
                    brief = await client.publish(channel, f"{channel} {len(published[channel])}")
                    published[channel].append(brief.id)

            await publish(20)
            # Keep publishing through the restart: the client retries with the same keys.
            publishing = asyncio.create_task(publish(40))
            await first.__aexit__(None, None, None)
            stopped = True
            again = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
            async with run_service(settings, again):
                await asyncio.wait_for(publishing, 30)
                await publish(10)
                received: dict[str, list[str]] = {"world": [], "sport": []}
                for event in await events.take(70, timeout=20):
                    assert isinstance(event, BriefEvent), event
                    received[event.channel].append(event.brief.id)
                assert received == published
                assert await events.nothing_within(0.3)
        assert len(published["world"]) == len(published["sport"]) == 35
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)


# A WebSocket server that replays events and drops connections on purpose.


async def test_reconnects_resume_from_cursor_and_epoch_and_drop_duplicates() -> None:
    subscribes: list[list[dict[str, Any]]] = []

    def brief(channel: str, cursor: str) -> str:
        data = {"id": cursor, "channel": channel, "text": f"{channel} {cursor}",
                "time": "2026-02-14T16:30:00+01:00"}
        return json.dumps({"type": "brief", "channel": channel, "brief": data, "cursor": cursor})

    async def handler(ws: ServerConnection) -> None:
        subscribes.append([json.loads(await ws.recv()) for _ in range(2)])
        n = len(subscribes)
        if n == 1:
            for channel, cursor, epoch in (("world", "10-0", "e1"), ("sport", "20-0", "e2")):
                await ws.send(json.dumps({"type": "snapshot", "channel": channel, "briefs": [],
                                          "cursor": cursor, "epoch": epoch}))
            await ws.send(brief("world", "11-0"))
            await ws.send(brief("sport", "21-0"))
            await ws.close(1012, "server restart")
        elif n == 2:
            for channel, epoch in (("world", "e1"), ("sport", "e2")):
                await ws.send(json.dumps({"type": "subscribed", "channel": channel,
                                          "recovered": True, "epoch": epoch}))
            await ws.send(brief("world", "11-0"))  # already delivered: dropped
            await ws.send(brief("world", "12-0"))
            await ws.send(brief("sport", "20-0"))  # older: dropped
            ws.transport.abort()  # dropped without a close frame
        else:
            await ws.send(brief("sport", "21-0"))  # dropped
            await ws.send(brief("sport", "22-0"))
            await ws.wait_closed()

    serving = websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ticker.v1"])  # type: ignore[list-item]
    async with serving as server:
        port = server.sockets[0].getsockname()[1]
        client = _client(f"http://127.0.0.1:{port}")
        async with client as c, collecting(c, ["world", "sport"]) as events:
            got = await events.take(6)
            assert [type(e).__name__ for e in got[:2]] == ["Snapshot", "Snapshot"]
            assert [e.cursor for e in got[2:]] == ["11-0", "21-0", "12-0", "22-0"]
            assert await events.nothing_within(0.2)
            assert events.positions == {
                "world": Position("12-0", "e1"), "sport": Position("22-0", "e2")
            }
    assert [s["channel"] for s in subscribes[0]] == ["world", "sport"]
    assert all("since" not in s for s in subscribes[0])
    assert subscribes[1] == [
        {"op": "subscribe", "channel": "world", "since": "11-0", "epoch": "e1"},
        {"op": "subscribe", "channel": "sport", "since": "21-0", "epoch": "e2"},
    ]
    assert subscribes[2][0]["since"] == "12-0" and subscribes[2][1]["since"] == "21-0"


async def test_a_policy_close_is_raised_instead_of_retried() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1008, "origin not allowed")

    serving = websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ticker.v1"])  # type: ignore[list-item]
    async with serving as server:
        port = server.sockets[0].getsockname()[1]
        async with _client(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(SubscriptionRefused, match="origin not allowed") as info:
                async for _ in c.subscribe("world"):
                    pass
            assert info.value.code == 1008


# Publishing


async def answer(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, extra: str = ""
) -> None:
    """Write one HTTP/1.1 response and close the connection."""
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{extra}"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
    )
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def listening(proxy: LosingProxy) -> AsyncIterator[str]:
    """The proxy served on a free loopback port; its base URL."""
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


class LosingProxy:
    """An HTTP proxy to the service that forwards each request but, for the first
    ``lose`` of them, drops the connection instead of answering: the brief is published
    and its response lost, as on a flaky network."""

    def __init__(self, target: str, lose: int) -> None:
        self.target = target
        self.lose = lose
        self.idempotency_keys: list[str | None] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.strip().split("\r\n")
        method, path, _ = request_line.split(" ")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.idempotency_keys.append(headers.get("idempotency-key"))
        forward = {k: v for k, v in headers.items()
                   if k in ("authorization", "content-type", "idempotency-key")}
        async with httpx.AsyncClient(base_url=self.target) as http:
            r = await http.request(method, path, content=body, headers=forward)
        if self.lose > 0:
            self.lose -= 1
            writer.transport.abort()
            return
        await answer(writer, r.status_code, r.headers["content-type"], r.content)


class FailingOverProxy(LosingProxy):
    """A proxy that answers 503 with Retry-After: 1, as ticker does while its Redis fails
    over, for the first ``seconds``, then forwards every request to the service."""

    def __init__(self, target: str, seconds: float) -> None:
        super().__init__(target, lose=0)
        self.until = asyncio.get_running_loop().time() + seconds
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if asyncio.get_running_loop().time() >= self.until:
            await super().handle(reader, writer)
            return
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        self.refused += 1
        await answer(
            writer, 503, "application/problem+json",
            b'{"title": "Service Unavailable", "status": 503}', "retry-after: 1\r\n",
        )


async def test_a_publish_rides_out_a_failover_longer_than_a_few_retries(service: Service) -> None:
    """503s for 6 s (longer than the 5 retries a second apart of earlier versions): the
    publish waits them out, once; with a budget of 2 s it gives up in a sentence."""
    proxy = FailingOverProxy(service.base, seconds=6)
    async with listening(proxy) as base:
        async with _client(base, api_key=service.key) as c:
            brief = await c.publish("world", "Through the failover")
        assert proxy.refused >= 6
        proxy.until = asyncio.get_running_loop().time() + 60
        async with _client(base, api_key=service.key, retry_for=2) as c:
            with pytest.raises(ServiceUnavailable, match="still unavailable after retries"):
                await c.publish("world", "Given up")
    listed = (await service.http.get("/v1/channels/world/briefs")).json()["briefs"]
    assert [b["id"] for b in listed] == [brief.id]


async def test_a_lost_publish_response_is_retried_with_the_same_key_and_publishes_once(
    service: Service,
) -> None:
    proxy = LosingProxy(service.base, lose=2)
    async with listening(proxy) as base, _client(base, api_key=service.key) as c:
        brief = await c.publish("world", "Published once")
        other = await c.publish("world", "Published once")
    keys = proxy.idempotency_keys
    assert len(keys) == 4 and keys[0] == keys[1] == keys[2] and keys[3] != keys[0]
    listed = (await service.http.get("/v1/channels/world/briefs")).json()["briefs"]
    assert [b["id"] for b in listed] == [other.id, brief.id]


async def test_publish_errors_say_what_to_do(
    service: Service, redis_client: aioredis.Redis
) -> None:
    sport_only = await KeyStore(redis_client).create("sport-desk", ["sport"])
    async with _client(service.base) as c:
        with pytest.raises(AuthenticationError, match="ticker keys create") as auth:
            await c.publish("world", "no key")
        assert auth.value.status == 401
        with pytest.raises(AuthenticationError, match="unknown or was revoked"):
            await c.publish("world", "wrong key", api_key="tk_wrong")
        with pytest.raises(PermissionDenied, match="may not publish to channel 'world'"):
            await c.publish("world", "out of scope", api_key=sport_only)
        with pytest.raises(InvalidRequest) as invalid:
            await c.publish("world", "bad urgency", urgency=12, api_key=service.key)
        assert invalid.value.status == 422 and invalid.value.errors[0]["field"] == "urgency"
    with contextlib.closing(free_socket()) as unused:
        closed_port = unused.getsockname()[1]  # bound, never listening: refuses connections
        async with _client(f"http://127.0.0.1:{closed_port}", max_retries=2) as c:
            with pytest.raises(ServerUnreachable, match="Cannot reach the ticker server"):
                await c.publish("world", "nobody there", api_key="k")
    assert (await service.http.get("/v1/channels/world/briefs")).json()["briefs"] == []


async def test_channels_and_briefs_read_the_service(service: Service) -> None:
    b1 = await service.publish("world", "one")
    b2 = await service.publish("arts", "two")
    async with _client(service.base) as c:
        assert await c.channels() == ["arts", "world"]
        briefs, cursor = await c.briefs("world")
        assert [b.id for b in briefs] == [b1["id"]] and cursor == b1["id"]
        assert cursor != b2["id"]


# Private channels: the token callback


async def _private_channel(service: Service, redis_client: aioredis.Redis) -> dict[str, str]:
    """A private channel 'premium'; the headers of a reader key that mints its tokens."""
    keys = KeyStore(redis_client)
    admin = service.auth(await keys.create("boss", ["*"], role="admin"))
    r = await service.http.put("/v1/channels/premium", json={"private": True}, headers=admin)
    assert r.status_code == 201, r.text
    return service.auth(await keys.create("site", ["premium"], role="reader"))


class TokenSite:
    """What a site's backend does for a logged-in reader: mint a token (with ``ttl``),
    counting the calls; the callback that ``subscribe(token=...)`` is given."""

    def __init__(self, service: Service, reader: dict[str, str], ttl: int) -> None:
        self.service, self.reader, self.ttl = service, reader, ttl
        self.asked: list[str] = []

    async def __call__(self, channel: str) -> str:
        self.asked.append(channel)
        r = await self.service.http.post(f"/v1/channels/{channel}/tokens",
                                         json={"ttl": self.ttl}, headers=self.reader)
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


async def test_a_token_callback_opens_a_private_channel_and_renews_before_expiry(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """Tokens of 3 s: the callback is asked when the channel turns out private, then on
    each ``token-expiring``; briefs published all along arrive once each, in order,
    and the public channel never asks for a token."""
    site = TokenSite(service, await _private_channel(service, redis_client), ttl=3)
    first = await service.publish("premium", "before")
    client = _client(service.base)
    async with client as c, collecting(c, ["premium", "world"], token=site) as events:
        snapshots = {e.channel: e for e in await events.take(2)}
        assert isinstance(snapshots["premium"], Snapshot)
        assert [b.id for b in snapshots["premium"].briefs] == [first["id"]]
        assert site.asked == ["premium"]
        published = []
        for i in range(16):  # 8 s: two renewals at least, some briefs near each one
            published.append((await service.publish("premium", f"live {i}"))["id"])
            await asyncio.sleep(0.5)
        got = [e for e in await events.take(len(published)) if isinstance(e, BriefEvent)]
        assert [e.brief.id for e in got] == published
        assert await events.nothing_within(0.3)
    assert len(site.asked) >= 3 and set(site.asked) == {"premium"}


async def test_a_fixed_token_opens_a_private_channel_until_it_expires(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private_channel(service, redis_client)
    site = TokenSite(service, reader, ttl=2)
    token = await site("premium")
    client = _client(service.base)
    async with client as c, collecting(c, ["premium"], token=token) as events:
        assert isinstance(await events.next(), Snapshot)
        with pytest.raises(SubscriptionRefused) as refused:
            await events.next(timeout=5)
    assert refused.value.error == "token_expired" and refused.value.channel == "premium"
    assert "Pass a function as token=" in str(refused.value)


async def test_a_private_channel_without_a_token_or_with_a_bad_one_is_refused_clearly(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await _private_channel(service, redis_client)
    await service.publish("premium", "for subscribers")
    client = _client(service.base)
    async with client as c:
        async with collecting(c, ["premium"]) as events:
            with pytest.raises(SubscriptionRefused) as refused:
                await events.next()
        assert refused.value.error == "token_required"
        assert "pass token=" in str(refused.value)
        calls: list[str] = []

        def bad(channel: str) -> str:  # a plain function is accepted too
            calls.append(channel)
            return "not.a.token"

        async with collecting(c, ["premium"], token=bad) as events:
            with pytest.raises(SubscriptionRefused) as refused:
                await events.next()
        assert refused.value.error == "invalid_token" and calls == ["premium"]
        # Over HTTP: no token, then a callback.
        with pytest.raises(AuthenticationError, match="private"):
            await c.briefs("premium")


async def test_http_reads_of_a_private_channel_ask_the_callback_again_when_a_token_ends(
    service: Service, redis_client: aioredis.Redis
) -> None:
    site = TokenSite(service, await _private_channel(service, redis_client), ttl=1)
    one = await service.publish("premium", "one")
    client = _client(service.base)
    async with client as c:
        briefs, _ = await c.briefs("premium", token=site)
        assert [b.id for b in briefs] == [one["id"]] and len(site.asked) == 1
        position = Position()
        [snapshot] = await c.poll("premium", position, token=site)
        assert isinstance(snapshot, Snapshot) and len(site.asked) == 1  # kept, still valid
        await asyncio.sleep(1 + 5 + 0.5)  # past its expiry and the servers' leeway
        two = await service.publish("premium", "two")
        [event] = await c.poll("premium", position, token=site)
        assert isinstance(event, BriefEvent) and event.brief.id == two["id"]
        assert len(site.asked) == 2
