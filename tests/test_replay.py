"""The replay window: resumes and snapshots served from the events a process keeps in memory.

Each channel a process follows keeps its newest events (``replay_window``). A resume whose
cursor is inside them, and a snapshot folded from them, must cost no Redis read; anything
memory cannot answer (a cursor older than the window, another epoch, a cursor from the
future) goes to Redis, and either way the client gets exactly what the protocol promises:
every missed event once and in order, or ``recovered: false`` and a snapshot equal to what
``GET /v1/channels/{ch}/briefs`` lists. Redis reads are counted with the real server's
``INFO commandstats``. Also: a client that stops reading entirely has its socket dropped
by the server once it is closed (ticker's own WebSocket protocol), not kept forever.

Everything runs against a real Redis, a real uvicorn and real WebSocket clients; no step
waits for wall-clock time except bounded polls of the server's state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import (
    BIG_FIELDS,
    BIG_TEXT,
    RawClient,
    Service,
    Subscriber,
    hub_holds,
    until,
    until_closed,
)
from ticker.auth import KeyStore
from ticker.protocol import Close


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    """Both ways frames leave: ticker's own protocol's sink, and plain ASGI sends."""
    return str(request.param)


Reads = dict[str, int]


def _key(cursor: str) -> tuple[int, int]:
    ms, seq = cursor.split("-")
    return int(ms), int(seq)


async def _reads(redis_client: aioredis.Redis) -> Reads:
    """How many XRANGE and XREVRANGE commands the Redis server has run (Lua included)."""
    stats: dict[str, Any] = await redis_client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("xrange", "xrevrange")
    }


async def _listed(service: Service, channel: str = "world") -> dict[str, Any]:
    """The channel's newest briefs as Redis has them: read from the store, not with a GET,
    which would make the process follow the channel (``ticker.views``)."""
    snapshot = await service.hub.store.snapshot(channel, 50)
    return {
        "briefs": [orjson.loads(b) for b in snapshot.briefs],
        "cursor": snapshot.cursor, "epoch": snapshot.epoch,
    }


def _brief_message(brief: dict[str, Any]) -> dict[str, Any]:
    return {"type": "brief", "channel": brief["channel"], "brief": brief, "cursor": brief["id"]}


async def _watch(service: Service, channel: str = "world") -> tuple[Subscriber, dict[str, Any]]:
    """A subscriber that keeps the channel open in the process, and its snapshot."""
    sub = await service.subscriber()
    await sub.subscribe(channel)
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot"
    return sub, snapshot


async def _forgotten(service: Service, channel: str = "world") -> None:
    """Wait until no subscriber is left and the process has forgotten the channel."""
    hub = service.hub
    await until(lambda: channel not in hub.channels, f"{channel!r} still followed")


async def _assert_next_is_live(service: Service, subs: list[Subscriber]) -> None:
    """One more brief must be the very next message of each (nothing stray, no duplicate)."""
    brief = await service.publish("world", "live")
    for sub in subs:
        assert await sub.recv() == _brief_message(brief)


# 1. A storm of resumes and snapshots on an open channel reads nothing from Redis.


@pytest.mark.parametrize("opened", ["after-the-first-briefs", "before-any-brief"])
async def test_thirty_resumes_and_thirty_snapshots_on_an_open_channel_read_nothing_from_redis(
    service: Service, redis_client: aioredis.Redis, opened: str
) -> None:
    """``opened``: whether the watcher opened the channel when it already had briefs, or
    before its first brief (a new channel followed from the start: the epoch then comes
    with the first brief, and memory must serve the storm all the same)."""
    published: list[dict[str, Any]] = []
    if opened == "after-the-first-briefs":
        published += [await service.publish("world", f"early {i}") for i in range(5)]
    watcher, _ = await _watch(service)
    fresh = [await service.publish("world", f"brief {i}") for i in range(15 - len(published))]
    published += fresh
    assert await watcher.recv_until(len(fresh)) == [_brief_message(b) for b in fresh]
    listed = await _listed(service)
    epoch = listed["epoch"]
    assert epoch and listed["cursor"] == published[-1]["id"]

    resumers = [await service.subscriber() for _ in range(30)]
    newcomers = [await service.subscriber() for _ in range(30)]
    # Cursors all over the window, the newest included (then nothing is missed); half of
    # the resumes name the epoch, half do not.
    since = [i % len(published) for i in range(len(resumers))]

    before = await _reads(redis_client)
    await asyncio.gather(
        *(
            sub.subscribe("world", since=published[n]["id"], **({"epoch": epoch} if i % 2 else {}))
            for i, (sub, n) in enumerate(zip(resumers, since, strict=True))
        ),
        *(sub.subscribe("world") for sub in newcomers),
    )
    for sub, n in zip(resumers, since, strict=True):
        assert await sub.recv() == {
            "type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch
        }
        missed = published[n + 1 :]
        assert await sub.recv_until(len(missed)) == [_brief_message(b) for b in missed]
    for sub in newcomers:
        assert await sub.recv() == {
            "type": "snapshot", "channel": "world", "cursor": listed["cursor"],
            "epoch": epoch, "briefs": listed["briefs"],
        }
    after = await _reads(redis_client)
    assert after == before, f"Redis reads during the storm: {before} -> {after}"

    # Nothing more was sent to anyone: the next brief is each client's next message.
    await _assert_next_is_live(service, [watcher, *resumers, *newcomers])
    for sub in [watcher, *resumers, *newcomers]:
        await sub.close()


async def test_thirty_snapshots_that_memory_cannot_fold_share_one_redis_read(
    serve_with: Any, redis_client: aioredis.Redis, redis_server: Any
) -> None:
    """With a window smaller than the log, a snapshot needs Redis: subscribers that ask
    meanwhile share one read. Redis is held still with SIGSTOP (a real signal, no timing)
    until all of them have asked; the Redis timeout is long so that nothing fails meanwhile."""
    async with serve_with(replay_window=3, redis_timeout=60.0) as service:
        published = [await service.publish("world", "brief 0")]
        watcher, _ = await _watch(service)
        published += [await service.publish("world", f"brief {i}") for i in range(1, 10)]
        assert await watcher.recv_until(9) == [_brief_message(b) for b in published[1:]]
        state = service.hub.channels["world"]
        newcomers = [await service.subscriber() for _ in range(30)]

        before = await _reads(redis_client)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.gather(*(sub.subscribe("world") for sub in newcomers))
            await until(lambda: len(state.subscribers) == 31, "not every subscribe arrived")
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        snapshots = [await sub.recv() for sub in newcomers]
        after = await _reads(redis_client)
        listed = await _listed(service)

        assert after == {"xrange": before["xrange"], "xrevrange": before["xrevrange"] + 1}
        expected = {
            "type": "snapshot", "channel": "world", "cursor": published[-1]["id"],
            "epoch": listed["epoch"], "briefs": listed["briefs"],
        }
        assert listed["cursor"] == published[-1]["id"]
        assert [b["id"] for b in listed["briefs"]] == [b["id"] for b in reversed(published)]
        assert all(snapshot == expected for snapshot in snapshots)
        await _assert_next_is_live(service, [watcher, *newcomers])
        for sub in [watcher, *newcomers]:
            await sub.close()


# 2. A channel the process forgot: the window is loaded again when it is opened.


async def test_subscribes_that_come_while_a_channel_opens_wait_for_its_one_read(
    serve_with: Any, redis_client: aioredis.Redis, redis_server: Any
) -> None:
    """A storm on a channel nobody here follows yet: every subscribe and resume that
    comes while the channel's first read is out waits on the channel (no task each) and
    all are answered from that one read. Redis is held still with SIGSTOP until they
    have all asked."""
    async with serve_with(redis_timeout=60.0) as service:
        published = [await service.publish("world", f"brief {i}") for i in range(10)]
        listed = await _listed(service)
        clients = [await service.subscriber() for _ in range(30)]
        newcomers, resumers = clients[:15], clients[15:]

        before = await _reads(redis_client)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.gather(
                *(sub.subscribe("world") for sub in newcomers),
                *(sub.subscribe("world", since=published[4]["id"], epoch=listed["epoch"])
                  for sub in resumers),
            )
            await until(
                lambda: "world" in service.hub.channels
                and len(service.hub.channels["world"].deferred) == 30,
                "not every subscribe is waiting on the channel",
            )
            assert not any(conn.tasks for conn in service.hub.connections)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)

        for sub in newcomers:
            assert await sub.recv() == {
                "type": "snapshot", "channel": "world", "cursor": listed["cursor"],
                "epoch": listed["epoch"], "briefs": listed["briefs"],
            }
        for sub in resumers:
            assert await sub.recv() == {
                "type": "subscribed", "channel": "world", "recovered": True,
                "epoch": listed["epoch"],
            }
            assert await sub.recv_until(5) == [_brief_message(b) for b in published[5:]]
        after = await _reads(redis_client)
        assert after == {"xrange": before["xrange"], "xrevrange": before["xrevrange"] + 1}
        await _assert_next_is_live(service, clients)
        for sub in clients:
            await sub.close()


async def test_a_resume_after_the_channel_was_forgotten_is_exact_from_the_window_loaded_on_open(
    service: Service, redis_client: aioredis.Redis
) -> None:
    old = await service.publish("world", "published before")
    gone, snapshot = await _watch(service)
    cursor, epoch = snapshot["cursor"], snapshot["epoch"]
    assert cursor == old["id"] and epoch
    await gone.close()
    await _forgotten(service)

    a = await service.publish("world", "Frist")
    b = await service.publish("world", "To be retracted")
    fixed_a = await service.correct(a["id"], text="First")
    await service.retract(b["id"])
    fixed_old = await service.correct(old["id"], urgency=1)
    c = await service.publish("world", "After the changes")

    before = await _reads(redis_client)
    sub = await service.subscriber()
    await sub.subscribe("world", since=cursor, epoch=epoch)
    first = await sub.recv()
    got = await sub.recv_until(6)
    after = await _reads(redis_client)

    assert first == {"type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch}
    assert [(m["type"], m.get("brief", {}).get("id") or m.get("id")) for m in got] == [
        ("brief", a["id"]),
        ("brief", b["id"]),
        ("correction", a["id"]),
        ("retraction", b["id"]),
        ("correction", old["id"]),
        ("brief", c["id"]),
    ]
    assert [got[0]["brief"], got[1]["brief"], got[5]["brief"]] == [a, b, c]
    assert got[2]["brief"] == fixed_a and got[4]["brief"] == fixed_old
    cursors = [m["cursor"] for m in got]
    assert cursors == sorted(cursors, key=_key) and len(set(cursors)) == 6
    assert _key(cursors[0]) > _key(cursor)
    # One read when the channel was opened (meta and the newest events), no XRANGE.
    assert after["xrange"] == before["xrange"], (before, after)
    assert after["xrevrange"] == before["xrevrange"] + 1, (before, after)
    assert cursors[-1] == (await _listed(service))["cursor"]
    await _assert_next_is_live(service, [sub])
    await sub.close()


# 3. A cursor older than the window: Redis answers, exactly.


@pytest.mark.parametrize("followed", [True, False], ids=["channel-open", "channel-forgotten"])
async def test_a_cursor_older_than_the_window_still_resumes_exactly_from_redis_then_live(
    serve_with: Any, redis_client: aioredis.Redis, followed: bool
) -> None:
    async with serve_with(replay_window=5) as service:
        await service.publish("world", "seen")
        away, snapshot = await _watch(service)
        cursor, epoch = snapshot["cursor"], snapshot["epoch"]
        watcher = None
        if followed:  # the window keeps moving past the client's cursor
            watcher, _ = await _watch(service)
        await away.close()
        if not followed:
            await _forgotten(service)

        missed = [await service.publish("world", f"missed {i}") for i in range(20)]
        if watcher is not None:
            assert await watcher.recv_until(20) == [_brief_message(b) for b in missed]
            state = service.hub.channels["world"]
            assert len(state.window) == 5

        before = await _reads(redis_client)
        sub = await service.subscriber()
        await sub.subscribe("world", since=cursor, epoch=epoch)
        first = await sub.recv()
        got = await sub.recv_until(20)
        after = await _reads(redis_client)
        assert first == {
            "type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch
        }
        assert got == [_brief_message(b) for b in missed]
        assert after["xrange"] > before["xrange"], "memory cannot hold this resume"

        live = [await service.publish("world", f"live {i}") for i in range(3)]
        everyone = [sub] if watcher is None else [sub, watcher]
        for client in everyone:
            assert await client.recv_until(3) == [_brief_message(b) for b in live]
        await _assert_next_is_live(service, everyone)
        for client in everyone:
            await client.close()


# 4. The snapshot folded from memory is the one Redis gives.


@pytest.mark.parametrize(
    ("replay_window", "retention", "count", "from_memory"),
    [(1000, 1000, 12, True), (1000, 1000, 70, True), (1000, 20, 16, True), (3, 1000, 10, False)],
    ids=[
        "whole-log-in-memory", "more-than-a-snapshot-in-memory", "whole-retained-log-in-memory",
        "window-smaller-than-log",
    ],
)
async def test_the_snapshot_from_memory_equals_the_list_from_redis_with_corrections_and_retractions(
    serve_with: Any, redis_client: aioredis.Redis, replay_window: int, retention: int,
    count: int, from_memory: bool,
) -> None:
    async with serve_with(replay_window=replay_window, retention_max_events=retention) as service:
        # The channel is opened with its first brief in the log (so its epoch is known;
        # see the "before-any-brief" case of the storm test above for the other way).
        published = [await service.publish("world", "brief 0")]
        watcher, _ = await _watch(service)
        published += [await service.publish("world", f"brief {i}") for i in range(1, count)]
        events = count + 8
        # Still retained when it is changed: the oldest brief, or one near the newest.
        older, old_retracted = (
            (published[0], published[1]) if retention >= events else (published[-6], published[-5])
        )
        await service.correct(published[-1]["id"], text="newest, corrected")
        await service.correct(published[-3]["id"], urgency=1)
        await service.correct(published[-3]["id"], text="corrected twice")
        await service.retract(published[-2]["id"])
        await service.correct(published[-4]["id"], text="corrected then retracted")
        await service.retract(published[-4]["id"])
        await service.correct(older["id"], text="an older one, corrected last")
        await service.retract(old_retracted["id"])
        got = await watcher.recv_until(events - 1)
        assert got[-1] == {
            "type": "retraction", "channel": "world", "id": old_retracted["id"],
            "cursor": got[-1]["cursor"],
        }

        before = await _reads(redis_client)
        sub, snapshot = await _watch(service)
        after = await _reads(redis_client)
        listed = await _listed(service)

        assert snapshot["briefs"] == listed["briefs"]
        assert snapshot["cursor"] == listed["cursor"] == got[-1]["cursor"]
        assert snapshot["epoch"] == listed["epoch"] != ""
        # And the list itself is right: the retained live briefs, newest first.
        retracted = {published[i]["id"] for i in (-2, -4)} | {old_retracted["id"]}
        retained = published[max(0, events - retention) :]  # every change came after them
        live = [b["id"] for b in reversed(retained) if b["id"] not in retracted]
        assert [b["id"] for b in listed["briefs"]] == live[:50]
        texts = [b["text"] for b in listed["briefs"]]
        assert texts[0] == "newest, corrected" and "corrected twice" in texts
        if from_memory:
            assert after == before, "the snapshot should have come from memory"
        else:
            assert after["xrevrange"] > before["xrevrange"], "memory cannot hold this snapshot"
        await _assert_next_is_live(service, [watcher, sub])
        await watcher.close()
        await sub.close()


# 5. What memory must not answer: another epoch, a cursor from the future, a lost log.


@pytest.mark.parametrize("cursor", ["other-epoch", "an-hour-ahead", "just-after-the-newest"])
async def test_a_cursor_memory_cannot_vouch_for_gets_recovered_false_and_a_snapshot(
    service: Service, cursor: str
) -> None:
    published = [await service.publish("world", "brief 0")]
    watcher, _ = await _watch(service)  # the channel is open, its epoch known
    published += [await service.publish("world", f"brief {i}") for i in range(1, 6)]
    assert await watcher.recv_until(5) == [_brief_message(b) for b in published[1:]]
    listed = await _listed(service)
    epoch = listed["epoch"]
    newest = _key(published[-1]["id"])
    since, sent_epoch = {
        "other-epoch": (published[2]["id"], "not-" + epoch),
        "an-hour-ahead": (f"{int(time.time() * 1000) + 3_600_000}-0", epoch),
        "just-after-the-newest": (f"{newest[0]}-{newest[1] + 1}", epoch),
    }[cursor]

    sub = await service.subscriber()
    await sub.subscribe("world", since=since, epoch=sent_epoch)
    assert await sub.recv() == {
        "type": "subscribed", "channel": "world", "recovered": False, "epoch": epoch
    }
    assert await sub.recv() == {
        "type": "snapshot", "channel": "world", "cursor": listed["cursor"], "epoch": epoch,
        "briefs": listed["briefs"],
    }
    await _assert_next_is_live(service, [watcher, sub])
    await watcher.close()
    await sub.close()


@pytest.mark.parametrize("client", ["resume-with-the-old-epoch", "new-subscriber"])
async def test_after_the_log_is_lost_under_an_open_channel_clients_get_the_new_log_only(
    service: Service, redis_client: aioredis.Redis, client: str
) -> None:
    """The log is lost while this process follows the channel (FLUSHALL: a Redis wiped
    without persistence) and starts again with a new epoch. Its live subscribers are
    closed with 1012 at the new log's first event, to resume afresh (what they show came
    from a log that is gone). A resume with a cursor and the epoch of the old log must get
    ``recovered: false``, the new epoch and a snapshot; a new subscriber's snapshot must
    be the new log's, as the list gives it."""
    first = await service.publish("world", "before the loss")
    watcher, snapshot = await _watch(service)
    old = await service.publish("world", "lost with the log")
    assert await watcher.recv() == _brief_message(old)
    old_epoch = snapshot["epoch"]

    await redis_client.flushall()
    service.key = await KeyStore(redis_client).create("test", ["*"])
    new = [await service.publish("world", f"new log {i}") for i in range(3)]
    messages, code, reason = await until_closed(watcher)
    assert (messages, code) == ([], Close.SERVICE_RESTART)
    assert "reconnect and resume" in reason
    watcher = await service.subscriber()
    await watcher.subscribe("world", since=old["id"], epoch=old_epoch)
    assert (await watcher.recv())["recovered"] is False
    assert [b["id"] for b in (await watcher.recv())["briefs"]] == [b["id"] for b in reversed(new)]
    listed = await _listed(service)
    assert listed["epoch"] and listed["epoch"] != old_epoch
    assert [b["id"] for b in listed["briefs"]] == [b["id"] for b in reversed(new)]
    expected = {
        "type": "snapshot", "channel": "world", "cursor": listed["cursor"],
        "epoch": listed["epoch"], "briefs": listed["briefs"],
    }

    sub = await service.subscriber()
    if client == "resume-with-the-old-epoch":
        await sub.subscribe("world", since=first["id"], epoch=old_epoch)
        assert await sub.recv() == {
            "type": "subscribed", "channel": "world", "recovered": False,
            "epoch": listed["epoch"],
        }
    else:
        await sub.subscribe("world")
    assert await sub.recv() == expected
    await _assert_next_is_live(service, [watcher, sub])
    await watcher.close()
    await sub.close()


# 6. A client that stops reading: closed with 4008, and its socket dropped by the server.

OUTBOX = 20
MAX_PUBLISHES = 3000  # far more than the kernel and transport buffers can hold
BIG, TEXT = BIG_FIELDS, BIG_TEXT  # near the largest allowed (tests/conftest.py)


@pytest.mark.parametrize("ws_impl", ["ticker"])
async def test_a_client_that_never_reads_again_is_closed_with_4008_and_its_socket_dropped(
    serve_with: Any,
) -> None:
    async with serve_with(
        outbox_max_messages=OUTBOX, retention_max_events=10_000, ping_timeout=1.0,
        ping_interval=3600.0,  # no keepalive ping: only the close can drop the socket
    ) as service:
        hub = service.hub
        connections = service.server.server_state.connections
        slow = await RawClient.connect(service.port)
        try:
            await slow.send_json({"op": "subscribe", "channel": "world"})
            assert (await slow.json())["type"] == "snapshot"
            assert len(hub.connections) == 1
            conn = next(iter(hub.connections))
            assert conn.sink is not None and conn.sink in connections

            published: list[dict[str, Any]] = []
            for i in range(MAX_PUBLISHES):  # the client reads nothing from here on
                published.append(await service.publish("world", f"{i} {TEXT}", **BIG))
                if conn.closing is not None:
                    break
            assert conn.closing is not None, f"not closed after {len(published)} briefs"
            assert conn.closing[0] == Close.SLOW_CONSUMER

            # The client never takes the close frame: the server drops the socket itself.
            await until(lambda: conn.sink not in connections, "the socket is still held")
            await until(lambda: not hub_holds(hub, conn), "the hub still holds the connection")

            # Reading the socket now gives what the kernel had, then EOF or a reset.
            messages: list[dict[str, Any]] = []
            close_codes: list[int] = []
            ended = False
            for _ in range(MAX_PUBLISHES + 2):
                try:
                    opcode, payload = await slow.frame()
                except (EOFError, ConnectionResetError):
                    ended = True
                    break
                if opcode == 0x8:
                    close_codes.append(struct.unpack("!H", payload[:2])[0])
                else:
                    assert opcode == 0x1 and not close_codes, "a frame after the close frame"
                    messages.append(orjson.loads(payload))
            assert ended, "the socket did not end"
            assert close_codes in ([], [Close.SLOW_CONSUMER])
            ids = [b["id"] for b in published]
            assert [m["cursor"] for m in messages] == ids[: len(messages)]
            assert len(messages) < len(published)
        finally:
            slow.close()
