"""HTTP reads answered from memory (ticker.views): lists, polls, pages and feeds read the
channel the process follows, read Redis once per change at most, and are rendered once
per change of the channel. Real Redis, real uvicorn; Redis's own command counts
(``INFO commandstats``) say what was read."""

from __future__ import annotations

import asyncio
import email.utils
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from starlette.requests import Request

from tests.conftest import Service, until
from ticker.http import last_modified, not_modified_since
from ticker.views import RENDERS_PER_CHANNEL

READS = ("xrange", "xrevrange", "xread", "hmget", "hget", "evalsha")
PATHS = (
    "/v1/channels/world/briefs?limit=20",
    "/embed/world",
    "/embed/world?fragment=1&lang=fr&tz=Europe/Paris",
    "/v1/channels/world/feed.rss",
    "/v1/channels/world/feed.atom",
    "/v1/channels/world/feed.json",
)


async def _calls(redis_client: aioredis.Redis) -> dict[str, int]:
    """How many times Redis ran each read command (scripts' included)."""
    stats: dict[str, Any] = await redis_client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in READS}


async def _quiet(redis_client: aioredis.Redis, service: Service) -> dict[str, int]:
    """The command counts once the reader has settled (it reads the log after a bell)."""
    before = await _calls(redis_client)
    for _ in range(50):
        await asyncio.sleep(0.05)
        now = await _calls(redis_client)
        if now == before:
            return now
        before = now
    raise AssertionError("Redis did not settle")


async def test_gets_of_an_unchanged_channel_read_redis_once_then_never(
    service: Service, redis_client: aioredis.Redis
) -> None:
    for i in range(3):
        await service.publish("world", f"brief {i}")
    first = {path: await service.http.get(path) for path in PATHS}
    assert all(r.status_code == 200 for r in first.values()), {
        p: r.status_code for p, r in first.items()
    }
    assert "world" in service.hub.leases
    before = await _quiet(redis_client, service)
    for _ in range(5):
        for path in PATHS:
            r = await service.http.get(path)
            assert r.status_code == 200
            assert r.content == first[path].content
            assert r.headers["etag"] == first[path].headers["etag"]
    assert await _calls(redis_client) == before, "a GET of an unchanged channel read Redis"


async def test_a_new_brief_reaches_every_get_through_the_reader_not_a_read_per_request(
    service: Service, redis_client: aioredis.Redis
) -> None:
    old = await service.publish("world", "old")
    for path in PATHS:
        assert (await service.http.get(path)).status_code == 200
    state = service.hub.channels["world"]
    assert len(state.renders) == len(PATHS)
    before = await _quiet(redis_client, service)

    new = await service.publish("world", "new brief, read by the reader")
    await until(lambda: not state.renders, "the new brief did not empty the channel's answers")
    listed = (await service.http.get("/v1/channels/world/briefs?limit=20")).json()
    assert [b["id"] for b in listed["briefs"]] == [new["id"], old["id"]]
    assert listed["cursor"] == new["id"]
    assert "new brief, read by the reader" in (await service.http.get("/embed/world")).text
    assert new["id"] in (await service.http.get("/v1/channels/world/feed.json")).text
    after = await _calls(redis_client)
    # The reader's one XREAD of the log brought it; no snapshot was read (XREVRANGE).
    assert after["xrevrange"] == before["xrevrange"]
    assert after["xread"] > before["xread"]


async def test_polls_since_the_newest_cursor_read_nothing_and_then_get_exactly_what_came(
    service: Service, redis_client: aioredis.Redis
) -> None:
    first = await service.publish("world", "first")
    listed = (await service.http.get("/v1/channels/world/briefs")).json()
    url = f"/v1/channels/world/briefs?since={listed['cursor']}&epoch={listed['epoch']}"
    before = await _quiet(redis_client, service)
    empty = await service.http.get(url)
    assert empty.json() == {
        "recovered": True, "events": [], "cursor": first["id"], "epoch": listed["epoch"],
    }
    again = await service.http.get(url, headers={"If-None-Match": empty.headers["etag"]})
    assert again.status_code == 304
    assert await _calls(redis_client) == before

    second = await service.publish("world", "second")
    await service.correct(first["id"], text="first, corrected")
    state = service.hub.channels["world"]
    await until(lambda: len(state.window) == 3, "the reader did not bring both events")
    changed = (await service.http.get(url)).json()
    assert [e["type"] for e in changed["events"]] == ["brief", "correction"]
    assert changed["events"][0]["brief"] == second
    assert changed["events"][1]["brief"]["text"] == "first, corrected"
    assert changed["cursor"] == changed["events"][1]["cursor"]
    after = await _calls(redis_client)
    # No resume was read (Store.since: HMGET of the meta and XRANGE), nor a snapshot; the
    # write scripts' own XRANGE (retention by age) are the only ones.
    assert after["hmget"] == before["hmget"] and after["xrevrange"] == before["xrevrange"]


async def test_a_cursor_older_than_memory_is_answered_by_redis_exactly(
    serve_with: Any,
) -> None:
    async with serve_with(replay_window=3) as service:
        briefs = [await service.publish("world", f"brief {i}") for i in range(6)]
        listed = (await service.http.get("/v1/channels/world/briefs")).json()
        r = await service.http.get(
            f"/v1/channels/world/briefs?since={briefs[0]['id']}&epoch={listed['epoch']}"
        )
        body = r.json()
        assert body["recovered"] is True
        assert [e["brief"]["id"] for e in body["events"]] == [b["id"] for b in briefs[1:]]


async def test_a_list_longer_than_memory_holds_comes_from_redis(serve_with: Any) -> None:
    async with serve_with(replay_window=3) as service:
        briefs = [await service.publish("world", f"brief {i}") for i in range(6)]
        listed = (await service.http.get("/v1/channels/world/briefs?limit=5")).json()
        assert [b["id"] for b in listed["briefs"]] == [b["id"] for b in reversed(briefs[1:])]


async def test_a_channel_is_followed_for_http_reads_only_for_a_while(serve_with: Any) -> None:
    async with serve_with(http_follow_seconds=1.0) as service:
        await service.publish("world", "a brief")
        assert (await service.http.get("/embed/world")).status_code == 200
        assert "world" in service.hub.channels
        await until(lambda: "world" not in service.hub.channels,
                    "the channel was still followed after its lease", polls=600)
        assert not service.hub.leases


async def test_a_lease_keeps_a_channel_after_its_last_subscriber_leaves(
    service: Service,
) -> None:
    await service.publish("world", "a brief")
    sub = await service.subscriber()
    await sub.subscribe("world")
    await sub.recv()
    assert (await service.http.get("/v1/channels/world/briefs")).status_code == 200
    await sub.close()
    await until(lambda: not service.hub.channels["world"].subscribers, "subscriber gone")
    assert "world" in service.hub.channels  # still followed for the GETs


async def test_at_most_http_follow_max_channels_are_followed_for_gets(serve_with: Any) -> None:
    async with serve_with(http_follow_max_channels=2) as service:
        for name in ("a", "b", "c"):
            await service.publish(name, f"in {name}")
        for name in ("a", "b", "c"):
            assert (await service.http.get(f"/v1/channels/{name}/briefs")).status_code == 200
        assert list(service.hub.leases) == ["b", "c"]
        assert set(service.hub.channels) == {"b", "c"}


async def test_made_up_channels_are_answered_empty_without_being_followed(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await service.publish("world", "a brief")
    await until(lambda: service.hub.reader_for("x").known is not None, "reader anchored")
    before = await _quiet(redis_client, service)
    for i in range(50):
        r = await service.http.get(f"/v1/channels/made-up-{i}/briefs")
        assert r.json() == {"briefs": [], "cursor": "0-0", "epoch": ""}
    assert not service.hub.channels and not service.hub.leases
    assert await _calls(redis_client) == before


async def test_the_page_revalidates_with_its_etag(service: Service) -> None:
    await service.publish("world", "a brief")
    page = await service.http.get("/embed/world?lang=fr")
    etag = page.headers["etag"]
    assert (await service.http.get("/embed/world?lang=fr",
                                   headers={"If-None-Match": etag})).status_code == 304
    # Another option is another representation.
    other = await service.http.get("/embed/world?lang=de", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    await service.publish("world", "another brief")
    await until(lambda: not service.hub.channels["world"].renders, "renders kept")
    changed = await service.http.get("/embed/world?lang=fr", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and "another brief" in changed.text


async def test_a_feed_has_last_modified_once_its_second_is_over_and_honours_it(
    service: Service,
) -> None:
    brief = await service.publish("world", "a brief")
    first = await service.http.get("/v1/channels/world/feed.rss")
    assert "last-modified" not in first.headers  # the second of the change is not over
    await asyncio.sleep(3.1)
    feed = await service.http.get("/v1/channels/world/feed.rss")
    modified = feed.headers["last-modified"]
    second = int(brief["id"].split("-")[0]) // 1000
    assert email.utils.parsedate_to_datetime(modified).timestamp() == second
    assert (await service.http.get("/v1/channels/world/feed.rss",
                                   headers={"If-Modified-Since": modified})).status_code == 304
    earlier = email.utils.formatdate(second - 1, usegmt=True)
    assert (await service.http.get("/v1/channels/world/feed.rss",
                                   headers={"If-Modified-Since": earlier})).status_code == 200


def _request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"if_modified_since": "Sat, 01 Jan 2000 00:00:10 GMT"}, True),  # the same second
        ({"if_modified_since": "Sat, 01 Jan 2000 00:00:09 GMT"}, False),  # before the change
        ({"if_modified_since": "not a date"}, False),
        ({"if_modified_since": "Sat, 01 Jan 2000 00:00:10 GMT", "if_none_match": '"x"'}, False),
        ({}, False),
    ],
)
def test_if_modified_since_is_compared_with_the_second_of_the_last_change(
    headers: dict[str, str], expected: bool
) -> None:
    cursor = "946684810500-3"  # 2000-01-01T00:00:10.500Z
    assert last_modified(cursor) == "Sat, 01 Jan 2000 00:00:10 GMT"
    assert not_modified_since(_request(**headers), cursor) is expected


def test_no_last_modified_for_a_channel_that_never_changed() -> None:
    assert last_modified("0-0") is None


async def test_answers_kept_per_channel_are_bounded(service: Service) -> None:
    await service.publish("world", "a brief")
    for limit in range(1, 60):
        assert (await service.http.get(f"/embed/world?limit={limit}")).status_code == 200
    assert len(service.hub.channels["world"].renders) == RENDERS_PER_CHANNEL
    listed = orjson.loads((await service.http.get("/v1/channels/world/briefs?limit=1")).content)
    assert listed["briefs"][0]["text"] == "a brief"


async def test_a_writer_reads_its_own_write_though_the_reader_is_late(service: Service) -> None:
    """The reader is held back 0.3 s before each dispatch: a list, a poll and a WebSocket
    snapshot asked right after a publish answered by this process still hold it (they
    wait for the reader, not for Redis)."""
    old = await service.publish("world", "old")
    assert (await service.http.get("/v1/channels/world/briefs")).status_code == 200
    hub = service.hub
    real = hub.dispatch_reads

    async def late(reads: Any) -> None:
        await asyncio.sleep(0.3)
        await real(reads)

    hub.dispatch_reads = late
    try:
        new = await service.publish("world", "new")
        listed = (await service.http.get("/v1/channels/world/briefs")).json()
        assert [b["id"] for b in listed["briefs"]] == [new["id"], old["id"]]
        fixed = await service.correct(old["id"], text="old, corrected")
        polled = (await service.http.get(
            f"/v1/channels/world/briefs?since={new['id']}&epoch={listed['epoch']}"
        )).json()
        assert [e["brief"] for e in polled["events"]] == [fixed]
        await service.retract(new["id"])
        sub = await service.subscriber()
        await sub.subscribe("world")
        snapshot = await sub.recv()
        assert [b["text"] for b in snapshot["briefs"]] == ["old, corrected"]
        await sub.close()
    finally:
        hub.dispatch_reads = real
