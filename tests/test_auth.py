"""API keys cached in each serving process (``ticker.auth.KeyCache``), kept true by the
doorbell that every revoke rings: real Redis, real uvicorn, the real CLI."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import DEADLINE, Service, eventually, run_service, tcp_socket
from ticker.auth import ApiKey, KeyCache, KeyStore, digest_of
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis
from ticker.store import ANY_KEY, read_bell

REVOKE_BOUND = 3.0  # seconds a revoke may take to reach a running server (milliseconds, really)


async def calls(r: aioredis.Redis, *commands: str) -> dict[str, int]:
    """How many times Redis ran each command since it started (``INFO commandstats``;
    commands run by scripts included)."""
    stats: Any = await r.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


async def post(service: Service, key: str, text: str) -> int:
    r = await service.http.post(
        "/v1/channels/world/briefs", json={"text": text}, headers=service.auth(key)
    )
    return r.status_code


def key_cache(service: Service) -> KeyCache:
    cache = service.app.state.services.keys.cache
    assert cache is not None
    return cache


async def anchored(service: Service) -> None:
    await eventually(
        lambda: _true(all(r.after is not None for r in service.hub.stream_readers)),
        "the readers anchored",
    )


async def _true(value: bool) -> bool:
    return value


async def ticker_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    return int(proc.returncode or 0), out.decode()


async def test_a_known_key_costs_no_redis_read_after_its_first_publish(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await anchored(service)
    assert await post(service, service.key, "warm-up") == 201
    before = await calls(redis_client, "hget", "evalsha")
    for i in range(5):
        assert await post(service, service.key, f"brief {i}") == 201
    after = await calls(redis_client, "hget", "evalsha")
    # One HGET per publish, the script's own (the channel's epoch); none for the key.
    assert after["evalsha"] - before["evalsha"] == 5
    assert after["hget"] - before["hget"] == 5
    assert len(key_cache(service)) == 1


async def test_a_key_revoked_by_the_cli_stops_publishing_on_two_running_servers(
    settings: Settings, redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    """Both servers hold the key in their cache (no HGET for it any more); ``ticker keys
    revoke`` in another process reaches both through the doorbell: 401 within a bound."""
    key = await KeyStore(redis_client).create("cms", ["*"])
    async with run_service(settings, tcp_socket()) as one, run_service(
        settings, tcp_socket()
    ) as two:
        for service in (one, two):
            await anchored(service)
            assert await post(service, key, "first") == 201
        before = await calls(redis_client, "hget")
        for service in (one, two):
            assert await post(service, key, "cached") == 201
        assert (await calls(redis_client, "hget"))["hget"] - before["hget"] == 2  # the scripts'
        code, out = await ticker_cli("keys", "revoke", "cms", env={"REDIS_URL": redis_server.url})
        assert code == 0, out
        revoked_at = time.monotonic()
        for service in (one, two):
            while (status := await post(service, key, "after the revoke")) == 201:
                assert time.monotonic() - revoked_at < REVOKE_BOUND, "the revoke never arrived"
                await asyncio.sleep(0.01)
            assert status == 401
            assert len(key_cache(service)) == 0
        # The briefs published meanwhile (if any) were published before the revoke
        # reached the server; none after: every later try is refused.
        for service in (one, two):
            assert await post(service, key, "later") == 401


async def test_a_revoke_rings_the_bell_with_the_keys_digest_in_the_same_transaction(
    redis_client: aioredis.Redis,
) -> None:
    keys = KeyStore(redis_client)
    key = await keys.create("cms", ["world"])
    assert await keys.revoke("cms") is True
    bell = await read_bell(redis_client, "ticker:bell", "0-0", 0)
    assert bell.names == [] and bell.keys == [digest_of(key)] and bell.count == 1
    assert await keys.authenticate(key) is None


async def test_the_bell_read_sorts_channels_from_key_changes(redis_client: aioredis.Redis) -> None:
    await redis_client.xadd("ticker:bell", {"c": "world"})
    await redis_client.xadd("ticker:bell", {"k": ANY_KEY})
    await redis_client.xadd("ticker:bell", {"x": "from a later version"})
    await redis_client.xadd("ticker:bell", {"c": "sport"})
    bell = await read_bell(redis_client, "ticker:bell", "0-0", 0)
    assert bell.names == ["world", "sport"] and bell.keys == [ANY_KEY] and bell.count == 4
    assert bell.changes == []


async def test_a_reader_that_anchors_again_empties_the_cache(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """A reader that lost its connection may have missed revokes: the cache is off while
    it is away and empty once it follows again."""
    await anchored(service)
    assert await post(service, service.key, "cached") == 201
    cache = key_cache(service)
    assert len(cache) == 1
    generation = cache.generation
    reader = service.hub.stream_readers[0]
    clients: Any = await redis_client.client_list()
    blocked = [c["id"] for c in clients if c["cmd"] == "xread"]
    assert blocked, "the reader is not blocked on the bell"
    for client_id in blocked:
        await redis_client.client_kill_filter(_id=client_id)
    await eventually(lambda: _true(cache.generation > generation), "the reader noticed")
    await eventually(lambda: _true(reader.after is not None and reader.healthy), "re-anchored")
    assert len(cache) == 0
    assert await post(service, service.key, "read again") == 201
    assert len(cache) == 1


async def test_without_the_cache_every_publish_reads_its_key(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(api_key_cache_seconds=0) as service:
        assert service.app.state.services.keys.cache is None
        assert await post(service, service.key, "warm-up") == 201
        before = await calls(redis_client, "hget")
        for i in range(3):
            assert await post(service, service.key, f"brief {i}") == 201
        assert (await calls(redis_client, "hget"))["hget"] - before["hget"] == 6


# The cache alone


def _key(digest: str = "d1") -> ApiKey:
    return ApiKey("cms", ("*",), "2026-01-01T00:00:00Z", digest)


def test_a_read_that_was_out_during_a_revoke_is_not_kept() -> None:
    cache = KeyCache(60)
    generation = cache.generation
    cache.forget(["d1"])  # the revoke's bell entry came before the read's reply
    cache.put(_key(), generation)
    assert cache.get("d1") is None
    cache.put(_key(), cache.generation)
    assert cache.get("d1") == _key()


def test_a_blind_cache_keeps_nothing_until_its_reader_sees_again() -> None:
    cache = KeyCache(60)
    cache.put(_key(), cache.generation)
    cache.blind(0)
    assert cache.get("d1") is None
    cache.put(_key(), cache.generation)
    assert cache.get("d1") is None and len(cache) == 0
    cache.see(0)
    cache.put(_key(), cache.generation)
    assert cache.get("d1") == _key()


def test_entries_expire_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = KeyCache(60, max_size=2)
    for digest in ("a", "b", "c"):
        cache.put(_key(digest), cache.generation)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    assert cache.get("c") is None
    cache.forget([ANY_KEY])
    assert len(cache) == 0
