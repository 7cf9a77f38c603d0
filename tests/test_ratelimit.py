"""The write rate per API key, counted inside the write scripts (``ticker.ratelimit``,
``ticker/lua/rate.lua``): real Redis, real uvicorn."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service, eventually
from ticker import ratelimit
from ticker.keys import SINGLE

LOG = "ticker:{world}:log"


async def calls(r: aioredis.Redis, *commands: str) -> dict[str, int]:
    """Calls of each command since Redis started (``INFO commandstats``, which counts the
    commands that scripts run too)."""
    stats: Any = await r.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {c: after[c] - before[c] for c in before}


async def post(service: Service, text: str, idempotency: str | None = None) -> httpx.Response:
    headers = service.auth()
    if idempotency is not None:
        headers["Idempotency-Key"] = idempotency
    return await service.http.post(
        "/v1/channels/world/briefs", json={"text": text}, headers=headers
    )


async def _anchored(service: Service) -> None:
    async def check() -> bool:
        return all(r.after is not None for r in service.hub.stream_readers)

    await eventually(check, "the readers anchored")


def assert_rate_limited(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["type"] == "urn:ticker:problem:rate-limited" and body["limit"] == limit
    assert f"more than {limit} writes this minute" in body["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 61


def _minute_left() -> float:
    return ratelimit.WINDOW_SECONDS - time.time() % ratelimit.WINDOW_SECONDS


@pytest.fixture(autouse=True)
def _one_window() -> None:
    """These tests count writes within one window: not started in its last seconds."""
    if _minute_left() < 8:
        time.sleep(_minute_left() + 0.1)


async def test_a_publish_is_one_round_trip_with_every_check_on(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    """Key (cached), scope, validation, idempotency, rate, channel set and append: the
    only command from ticker is the script; what Redis ran besides is the script's own."""
    async with serve_with(publish_rate_per_minute=1000) as service:
        await _anchored(service)
        assert (await post(service, "warm-up", "w")).status_code == 201
        commands = ("evalsha", "eval", "hget", "incr", "sadd", "get", "set", "wait")
        before = await calls(redis_client, *commands)
        for i in range(10):
            assert (await post(service, f"brief {i}", f"key-{i}")).status_code == 201
        got = delta(before, await calls(redis_client, *commands))
        # Inside the script, per publish: HGET of the epoch, GET of the idempotency
        # record, GET and INCR of the counter, SADD of the channel, SET of the record
        # (and HSETs of the brief, its first version and the meta, not counted here).
        assert got == {
            "evalsha": 10, "eval": 0, "hget": 10, "incr": 10, "sadd": 10, "get": 20,
            "set": 10, "wait": 0,
        }


async def test_past_the_limit_a_publish_gets_429_and_nothing_is_written(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(publish_rate_per_minute=3) as service:
        for i in range(3):
            assert (await post(service, f"ok {i}")).status_code == 201
        length = await redis_client.xlen(LOG)
        briefs = await redis_client.hlen("ticker:{world}:briefs")
        assert_rate_limited(await post(service, "one too many", "fresh"), 3)
        assert await redis_client.xlen(LOG) == length
        assert await redis_client.hlen("ticker:{world}:briefs") == briefs
        # Its Idempotency-Key was not used up: no record was written.
        assert await redis_client.keys("ticker:{world}:idem:*") == []


async def test_a_refused_publish_to_a_new_channel_does_not_list_it(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(publish_rate_per_minute=1) as service:
        assert (await post(service, "ok")).status_code == 201
        r = await service.http.post(
            "/v1/channels/fresh/briefs", json={"text": "x"}, headers=service.auth()
        )
        assert_rate_limited(r, 1)
        assert await redis_client.smembers("ticker:channels") == {b"world"}


async def test_an_idempotent_replay_does_not_count(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    """On one server the script finds the idempotency record before it counts: a client
    retrying a publish (a timeout, a 503) is not throttled for its retries."""
    async with serve_with(publish_rate_per_minute=3) as service:
        first = await post(service, "once", "retried")
        assert first.status_code == 201
        for _ in range(5):
            again = await post(service, "once", "retried")
            assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
            assert again.json() == first.json()
        for i in range(2):
            assert (await post(service, f"more {i}")).status_code == 201
        assert_rate_limited(await post(service, "fourth write"), 3)
        assert await redis_client.xlen(LOG) == 3


async def test_corrections_and_retractions_count(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(publish_rate_per_minute=4) as service:
        brief = (await post(service, "first")).json()
        path = f"/v1/channels/world/briefs/{brief['id']}"
        fixed = await service.http.patch(path, json={"text": "fixed"}, headers=service.auth())
        assert fixed.status_code == 200
        assert (await service.http.delete(path, headers=service.auth())).status_code == 204
        # Retracting again writes nothing but is still a write of the key's.
        assert (await service.http.delete(path, headers=service.auth())).status_code == 204
        length = await redis_client.xlen(LOG)
        assert_rate_limited(await post(service, "fifth"), 4)
        refused = await service.http.patch(path, json={"text": "x"}, headers=service.auth())
        assert_rate_limited(refused, 4)
        assert_rate_limited(await service.http.delete(path, headers=service.auth()), 4)
        assert await redis_client.xlen(LOG) == length


async def test_the_counter_is_named_by_the_layout_and_expires(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(publish_rate_per_minute=10) as service:
        assert (await post(service, "one")).status_code == 201
        counters: Any = await redis_client.keys("ticker:rate:*")
        window = ratelimit.window(time.time())
        assert counters == [SINGLE.rate("test", window).encode()]
        assert await redis_client.get(counters[0]) == b"1"
        assert 0 < await redis_client.ttl(counters[0]) <= ratelimit.COUNTER_TTL


async def test_a_rate_of_0_counts_nothing(serve_with: Any, redis_client: aioredis.Redis) -> None:
    async with serve_with(publish_rate_per_minute=0) as service:
        for i in range(5):
            assert (await post(service, f"brief {i}")).status_code == 201
        assert await redis_client.keys("ticker:rate:*") == []
        assert await redis_client.smembers("ticker:channels") == {b"world"}
