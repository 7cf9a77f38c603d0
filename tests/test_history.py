"""The audit trail of briefs: ``GET /v1/channels/{channel}/briefs/{id}/history``.

Every write records a version (kind, the writing key's name, the time, what changed) in
the write's own script; replays and no-op retractions record nothing; retention drops a
brief's history with the brief; the history is for the channel's writers only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from tests.conftest import Service
from ticker import history
from ticker.auth import KeyStore
from ticker.keys import SINGLE
from ticker.store import key_of


def _at(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _history(service: Service, brief_id: str, key: str | None = None,
                   channel: str = "world") -> Any:
    r = await service.http.get(
        f"/v1/channels/{channel}/briefs/{brief_id}/history", headers=service.auth(key)
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()


async def test_publish_two_corrections_and_a_retraction_make_four_versions_by_their_keys(
    service: Service, redis_client: aioredis.Redis
) -> None:
    desk = await KeyStore(redis_client).create("desk", ["world"])
    editor = await KeyStore(redis_client).create("night-editor", ["world", "sport"])
    service.key = desk
    brief = await service.publish("world", "Quake hits coast", urgency=2, tags=["quake"])
    service.key = editor
    first = await service.correct(brief["id"], text="Quake of 6.1 hits coast")
    service.key = desk
    second = await service.correct(brief["id"], urgency=1, url="https://example.com/q")
    service.key = editor
    await service.retract(brief["id"])
    await service.retract(brief["id"])  # retracted already: nothing changes, no version

    got = await _history(service, brief["id"], desk)
    assert got["channel"] == "world" and got["id"] == brief["id"]
    versions = got["versions"]
    assert [(v["version"], v["kind"], v["by"]) for v in versions] == [
        (1, "publish", "desk"), (2, "correction", "night-editor"),
        (3, "correction", "desk"), (4, "retraction", "night-editor"),
    ]
    published = {k: v for k, v in brief.items() if k != "id"}
    assert versions[0]["changes"] == published
    assert versions[1]["changes"] == {"text": "Quake of 6.1 hits coast"}
    assert versions[2]["changes"] == {"urgency": 1, "url": "https://example.com/q"}
    assert versions[3]["changes"] == {"status": "canceled"}
    # Each version's time is its event's in the log, in order, close to the brief's.
    assert versions[0]["event"] == brief["id"]
    assert [key_of(v["event"]) for v in versions] == sorted(key_of(v["event"]) for v in versions)
    times = [_at(v["at"]) for v in versions]
    assert times == sorted(times)
    assert abs(times[1] - _at(first["updated_at"])) < 5
    assert abs(times[2] - _at(second["updated_at"])) < 5
    # The key name is internal: never in what readers get.
    public = await service.http.get(f"/v1/channels/world/briefs/{brief['id']}")
    assert b"desk" not in public.content and b"night-editor" not in public.content
    assert "by" not in public.json()


async def test_an_idempotent_replay_records_no_version(service: Service) -> None:
    brief = await service.publish("world", "Once", idempotency_key="same")
    again = await service.publish("world", "Once", idempotency_key="same")
    assert again["id"] == brief["id"]
    versions = (await _history(service, brief["id"]))["versions"]
    assert [(v["version"], v["kind"], v["by"]) for v in versions] == [(1, "publish", "test")]


async def test_history_goes_with_the_brief_when_retention_drops_it(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(retention_max_events=3) as service:
        old = await service.publish("world", "old")
        await service.correct(old["id"], text="old, corrected")
        assert len((await _history(service, old["id"]))["versions"]) == 2
        for i in range(3):
            await service.publish("world", f"new {i}")
        r = await service.http.get(
            f"/v1/channels/world/briefs/{old['id']}/history", headers=service.auth()
        )
        assert r.status_code == 404, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert not await redis_client.hexists(SINGLE.history("world"), old["id"])
        assert await redis_client.hlen(SINGLE.history("world")) == 3  # the retained ones


async def test_past_the_cap_the_first_version_and_the_newest_stay(service: Service) -> None:
    brief = await service.publish("world", "v1")
    for i in range(2, history.MAX_VERSIONS + 6):
        await service.correct(brief["id"], text=f"v{i}")
    versions = (await _history(service, brief["id"]))["versions"]
    assert len(versions) == history.MAX_VERSIONS
    numbers = [v["version"] for v in versions]
    assert numbers == [1, *range(7, history.MAX_VERSIONS + 6)]
    assert versions[0]["changes"]["text"] == "v1"
    assert versions[-1]["changes"] == {"text": f"v{history.MAX_VERSIONS + 5}"}


async def test_history_needs_a_key_of_the_channel_and_a_retained_brief(
    service: Service, redis_client: aioredis.Redis
) -> None:
    brief = await service.publish("world", "Private trail")
    url = f"/v1/channels/world/briefs/{brief['id']}/history"
    r = await service.http.get(url)
    assert r.status_code == 401 and r.json()["type"] == "urn:ticker:problem:unauthorized"
    assert "www-authenticate" in r.headers
    sport = await KeyStore(redis_client).create("sport-desk", ["sport"])
    r = await service.http.get(url, headers=service.auth(sport))
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await service.http.get("/v1/channels/world/briefs/1-0/history", headers=service.auth())
    assert r.status_code == 404 and "has no brief '1-0'" in r.json()["detail"]
    r = await service.http.get("/v1/channels/world/briefs/nope/history", headers=service.auth())
    assert r.status_code == 400 and r.json()["field"] == "id"
    r = await service.http.post(url, headers=service.auth())
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_versions_are_stored_one_per_line_in_the_channels_history_hash(
    service: Service, redis_client: aioredis.Redis
) -> None:
    brief = await service.publish("world", "A \"quoted\" line", tags=[])
    await service.correct(brief["id"], tags=["a"])
    stored = await redis_client.hget(SINGLE.history("world"), brief["id"])
    lines = stored.split(b"\n")
    assert len(lines) == 2
    assert [orjson.loads(line)["kind"] for line in lines] == ["publish", "correction"]
