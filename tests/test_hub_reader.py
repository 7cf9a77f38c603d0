"""The reader and the cost of subscribing (ticker/reader.py, the opening of channels in
ticker/hub.py): anonymous subscribers must not be able to make the process read Redis per
subscribe, take the read pool, or make the reader's work grow with the channels open.

What Redis runs is counted with the real server's ``INFO commandstats`` or captured with
``MONITOR``; where a moment must be caught (an opening read out, the reader away), the
store's read is held by a gate in the process or Redis is held still with SIGSTOP.
Everything else is real: the valkey-server of the session, uvicorn, WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import ticker
from tests.conftest import RawClient, Service, Subscriber, until, until_closed
from ticker import store as store_module
from ticker.protocol import Close

# No limit on the messages of one connection: the tests send thousands on purpose.
UNLIMITED = {"ws_message_rate": 1e6, "ws_message_burst": 10**6}
# The reader's quiet XREAD BLOCK never ends during a test, the readers report never comes
# back: the only commands Redis runs are the ones the test causes.
QUIET = {"reader_block_ms": 60_000, "readers_report_interval": 3600.0}
READS = ("xrevrange", "xrange", "hmget", "hget", "hgetall", "xread", "smembers", "multi", "evalsha")


async def _calls(redis_client: aioredis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await redis_client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in READS}


def _brief_message(brief: dict[str, Any]) -> dict[str, Any]:
    return {"type": "brief", "channel": brief["channel"], "brief": brief, "cursor": brief["id"]}


async def _known(service: Service, *channels: str) -> None:
    """Wait until the reader is anchored (its existence cache loaded) and knows that the
    channels exist, and the hub has read which channels are private (one HGETALL when
    the reader anchors, which a count of Redis reads must not catch half-way)."""
    reader = service.hub.stream_readers[0]  # one server: one reader
    await until(
        lambda: reader.known is not None and all(reader.exists(c) for c in channels)
        and service.hub.private is not None,
        f"{channels} not known",
    )


async def _watch(service: Service, channel: str) -> Subscriber:
    sub = await service.subscriber()
    await sub.subscribe(channel)
    assert (await sub.recv())["type"] == "snapshot"
    return sub


async def _churn(raw: RawClient, channels: list[str]) -> None:
    """Subscribe to each channel and unsubscribe at once, all sent in one write; every
    subscribe must be answered with an empty snapshot, every unsubscribe confirmed."""
    await raw.send_json(
        *(m for ch in channels for m in (
            {"op": "subscribe", "channel": ch}, {"op": "unsubscribe", "channel": ch}))
    )
    for channel in channels:
        snapshot = await raw.json()
        assert snapshot == {
            "type": "snapshot", "channel": channel, "briefs": [], "cursor": "0-0", "epoch": ""
        }
        assert await raw.json() == {"type": "unsubscribed", "channel": channel}


# 1. Channels that were never published cost no Redis read.


async def test_two_thousand_subscribe_unsubscribe_pairs_to_junk_channels_read_nothing_from_redis(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(**UNLIMITED, **QUIET) as service:
        await service.publish("world", "before")
        watcher = await _watch(service, "world")
        await _known(service, "world")
        raw = await RawClient.connect(service.port)
        try:
            before = await _calls(redis_client)
            for n in range(0, 2000, 250):
                await _churn(raw, [f"junk-{i}" for i in range(n, n + 250)])
            after = await _calls(redis_client)
            assert after == before, f"Redis commands for junk channels: {before} -> {after}"
            assert set(service.hub.channels) == {"world"}

            # The same churn while a brief is published: it answers 201 and the real
            # subscriber gets it, and the junk still reads nothing (no HMGET, XREVRANGE).
            churn = asyncio.create_task(
                _churn(raw, [f"more-junk-{i}" for i in range(500)])
            )
            brief = await service.publish("world", "during the churn")
            assert await watcher.recv() == _brief_message(brief)
            await asyncio.wait_for(churn, 60)
            final = await _calls(redis_client)
            assert (final["hmget"], final["xrevrange"]) == (after["hmget"], after["xrevrange"])
        finally:
            raw.close()
        await watcher.close()


async def test_a_subscriber_of_a_never_published_channel_gets_its_first_brief_live(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    """Opened with no read, as an empty log: the snapshot, a resume from 0-0 and one from
    another cursor get what Redis would say of a channel with no log; then the first
    brief is read from 0-0 when the bell names the channel, and reaches all three."""
    async with serve_with(**QUIET) as service:
        await _known(service)  # anchored: the existence cache is loaded
        before = await _calls(redis_client)
        fresh = await service.subscriber()
        await fresh.subscribe("fresh")
        assert await fresh.recv() == {
            "type": "snapshot", "channel": "fresh", "briefs": [], "cursor": "0-0", "epoch": ""
        }
        zero = await service.subscriber()
        await zero.subscribe("fresh", since="0-0")
        assert await zero.recv() == {
            "type": "subscribed", "channel": "fresh", "recovered": True, "epoch": ""
        }
        other = await service.subscriber()
        await other.subscribe("fresh", since="1700000000000-0", epoch="gone")
        assert await other.recv() == {
            "type": "subscribed", "channel": "fresh", "recovered": False, "epoch": ""
        }
        assert await other.recv() == {
            "type": "snapshot", "channel": "fresh", "briefs": [], "cursor": "0-0", "epoch": ""
        }
        assert await _calls(redis_client) == before

        first = await service.publish("fresh", "the very first")
        for sub in (fresh, zero, other):
            assert await sub.recv() == _brief_message(first)
        listed = (await service.http.get("/v1/channels/fresh/briefs")).json()
        late = await service.subscriber()
        await late.subscribe("fresh")
        assert await late.recv() == {
            "type": "snapshot", "channel": "fresh", "briefs": [first],
            "cursor": first["id"], "epoch": listed["epoch"],
        }
        second = await service.publish("fresh", "the second")
        for sub in (fresh, zero, other, late):
            assert await sub.recv() == _brief_message(second)
            await sub.close()


# 2. The reader's work does not grow with the channels open.


@contextlib.asynccontextmanager
async def _monitor(url: str, redis_client: aioredis.Redis) -> AsyncIterator[list[str]]:
    """Every command Redis runs meanwhile (MONITOR, on a connection of its own)."""
    commands: list[str] = []
    marker = f"monitor-end-{uuid.uuid4().hex}"
    client = aioredis.Redis.from_url(url)
    started = asyncio.Event()

    async def listen() -> None:
        async with client.monitor() as monitor:
            started.set()
            async for info in monitor.listen():
                commands.append(info["command"])
                if marker in info["command"]:
                    return

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield commands
        await redis_client.echo(marker)
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await client.aclose()


async def test_the_reader_never_names_the_thousands_of_junk_channels_held_open(
    serve_with: Any, redis_client: aioredis.Redis, redis_server: Any
) -> None:
    junk = [f"junk-{i}" for i in range(2500)]
    async with serve_with(max_subscriptions=3000, **UNLIMITED) as service:
        watcher = await _watch(service, "world")
        raw = await RawClient.connect(service.port)
        try:
            for n in range(0, len(junk), 250):  # within the outbox bound (1000 messages)
                await raw.send_json(*({"op": "subscribe", "channel": ch} for ch in junk[n : n + 250]))
                for _ in range(250):
                    assert (await raw.json())["type"] == "snapshot"
            assert len(service.hub.channels) == len(junk) + 1

            async with _monitor(redis_server.url, redis_client) as commands:
                published = [await service.publish("world", f"brief {i}") for i in range(3)]
                assert await watcher.recv_until(3) == [_brief_message(b) for b in published]
            reads = [c for c in commands if c.upper().startswith("XREAD")]
            assert reads, "the reader read nothing"
            for command in reads:
                words = command.split()
                named = words[words.index("STREAMS") + 1 :]
                keys = named[: len(named) // 2]
                assert set(keys) <= {"ticker:bell", "ticker:{world}:log"}, command
            assert not any("junk-" in c for c in commands)
        finally:
            raw.close()
        await watcher.close()


# 3. Opening reads have a budget of their own.


async def test_opening_reads_never_take_more_than_their_budget_of_read_connections(
    serve_with: Any, redis_server: Any
) -> None:
    """A read pool of 4: opening reads may take 2 of its connections at once. Redis is held
    still with SIGSTOP while 30 existing channels are opened together: 2 reads are out
    and the others wait for a slot, without a connection. Then, with Redis running, a
    storm of opens while publishes and lists go on: all answered, never more than 2
    opening reads at once."""
    async with serve_with(redis_read_pool_size=4, redis_timeout=60.0, **UNLIMITED) as service:
        hub, store = service.hub, service.hub.store
        channels = [f"ch-{i}" for i in range(90)]
        for channel in channels:
            await service.publish(channel, f"in {channel}")
        await _known(service, *channels)

        out = 0
        most = 0
        real = store.recent

        async def counted(channel: str, count: int) -> Any:
            nonlocal out, most
            out += 1
            most = max(most, out)
            try:
                return await real(channel, count)
            finally:
                out -= 1

        store.recent = counted
        pool = store.reads.connection_pool
        first = await RawClient.connect(service.port)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await first.send_json(*({"op": "subscribe", "channel": ch} for ch in channels[:30]))
            await until(lambda: len(hub.channels) == 30, "not every subscribe arrived")
            await until(lambda: out == 2, "the opening reads did not start")
            assert sum(state.reading for state in hub.channels.values()) == 2
            assert len(pool._in_use_connections) <= 2  # type: ignore[attr-defined]
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        got = {(await first.json())["channel"] for _ in range(30)}
        assert got == set(channels[:30])

        clients = [await RawClient.connect(service.port) for _ in range(6)]
        try:
            for i, client in enumerate(clients):
                await client.send_json(
                    *({"op": "subscribe", "channel": ch} for ch in channels[30 + i * 10 : 40 + i * 10])
                )
            published = [await service.publish("world", f"storm {i}") for i in range(10)]
            assert len(published) == 10
            listed = await service.http.get("/v1/channels/ch-0/briefs")
            assert listed.status_code == 200
            for i, client in enumerate(clients):
                replies = [await client.json() for _ in range(10)]
                assert {m["channel"] for m in replies} == set(channels[30 + i * 10 : 40 + i * 10])
                assert all(m["type"] == "snapshot" and len(m["briefs"]) == 1 for m in replies)
        finally:
            for client in clients:
                client.close()
            first.close()
        assert most == 2


# 4. Nothing is missed: the opening race, a bell trimmed past the reader, a reconnect.


def _gate(
    real: Callable[..., Awaitable[Any]],
) -> tuple[Callable[..., Awaitable[Any]], asyncio.Event, asyncio.Event, list[bool]]:
    """``real`` held, while ``armed[0]`` is true, until ``release`` is set: ``parked`` is
    set when a call waits there."""
    parked, release = asyncio.Event(), asyncio.Event()
    armed = [False]

    async def gated(*args: Any) -> Any:
        if armed[0]:
            parked.set()
            await release.wait()
        return await real(*args)

    return gated, parked, release, armed


async def test_a_brief_published_while_a_channel_opens_is_not_missed(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """The channel's opening read returns, and is held before the channel is ready; a
    brief is published and the reader takes its bell meanwhile (it skips a channel that
    is not ready). Once the open completes, the brief must be in the snapshot and in the
    resume, and the next brief must come once, live."""
    hub = service.hub
    old = await service.publish("world", "before")
    await _known(service, "world")
    epoch = (await hub.store.snapshot("world", 1)).epoch  # a GET would follow the channel

    real = hub.store.recent
    read_back, release = asyncio.Event(), asyncio.Event()

    async def held(channel: str, count: int) -> Any:
        result = await real(channel, count)
        read_back.set()
        await release.wait()
        return result

    hub.store.recent = held
    try:
        fresh = await service.subscriber()
        await fresh.subscribe("world")
        resumer = await service.subscriber()
        await resumer.subscribe("world", since=old["id"], epoch=epoch)
        await asyncio.wait_for(read_back.wait(), 10)
        state = hub.channels["world"]
        await until(lambda: len(state.subscribers) == 2, "both subscribes arrived")
        during = await service.publish("world", "while the channel opens")
        await until(lambda: state.rung, "the reader did not take the bell")
        assert not state.ready.done()
    finally:
        release.set()
        hub.store.recent = real
    assert await fresh.recv() == {
        "type": "snapshot", "channel": "world", "briefs": [during, old],
        "cursor": during["id"], "epoch": epoch,
    }
    assert await resumer.recv() == {
        "type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch
    }
    assert await resumer.recv() == _brief_message(during)
    after = await service.publish("world", "after")
    for sub in (fresh, resumer):
        assert await sub.recv() == _brief_message(after)
        await sub.close()


async def test_a_bell_trimmed_past_the_held_back_reader_is_answered_by_a_sweep(
    serve_with: Any, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bell of about 10 entries read 10 at a time; the reader is held back while 50
    briefs go to one channel and then 250 to another, so that the bell loses every entry
    naming the first. The reader's next read is a full page: it sweeps, and both
    subscribers get every brief, once, in order."""
    monkeypatch.setattr(store_module, "BELL_MAXLEN", 10)
    monkeypatch.setattr(store_module, "BELL_COUNT", 10)
    gated, parked, release, armed = _gate(store_module.read_bell)
    monkeypatch.setattr(store_module, "read_bell", gated)
    async with serve_with(reader_block_ms=100) as service:
        sport = await _watch(service, "sport")
        world = await _watch(service, "world")
        armed[0] = True
        await asyncio.wait_for(parked.wait(), 10)
        after = service.hub.reader_for("world").after
        published = {
            "sport": [await service.publish("sport", f"sport {i}") for i in range(50)],
            "world": [await service.publish("world", f"world {i}") for i in range(250)],
        }
        left = await redis_client.xrange("ticker:bell", "-", "+")
        assert left and all(fields[b"c"] == b"world" for _, fields in left)  # sport's: lost
        assert len(left) >= 10 and service.hub.reader_for("world").after == after
        armed[0] = False
        release.set()
        for sub, channel in ((sport, "sport"), (world, "world")):
            got = await sub.recv_until(len(published[channel]))
            assert got == [_brief_message(b) for b in published[channel]]
        for sub, channel in ((sport, "sport"), (world, "world")):
            last = await service.publish(channel, "last")
            assert await sub.recv() == _brief_message(last)
            await sub.close()


async def test_a_reader_that_reconnects_sweeps_what_was_published_while_it_was_away(
    serve_with: Any, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's connection is killed (CLIENT KILL); it is held while it anchors again,
    and briefs are published meanwhile: their bell entries are before its new anchor, so
    only the sweep can find them."""
    gated, parked, release, armed = _gate(store_module.bell_last)
    monkeypatch.setattr(store_module, "bell_last", gated)
    async with serve_with(reconnect_max_delay=0.2) as service:
        hub = service.hub
        watcher = await _watch(service, "world")
        await _known(service)
        armed[0] = True
        blocked: list[dict[str, Any]] = []
        for _ in range(500):  # the reader's XREAD BLOCK, between two of its reads at worst
            clients: list[dict[str, Any]] = await redis_client.client_list()
            blocked = [c for c in clients if c.get("cmd") == "xread" and "b" in c["flags"]]
            if blocked:
                break
            await asyncio.sleep(0.01)
        assert len(blocked) == 1, blocked
        await redis_client.client_kill_filter(_id=blocked[0]["id"])
        await asyncio.wait_for(parked.wait(), 10)
        assert not hub.reader_healthy and hub.reader_for("world").exists("world") is None
        missed = [await service.publish("world", f"while away {i}") for i in range(5)]
        armed[0] = False
        release.set()
        assert await watcher.recv_until(5) == [_brief_message(b) for b in missed]
        await until(lambda: hub.reader_healthy, "the reader did not come back")
        last = await service.publish("world", "last")
        assert await watcher.recv() == _brief_message(last)
        await watcher.close()


# 5. Nothing lingers after cancelled work.

_TICKER = str(Path(ticker.__file__).parent)


def _ours(obj: Any) -> bool:
    """An object of ticker's, or one of ticker's frames, coroutines or tasks."""
    if type(obj).__module__.startswith("ticker"):
        return True
    code = None
    if isinstance(obj, types.FrameType):
        code = obj.f_code
    elif isinstance(obj, types.CoroutineType):
        code = obj.cr_code
    elif isinstance(obj, asyncio.Task):
        coro = obj.get_coro()
        code = getattr(coro, "cr_code", None)
    return code is not None and code.co_filename.startswith(_TICKER)


async def test_subscribe_churn_and_cancelled_work_leave_no_cyclic_garbage(
    serve_with: Any, redis_server: Any
) -> None:
    """With the collector off: a churn of junk subscribes; catch-ups cancelled by an
    unsubscribe while their Redis read is out; opens cancelled while they wait for their
    slot, and one whose read is out when everyone leaves; an open that fails (Redis
    stalled past the read timeout). Afterwards the collector finds nothing unreachable of
    ticker's (a cycle would linger under ``ticker serve``'s raised thresholds), and the
    hub holds nothing of it."""
    async with serve_with(
        redis_read_pool_size=2, redis_timeout=1.0, replay_window=2, **UNLIMITED
    ) as service:
        hub = service.hub
        pool = hub.store.reads.connection_pool
        channels = [f"ch-{i}" for i in range(8)]
        first: dict[str, Any] = {}
        for channel in channels:
            first[channel] = await service.publish(channel, "one")
            for i in range(3):
                await service.publish(channel, f"more {i}")
        await _known(service, *channels)
        watcher = await RawClient.connect(service.port)
        await watcher.send_json(*({"op": "subscribe", "channel": ch} for ch in channels[:2]))
        assert [(await watcher.json())["type"] for _ in range(2)] == ["snapshot"] * 2
        pid = redis_server.process.pid

        gc.collect()
        gc.collect()
        gc.disable()
        try:
            raw = await RawClient.connect(service.port)
            await _churn(raw, [f"junk-{i}" for i in range(300)])

            # Catch-ups older than the window (2 events) read Redis; cancelled mid-read.
            os.kill(pid, signal.SIGSTOP)
            try:
                await raw.send_json(*(
                    {"op": "subscribe", "channel": ch, "since": first[ch]["id"]}
                    for ch in channels[:2]
                ))
                await until(lambda: len(pool._in_use_connections) == 2, "catch-up reads out")
                await raw.send_json(*({"op": "unsubscribe", "channel": ch} for ch in channels[:2]))
                for channel in channels[:2]:
                    assert await raw.json() == {"type": "unsubscribed", "channel": channel}
            finally:
                os.kill(pid, signal.SIGCONT)

            # One open's read is out, the others wait for the slot (a budget of 1); then
            # every subscriber goes away.
            os.kill(pid, signal.SIGSTOP)
            try:
                leavers = [await RawClient.connect(service.port) for _ in range(3)]
                for client in leavers:
                    await client.send_json(
                        *({"op": "subscribe", "channel": ch} for ch in channels[2:])
                    )
                await until(lambda: len(hub.channels) == len(channels), "subscribes arrived")
                await until(lambda: sum(s.reading for s in hub.channels.values()) == 1, "read out")
                for client in leavers:
                    client.close()
                await until(lambda: set(hub.channels) == set(channels[:2]), "channels still held")
            finally:
                os.kill(pid, signal.SIGCONT)

            # An open that fails: Redis stalled past the read timeout.
            os.kill(pid, signal.SIGSTOP)
            try:
                failing = await service.subscriber()
                await failing.subscribe("ch-5")
                _, code, _ = await until_closed(failing)
                assert code == Close.TRY_AGAIN_LATER
            finally:
                os.kill(pid, signal.SIGCONT)

            raw.close()
            watcher.close()
            await until(lambda: not hub.connections and not hub.channels, "the hub holds them")
            await until(
                lambda: not any(
                    t.get_coro().__qualname__ == "Hub._open"  # type: ignore[union-attr]
                    for t in asyncio.all_tasks()
                ),
                "an opening task is still running",
            )
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        ours = [obj for obj in garbage if _ours(obj)]
        summary = sorted({f"{type(o).__name__} {o!r:.120}" for o in ours})
        del garbage
        assert not ours, "\n".join(summary[:40])
        assert not hub._opens._waiters  # type: ignore[attr-defined]


async def test_a_task_looping_on_redis_stops_even_when_redis_py_swallows_the_cancel(
    redis_server: Any,
) -> None:
    """redis-py can swallow a cancellation that arrives while it connects (its issues
    #2028 and #2551): the task goes on as if nothing happened. The hub's tasks loop on
    Redis until stopped, so their stop must not trust one cancel (``cancel_and_wait``).
    Each task here talks to a fresh pool and is cancelled at a different moment."""
    from ticker.hub import cancel_and_wait

    swallowed = 0
    for attempt in range(40):
        client = aioredis.Redis.from_url(redis_server.url)

        async def loop_on_redis(client: aioredis.Redis = client) -> None:
            while True:
                await client.ping()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(loop_on_redis())
        await asyncio.sleep(attempt * 0.00005)
        try:
            await asyncio.wait_for(cancel_and_wait(task, every=0.05), 5)
        finally:
            await client.aclose()
        assert task.cancelled()
        swallowed += task.cancelling() > 1  # it took more than one cancel
    print(f"\ncancellations swallowed by redis-py in 40 attempts: {swallowed}")


async def test_briefs_published_faster_than_a_heavy_fan_out_goes_out_are_sent_together(
    service: Service,
) -> None:
    """Each fan-out is made to hold the event loop 30 ms (as one to many thousands of
    sockets does). Forty briefs POSTed back to back, each once the previous is answered,
    reach a subscriber exactly once and in order, in far fewer fan-outs than briefs: the
    reader rests after a heavy fan-out while briefs keep coming, so that the POSTs get
    through and their briefs go out together."""
    sub = await service.subscriber()
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    hub = service.hub
    real = hub.dispatch_reads
    fan_outs = 0

    async def heavy(reads: Any) -> None:
        nonlocal fan_outs
        fan_outs += 1
        time.sleep(0.03)  # blocks the loop, like writing to every socket
        await real(reads)

    hub.dispatch_reads = heavy
    try:
        published = [await service.publish("world", f"brief {i}") for i in range(40)]
        got = await sub.recv_until(40)
    finally:
        hub.dispatch_reads = real
    assert [m["brief"]["id"] for m in got] == [b["id"] for b in published]
    assert fan_outs <= 15, fan_outs
    await sub.close()
