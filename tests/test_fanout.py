"""Publish -> every subscriber, channel isolation, live corrections and retractions."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Service


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    """Both ways frames leave: ticker's own protocol's sink, and plain ASGI sends."""
    return str(request.param)


async def test_every_subscriber_receives_a_published_brief(service: Service) -> None:
    subs = [await service.subscriber() for _ in range(5)]
    for sub in subs:
        await sub.subscribe("world")
        snapshot = await sub.recv()
        assert snapshot["type"] == "snapshot" and snapshot["briefs"] == []
    brief = await service.publish("world", "Tsahal ne se retirera pas de cinq avant-postes")
    for sub in subs:
        event = await sub.recv()
        assert event == {"type": "brief", "channel": "world", "brief": brief, "cursor": brief["id"]}
        await sub.close()


async def test_three_channels_are_isolated(service: Service) -> None:
    channels = ["world", "sport", "culture"]
    subs = {}
    for channel in channels:
        subs[channel] = await service.subscriber()
        await subs[channel].subscribe(channel)
        assert (await subs[channel].recv())["type"] == "snapshot"
    published = {ch: [await service.publish(ch, f"{ch} {i}") for i in range(3)] for ch in channels}
    for channel, sub in subs.items():
        got = await sub.recv_until(3)
        assert [m["brief"]["text"] for m in got] == [b["text"] for b in published[channel]]
        assert all(m["channel"] == channel for m in got)
        assert await sub.nothing_within(0.3)
        await sub.close()


async def test_several_channels_on_one_connection(service: Service) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    await sub.subscribe("sport")
    assert {(await sub.recv())["channel"] for _ in range(2)} == {"world", "sport"}
    await service.publish("sport", "goal")
    await service.publish("world", "summit")
    got = await sub.recv_until(2)
    assert [(m["channel"], m["brief"]["text"]) for m in got] == [("sport", "goal"), ("world", "summit")]
    await sub.send({"op": "unsubscribe", "channel": "sport"})
    assert await sub.recv() == {"type": "unsubscribed", "channel": "sport"}
    await service.publish("sport", "second goal")
    await service.publish("world", "second summit")
    got_one = await sub.recv()
    assert got_one["channel"] == "world" and got_one["brief"]["text"] == "second summit"
    assert await sub.nothing_within(0.3)
    await sub.close()


async def test_correction_and_retraction_arrive_live_and_show_in_get(service: Service) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    await sub.recv()
    brief = await service.publish("world", "Frist draft")
    keep = await service.publish("world", "Other news")
    assert (await sub.recv())["brief"]["id"] == brief["id"]
    assert (await sub.recv())["brief"]["id"] == keep["id"]

    r = await service.http.patch(
        f"/v1/channels/world/briefs/{brief['id']}", json={"text": "First draft"}, headers=service.auth()
    )
    assert r.status_code == 200
    fixed = r.json()
    assert fixed["text"] == "First draft" and fixed["version"] == 2 and fixed["updated_at"]
    correction = await sub.recv()
    assert correction["type"] == "correction" and correction["brief"] == fixed
    assert correction["cursor"] > keep["id"]

    listed = (await service.http.get("/v1/channels/world/briefs")).json()
    assert [b["text"] for b in listed["briefs"]] == ["Other news", "First draft"]
    assert listed["cursor"] == correction["cursor"]

    r = await service.http.delete(f"/v1/channels/world/briefs/{keep['id']}", headers=service.auth())
    assert r.status_code == 204
    retraction = await sub.recv()
    assert retraction == {
        "type": "retraction", "channel": "world", "id": keep["id"], "cursor": retraction["cursor"]
    }
    listed = (await service.http.get("/v1/channels/world/briefs")).json()
    assert [b["id"] for b in listed["briefs"]] == [brief["id"]]
    single = (await service.http.get(f"/v1/channels/world/briefs/{keep['id']}")).json()
    assert single["status"] == "canceled"
    await sub.close()


async def test_subscribers_connected_concurrently_all_get_every_brief(service: Service) -> None:
    async def listen(n: int) -> list[str]:
        sub = await service.subscriber()
        await sub.subscribe("world")
        await sub.recv()
        ready.release()
        got = [(await sub.recv())["brief"]["text"] for _ in range(n)]
        await sub.close()
        return got

    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(listen(20)) for _ in range(10)]
    for _ in tasks:
        await ready.acquire()
    texts = [f"brief {i}" for i in range(20)]
    for text in texts:
        await service.publish("world", text)
    assert all(result == texts for result in await asyncio.gather(*tasks))


async def test_ping_is_answered_with_pong_between_live_events(service: Service) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    await sub.recv()
    await sub.send({"op": "ping"})
    assert await sub.recv() == {"type": "pong"}
    brief = await service.publish("world", "after the ping")
    assert (await sub.recv())["brief"]["id"] == brief["id"]
    await sub.close()
