"""Resume from a cursor: exactly what was missed, in order, once; never partially.

Plus the refusals of the WebSocket endpoint: bad messages, limits, Origin.
Everything runs against a real Redis, a real uvicorn and real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import websockets

from tests.conftest import RawClient, Service, Subscriber, until_closed
from ticker.protocol import Close


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    """Both ways frames leave: ticker's own protocol's sink, and plain ASGI sends."""
    return str(request.param)


async def _cursor_of(service: Service, channel: str) -> tuple[str, str]:
    """Subscribe, take the snapshot's cursor and epoch, and go away."""
    sub = await service.subscriber()
    await sub.subscribe(channel)
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot"
    await sub.close()
    return snapshot["cursor"], snapshot["epoch"]


async def _resume(
    service: Service, channel: str, since: str, **fields: Any
) -> tuple[Subscriber, dict[str, Any]]:
    sub = await service.subscriber()
    await sub.subscribe(channel, since=since, **fields)
    return sub, await sub.recv()


async def _assert_next_is_live(service: Service, sub: Subscriber, channel: str) -> None:
    """Publish one more brief: it must be the very next message (nothing stray before it)."""
    brief = await service.publish(channel, "live after resume")
    expected = {"type": "brief", "channel": channel, "brief": brief, "cursor": brief["id"]}
    assert await sub.recv() == expected


async def test_resume_after_100_missed_briefs_gives_exactly_those_in_order_then_live(
    service: Service,
) -> None:
    for i in range(3):
        await service.publish("world", f"seen {i}")
    cursor, epoch = await _cursor_of(service, "world")
    missed = [await service.publish("world", f"missed {i}") for i in range(100)]

    sub, first = await _resume(service, "world", cursor, epoch=epoch)
    assert first == {"type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch}
    caught_up = await sub.recv_until(100)
    assert [m["type"] for m in caught_up] == ["brief"] * 100
    assert [m["brief"] for m in caught_up] == missed
    assert [m["cursor"] for m in caught_up] == [b["id"] for b in missed]
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


async def test_resume_includes_corrections_and_retractions_made_while_away_in_order(
    service: Service,
) -> None:
    before = await service.publish("world", "published before")
    cursor, _ = await _cursor_of(service, "world")
    a = await service.publish("world", "Frist")
    b = await service.publish("world", "To be retracted")
    r = await service.http.patch(
        f"/v1/channels/world/briefs/{a['id']}", json={"text": "First"}, headers=service.auth()
    )
    assert r.status_code == 200
    fixed_a = r.json()
    r = await service.http.delete(f"/v1/channels/world/briefs/{b['id']}", headers=service.auth())
    assert r.status_code == 204
    r = await service.http.patch(
        f"/v1/channels/world/briefs/{before['id']}", json={"urgency": 1}, headers=service.auth()
    )
    assert r.status_code == 200
    fixed_before = r.json()
    c = await service.publish("world", "After the changes")
    listed = (await service.http.get("/v1/channels/world/briefs")).json()

    sub, first = await _resume(service, "world", cursor)
    assert first["type"] == "subscribed" and first["recovered"] is True
    got = await sub.recv_until(6)
    assert [(m["type"], m.get("brief", {}).get("id") or m.get("id")) for m in got] == [
        ("brief", a["id"]),
        ("brief", b["id"]),
        ("correction", a["id"]),
        ("retraction", b["id"]),
        ("correction", before["id"]),
        ("brief", c["id"]),
    ]
    assert got[2]["brief"] == fixed_a and fixed_a["version"] == 2
    assert got[4]["brief"] == fixed_before and fixed_before["urgency"] == 1
    cursors = [m["cursor"] for m in got]
    assert cursors == sorted(cursors, key=lambda s: tuple(map(int, s.split("-"))))
    assert len(set(cursors)) == 6 and cursors[0] > cursor
    assert cursors[-1] == listed["cursor"] == c["id"]
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


async def _resume_during_publishing(service: Service, watched: bool) -> None:
    """Resume several clients while a publisher runs; each must see every brief after its
    cursor exactly once, in order, across the join of catch-up and live."""
    watcher = None
    if watched:  # the channel already has a live subscriber in this process
        watcher = await service.subscriber()
        await watcher.subscribe("world")
        assert (await watcher.recv())["type"] == "snapshot"
    await service.publish("world", "before")
    cursor, epoch = await _cursor_of(service, "world")

    published: list[dict[str, Any]] = []
    halfway = asyncio.Event()

    async def publisher() -> None:
        for i in range(120):
            published.append(await service.publish("world", f"concurrent {i}"))
            if i == 20:
                halfway.set()

    task = asyncio.create_task(publisher())
    try:
        await asyncio.wait_for(halfway.wait(), 20)
        # Several resumes at different moments of the stream, while it keeps moving.
        subs = []
        for _ in range(4):
            sub, first = await _resume(service, "world", cursor, epoch=epoch)
            assert first["type"] == "subscribed" and first["recovered"] is True
            subs.append(sub)
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    assert len(published) == 120
    expected = [b["id"] for b in published]
    for sub in subs:
        got = await sub.recv_until(len(expected))
        assert [m["type"] for m in got] == ["brief"] * len(expected)
        assert [m["brief"]["id"] for m in got] == expected
    sentinel = await service.publish("world", "sentinel")
    for sub in subs:
        assert (await sub.recv())["cursor"] == sentinel["id"]  # no duplicate before it
        await sub.close()
    if watcher is not None:
        got = await watcher.recv_until(len(expected) + 2)
        assert [m["brief"]["id"] for m in got][1:] == [*expected, sentinel["id"]]
        await watcher.close()


async def test_resume_while_publishing_concurrently_gives_every_brief_once_in_order(
    service: Service,
) -> None:
    await _resume_during_publishing(service, watched=False)


async def test_resume_while_publishing_on_a_channel_already_followed_gives_every_brief_once(
    service: Service,
) -> None:
    await _resume_during_publishing(service, watched=True)


async def test_trimmed_history_gives_recovered_false_and_a_snapshot_never_a_partial_recovery(
    serve_with: Any,
) -> None:
    async with serve_with(retention_max_events=20) as service:
        early = [await service.publish("world", f"early {i}") for i in range(5)]
        cursor, epoch = await _cursor_of(service, "world")
        assert cursor == early[-1]["id"]
        later = [await service.publish("world", f"later {i}") for i in range(50)]

        sub, first = await _resume(service, "world", cursor, epoch=epoch)
        assert first == {
            "type": "subscribed", "channel": "world", "recovered": False, "epoch": epoch
        }
        snapshot = await sub.recv()
        assert snapshot["type"] == "snapshot"
        assert snapshot["briefs"] == list(reversed(later[-20:]))
        assert snapshot["cursor"] == later[-1]["id"] and snapshot["epoch"] == epoch
        await _assert_next_is_live(service, sub, "world")
        await sub.close()


async def test_cursor_at_the_newest_trimmed_event_still_recovers_and_one_before_does_not(
    serve_with: Any,
) -> None:
    async with serve_with(retention_max_events=20) as service:
        ids = [(await service.publish("world", f"brief {i}"))["id"] for i in range(55)]
        # 20 retained: ids[35:]; the floor (newest trimmed) is ids[34].
        sub, first = await _resume(service, "world", ids[34])
        assert first["recovered"] is True
        got = await sub.recv_until(20)
        assert [m["cursor"] for m in got] == ids[35:]
        await _assert_next_is_live(service, sub, "world")
        await sub.close()

        sub, first = await _resume(service, "world", ids[33])
        assert first["recovered"] is False
        snapshot = await sub.recv()
        assert snapshot["type"] == "snapshot" and len(snapshot["briefs"]) == 20
        await sub.close()


async def test_right_epoch_recovers_and_wrong_epoch_gives_a_snapshot(service: Service) -> None:
    await service.publish("world", "one")
    cursor, epoch = await _cursor_of(service, "world")
    assert epoch
    missed = await service.publish("world", "two")

    sub, first = await _resume(service, "world", cursor, epoch=epoch)
    assert first == {"type": "subscribed", "channel": "world", "recovered": True, "epoch": epoch}
    assert (await sub.recv())["brief"] == missed
    await sub.close()

    sub, first = await _resume(service, "world", cursor, epoch="not-" + epoch)
    assert first == {"type": "subscribed", "channel": "world", "recovered": False, "epoch": epoch}
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot" and snapshot["cursor"] == missed["id"]
    assert [b["text"] for b in snapshot["briefs"]] == ["two", "one"]
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


async def test_cursor_from_the_future_gives_recovered_false_and_a_snapshot(
    service: Service,
) -> None:
    brief = await service.publish("world", "now")
    future = f"{int(time.time() * 1000) + 3_600_000}-0"
    sub, first = await _resume(service, "world", future)
    assert first["type"] == "subscribed" and first["recovered"] is False
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot" and snapshot["briefs"] == [brief]
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


async def test_since_zero_on_a_channel_that_never_had_briefs_recovers_nothing_then_live(
    service: Service,
) -> None:
    sub, first = await _resume(service, "fresh", "0-0")
    assert first["type"] == "subscribed" and first["recovered"] is True
    await _assert_next_is_live(service, sub, "fresh")
    await sub.close()

    # A non-zero cursor on a channel with no log cannot be honoured exactly.
    sub, first = await _resume(service, "empty", "1700000000000-0")
    assert first["recovered"] is False
    snapshot = await sub.recv()
    assert snapshot == {
        "type": "snapshot", "channel": "empty", "briefs": [], "cursor": "0-0", "epoch": ""
    }
    await sub.close()


async def test_bad_messages_get_an_error_and_the_connection_stays_usable(service: Service) -> None:
    sub = await service.subscriber()
    cases: list[tuple[str | bytes, str]] = [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"subscribe"', "bad_message"),
        ('{"op": "publish", "channel": "world"}', "unknown_op"),
        ('{"channel": "world"}', "unknown_op"),
        ('{"op": "subscribe"}', "bad_channel"),
        ('{"op": "subscribe", "channel": "World!"}', "bad_channel"),
        ('{"op": "subscribe", "channel": "world", "since": "yesterday"}', "bad_cursor"),
        ('{"op": "subscribe", "channel": "world", "since": 17}', "bad_cursor"),
        ('{"op": "subscribe", "channel": "world", "epoch": 5}', "bad_cursor"),
        ('{"op": "subscribe", "channel": "world", "extra": 1}', "bad_message"),
        ('{"op": "unsubscribe", "channel": "world"}', "not_subscribed"),
        (b"\xff\xfe", "bad_json"),
    ]
    for data, code in cases:
        await sub.ws.send(data)
        reply = await sub.recv()
        assert reply["type"] == "error" and reply["code"] == code, (data, reply)
        assert reply["message"]
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    await sub.subscribe("world")
    reply = await sub.recv()
    assert reply["type"] == "error" and reply["code"] == "already_subscribed"
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


async def test_too_many_subscriptions_close_the_connection_with_1008_and_a_reason(
    serve_with: Any,
) -> None:
    async with serve_with(max_subscriptions=2) as service:
        sub = await service.subscriber()
        await sub.subscribe("one")
        await sub.subscribe("two")
        assert {(await sub.recv())["channel"] for _ in range(2)} == {"one", "two"}
        await sub.subscribe("three")
        messages, code, reason = await until_closed(sub)
        assert messages == []
        assert code == Close.POLICY_VIOLATION
        assert "too many subscriptions" in reason and "2" in reason


async def test_an_inbound_message_over_the_limit_closes_with_1009(serve_with: Any) -> None:
    async with serve_with(ws_max_message_bytes=1024) as service:
        sub = await service.subscriber()
        await sub.subscribe("world")
        assert (await sub.recv())["type"] == "snapshot"
        await sub.send({"op": "subscribe", "channel": "sport", "epoch": "x" * 2000})
        messages, code, _ = await until_closed(sub)
        assert messages == []
        assert code == Close.MESSAGE_TOO_BIG


async def test_origin_not_allowed_is_closed_with_1008_while_allowed_and_absent_origin_work(
    serve_with: Any,
) -> None:
    async with serve_with(allowed_origins=("https://news.example.org",)) as service:
        evil = await service.subscriber(origin="https://evil.example.com")
        messages, code, reason = await until_closed(evil)
        assert (messages, code, reason) == ([], Close.POLICY_VIOLATION, "origin not allowed")

        good = await service.subscriber(origin="https://news.example.org")
        no_origin = await service.subscriber()
        assert "Origin" not in no_origin.ws.request.headers
        for sub in (good, no_origin):
            await sub.subscribe("world")
            assert (await sub.recv())["type"] == "snapshot"
        brief = await service.publish("world", "for allowed readers")
        for sub in (good, no_origin):
            assert (await sub.recv())["brief"] == brief
            await sub.close()


async def test_subscribe_without_subprotocol_is_served_too(service: Service) -> None:
    ws = await websockets.connect(service.ws_url)
    sub = Subscriber(ws)
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    await _assert_next_is_live(service, sub, "world")
    await sub.close()


# Messages that arrive together (one TCP segment) are handled before any subscribe task
# has run: the limits and the subscribed/unsubscribed state must hold all the same.


def _port(service: Service) -> int:
    return int(service.base.rsplit(":", 1)[1])


async def test_subscribe_twice_in_one_packet_subscribes_once_and_delivers_each_brief_once(
    service: Service,
) -> None:
    raw = await RawClient.connect(_port(service))
    try:
        subscribe = {"op": "subscribe", "channel": "world"}
        await raw.send_json(subscribe, subscribe)
        replies = [await raw.json(), await raw.json()]
        assert sorted(m["type"] for m in replies) == ["error", "snapshot"]
        assert next(m for m in replies if m["type"] == "error")["code"] == "already_subscribed"
        one = await service.publish("world", "one")
        two = await service.publish("world", "two")
        assert [(await raw.json())["cursor"] for _ in range(2)] == [one["id"], two["id"]]
    finally:
        raw.close()


async def test_subscriptions_sent_in_one_packet_cannot_pass_the_limit(serve_with: Any) -> None:
    async with serve_with(max_subscriptions=2) as service:
        raw = await RawClient.connect(_port(service))
        try:
            await raw.send_json(
                *({"op": "subscribe", "channel": ch} for ch in ("one", "two", "three", "four"))
            )
            messages, code = await raw.until_close()
            assert code == Close.POLICY_VIOLATION
            assert all(m["channel"] in ("one", "two") for m in messages)
        finally:
            raw.close()


async def test_unsubscribe_right_after_subscribe_in_one_packet_unsubscribes(
    service: Service,
) -> None:
    raw = await RawClient.connect(_port(service))
    try:
        await raw.send_json(
            {"op": "subscribe", "channel": "world"}, {"op": "unsubscribe", "channel": "world"}
        )
        reply = await raw.json()
        if reply["type"] == "snapshot":  # the subscribe may have been served first
            reply = await raw.json()
        assert reply == {"type": "unsubscribed", "channel": "world"}
        await raw.send_json({"op": "subscribe", "channel": "sport"})
        assert (await raw.json())["type"] == "snapshot"
        await service.publish("world", "not for this client any more")
        sport = await service.publish("sport", "for it")
        assert (await raw.json())["cursor"] == sport["id"]
    finally:
        raw.close()


async def test_a_client_leaving_during_the_first_subscribe_of_a_channel_does_not_wedge_it(
    serve_with: Any, redis_server: Any
) -> None:
    """The first subscriber of a channel in a process looks up where the channel is; if
    it goes away during that lookup, the others who joined meanwhile are still served.
    Redis is held still with SIGSTOP (a real signal, no timing) to catch the moment; the
    Redis timeout is long so that the lookup waits instead of failing meanwhile."""
    async with serve_with(redis_timeout=60.0) as service:
        await _leave_during_first_subscribe(service, redis_server)


async def _leave_during_first_subscribe(service: Service, redis_server: Any) -> None:
    hub = service.app.state.services.hub
    # A channel that exists (one never published is opened with no lookup at all), once
    # the process knows it does.
    await service.publish("world", "before anyone listens")
    for _ in range(500):
        if hub.reader_for("world").exists("world"):
            break
        await asyncio.sleep(0.01)
    first = await service.subscriber()
    second = await service.subscriber()
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        await first.subscribe("world")
        for _ in range(500):  # the lookup has started and is waiting on Redis
            if "world" in hub.channels:
                break
            await asyncio.sleep(0.01)
        state = hub.channels["world"]
        assert not state.ready.done()
        await second.subscribe("world")
        for _ in range(500):
            if len(state.subscribers) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(state.subscribers) == 2
        await first.close()
        for _ in range(500):  # the server has seen the first client go
            if len(hub.connections) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(hub.connections) == 1
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert (await second.recv())["type"] == "snapshot"
    await _assert_next_is_live(service, second, "world")
    await second.close()
