"""Redis Cluster: ticker on a real Valkey Cluster (tests/redis_cluster.py: three primaries,
three replicas, the packaged valkey-server), in real uvicorn, with real WebSocket
subscribers; a primary killed with SIGKILL; a store migrated from one server; the key
layout and the URL.

Every process is killed in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from tests.conftest import DEADLINE, eventually, run_service, tcp_socket
from tests.followers import Watcher, cursor_key
from tests.redis_cluster import RedisClusterDeployment, cluster
from tests.sentinel_cluster import Node
from ticker import auth as ticker_auth
from ticker import cluster as ticker_cluster
from ticker.audit import AuditLog
from ticker.auth import KeyStore
from ticker.channels import ChannelStore
from ticker.config import Settings, load_settings
from ticker.errors import ConfigError, Conflict
from ticker.keys import SINGLE, Layout, partition_tags
from ticker.store import connect
from ticker.tokens import SecretCache, SecretError, Tokens

# The layout


def test_every_key_of_a_channel_shares_the_slot_of_its_partitions_bell() -> None:
    layout = Layout(16)
    for channel in ("world", "sport", "a", "election-2026-results"):
        bell = layout.bell(layout.partition(channel))
        keys = [
            layout.log(channel), layout.briefs(channel), layout.meta(channel),
            layout.sync(channel), layout.idempotency(channel, "scope", "key"),
            layout.history(channel), bell,
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        assert layout.channel_of_log(layout.log(channel)) == channel


def test_the_keys_that_belong_to_no_channel_share_one_slot() -> None:
    layout = Layout(16)
    keys = [
        layout.channels, layout.api_keys, layout.api_key_names, layout.readers_index,
        layout.readers("some-process"), layout.record, layout.channel_objects, layout.audit,
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


@pytest.mark.parametrize("partitions", [3, 16, 128])
def test_partitions_spread_evenly_over_shards_of_equal_slot_ranges(partitions: int) -> None:
    tags = partition_tags(partitions)
    assert len(set(tags)) == partitions
    for shards in (2, 3, 5):
        per_shard = collections.Counter(
            key_slot(tag.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS for tag in tags
        )
        assert max(per_shard.values()) - min(per_shard.values()) <= 1, per_shard


def test_channels_spread_over_partitions() -> None:
    layout = Layout(16)
    counts = collections.Counter(layout.partition(f"channel-{i}") for i in range(1600))
    assert len(counts) == 16 and max(counts.values()) < 2 * min(counts.values()), counts


def test_one_server_keeps_the_names_of_every_earlier_version() -> None:
    assert Layout.for_url("redis://localhost:6379/0") is SINGLE
    assert SINGLE.log("world") == "ticker:{world}:log"
    assert SINGLE.bell() == "ticker:bell" and SINGLE.channels == "ticker:channels"
    assert SINGLE.api_keys == "ticker:apikeys"


# The URL


def test_a_cluster_url_names_nodes_and_options() -> None:
    url = ticker_cluster.parse_url(
        "redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002?password=p%40ss&ssl=true"
    )
    assert url.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert dict(url.options) == {"password": "p@ss", "ssl": True}


@pytest.mark.parametrize(
    "url, says",
    [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://10.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://:secret@10.0.0.1:7000", "query parameters"),
        ("redis+cluster://10.0.0.1:7000?pasword=x", "Unknown option 'pasword'"),
        ("redis+cluster://10.0.0.1:99999", "HOST:PORT"),
    ],
)
def test_a_wrong_cluster_url_is_refused_at_start_in_a_sentence(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings({"REDIS_URL": url}, config_file=None)


# Real clusters


@contextlib.asynccontextmanager
async def ticker_on_url(url: str, key: str = "", **overrides: Any) -> AsyncIterator[Any]:
    """ticker in real uvicorn on the store at ``url``, with an API key for every channel
    (``key``, or a new one)."""
    settings = Settings(**{
        "redis_url": url, "log_level": "error", "shutdown_drain": 0.5,
        "reconnect_max_delay": 0.3, "publish_rate_per_minute": 0, "max_subscriptions": 256,
        **overrides,
    })
    async with run_service(settings, tcp_socket()) as service:
        if key:
            service.key = key
        else:
            client = connect(settings, url)
            try:
                layout = Layout.for_url(url, settings.redis_partitions)
                service.key = await KeyStore(client, layout).create("test", ["*"])
            finally:
                await client.aclose()
        yield service


def ticker_on(
    deployment: RedisClusterDeployment, key: str = "", **overrides: Any
) -> contextlib.AbstractAsyncContextManager[Any]:
    return ticker_on_url(deployment.url, key, **overrides)


async def publish(service: Any, channel: str, text: str, key: str | None = None) -> dict[str, Any]:
    """POST a brief, retrying 503s (a failover) with the same Idempotency-Key, as the
    Python client does."""
    headers = {**service.auth(), "Idempotency-Key": key or uuid.uuid4().hex}
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        with contextlib.suppress(httpx.TransportError):
            r = await service.http.post(
                f"/v1/channels/{channel}/briefs", json={"text": text}, headers=headers
            )
            if r.status_code == 201:
                return dict(r.json())
            assert r.status_code == 503, r.text
        assert asyncio.get_running_loop().time() < deadline, "publish never accepted"
        await asyncio.sleep(0.1)


async def node_connections(deployment: RedisClusterDeployment) -> dict[int, int]:
    """ticker's connections on each live node, from CLIENT LIST (every connection that
    ticker opens to a cluster is named "ticker")."""
    return await deployment.client_counts(ticker_cluster.CLIENT_NAME)


async def test_200_channels_each_brief_reaches_its_subscribers_once_on_bounded_connections() -> None:
    """Channels grow from 20 to 200, each with subscribers on two connections; a brief
    to every channel reaches both, once. ticker's connections on each node stay within
    the configured bound (partitions + write and read pools), far below one blocking
    read per channel."""
    partitions, pool, read_pool = 8, 4, 4
    # Per node, at most: commands and pipelines under way (ticker.cluster.BoundedCluster)
    # of the readers' client, the writes' and the reads'.
    bound = 2 * (partitions + pool + read_pool)
    async with cluster(shards=3, replicas_per_shard=1) as deployment, ticker_on(
        deployment, redis_partitions=partitions, redis_pool_size=pool,
        redis_read_pool_size=read_pool,
    ) as service:
        counts: dict[int, dict[int, int]] = {}
        published: dict[str, list[str]] = {}
        watchers: list[Watcher] = []
        try:
            for total in (20, 200):
                channels = [f"ch-{i}" for i in range(len(published), total)]
                for half in (channels[: len(channels) // 2], channels[len(channels) // 2 :]):
                    for _ in range(2):
                        watchers.append(await Watcher(service.ws_url, half).start())
                briefs = await asyncio.gather(
                    *(publish(service, c, f"first on {c}") for c in channels)
                )
                for channel, brief in zip(channels, briefs, strict=True):
                    published[channel] = [brief["id"]]
                for channel in published:
                    published[channel].append(
                        (await publish(service, channel, f"{total} on {channel}"))["id"]
                    )
                for watcher in watchers:
                    await watcher.until_all_shown({c: published[c] for c in watcher.channels})
                counts[total] = await node_connections(deployment)
            for watcher in watchers:
                for channel in watcher.channels:
                    assert watcher.shown_by_channel[channel] == published[channel], channel
                assert not watcher.disorder
            assert all(n <= bound for n in counts[200].values()), (counts, bound)
            assert sum(counts[200].values()) <= 3 * bound < 200, counts
            # Every command was routed by ticker's own keys: none cost a COMMAND GETKEYS
            # round trip first (redis-py's way for XREAD, ticker.cluster.BoundedCluster).
            for node in deployment.primaries:
                async with node.client() as c:
                    stats: dict[str, Any] = await c.info("commandstats")
                assert "cmdstat_command|getkeys" not in stats, stats.keys()
        finally:
            for watcher in watchers:
                await watcher.stop()


async def test_a_primary_killed_mid_stream_its_channels_recover_exactly() -> None:
    """Briefs go to 24 channels in rounds (each publish retried on 503 with its
    Idempotency-Key, answered only once a replica has it); the primary of one channel's
    shard is killed with SIGKILL mid-stream, its replica takes over, and the old node
    comes back as a replica. Every acknowledged brief reaches both subscribers of its
    channel exactly once, in order, with nothing lost, on every shard; /readyz says 503
    while the cluster fails over and 200 after."""
    channels = [f"live-{i}" for i in range(24)]
    async with cluster(shards=3, replicas_per_shard=1) as deployment, ticker_on(
        deployment, publish_min_replicas=1, publish_replica_timeout_ms=500,
        redis_partitions=8,
    ) as service:
        layout = Layout(8)
        victim = await deployment.primary_for_key(layout.log(channels[0]))
        on_victim = [
            c for c in channels
            if await deployment.primary_for_key(layout.log(c)) is victim
        ]
        watchers = [await Watcher(service.ws_url, channels).start() for _ in range(2)]
        published: dict[str, list[str]] = {c: [] for c in channels}
        try:
            async def supervise() -> None:
                """Start the killed node again once its replica took over: a replica
                again (as a supervisor would), which the new primary needs for WAIT."""
                await deployment.wait_failover(victim)
                await deployment.restart(victim)

            statuses: list[int] = []

            async def watch_readyz() -> None:
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        statuses.append((await service.http.get("/readyz")).status_code)
                    await asyncio.sleep(0.05)

            supervisor: asyncio.Task[None] | None = None
            readiness = asyncio.create_task(watch_readyz())
            for round_ in range(12):
                if round_ == 4:
                    assert set(statuses) == {200}, statuses
                    await deployment.kill_primary(victim)
                    supervisor = asyncio.create_task(supervise())
                briefs = await asyncio.gather(
                    *(publish(service, c, f"round {round_} on {c}") for c in channels)
                )
                for channel, brief in zip(channels, briefs, strict=True):
                    published[channel].append(brief["id"])
            assert supervisor is not None
            await supervisor
            readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readiness
            assert 503 in statuses, "/readyz never said 503 during the failover"

            async def ready() -> bool:
                return (await service.http.get("/readyz")).status_code == 200

            await eventually(ready, "/readyz 200 after the failover")
            for watcher in watchers:
                await watcher.until_all_shown(published)
                assert watcher.shown_by_channel == published
                assert not watcher.disorder
                assert all(recovered for _, recovered in watcher.resumes), watcher.resumes
            assert on_victim and all(len(published[c]) == 12 for c in on_victim)
        finally:
            for watcher in watchers:
                await watcher.stop()


async def _ticker_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m ticker ARGS`` in a child process: its exit code and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    return int(proc.returncode or 0), out.decode()


async def test_a_store_migrated_from_one_server_resumes_exactly_on_the_cluster(
    tmp_path: Path,
) -> None:
    """A one-server store (briefs, a correction, a retraction, an idempotency record, an
    API key) is copied by ``ticker migrate`` into a cluster. On ticker over the cluster:
    a subscriber resumes from a cursor of the old store with recovered: true and exactly
    what followed it, the lists are the same, the old key publishes, the old
    Idempotency-Key returns the old brief. A second migration into the now full cluster
    is refused in a sentence."""
    single = Node(tmp_path, "single", [])
    single.start()
    try:
        single_url = f"redis://127.0.0.1:{single.port}/0"
        async with ticker_on_url(single_url) as service:
            first = await publish(service, "world", "before the cursor", key="idem-1")
            watcher = await Watcher(service.ws_url, ["world", "sport"]).start()
            await watcher.until_all_shown({"world": [first["id"]]})
            cursor, epoch = watcher.cursors["world"], watcher.epochs["world"]
            await watcher.stop()
            later = [await publish(service, "world", f"after {i}") for i in range(3)]
            await publish(service, "sport", "other channel")
            fixed = await service.correct(later[0]["id"], text="after 0, corrected")
            await service.retract(later[1]["id"])
            before = (await service.http.get("/v1/channels/world/briefs")).json()
            key = service.key
        client = connect(Settings(redis_url=single_url), single_url)
        try:
            await ChannelStore(client, SINGLE).update("world", {"title": "World"}, "cli:test")
        finally:
            await client.aclose()
        async with cluster(shards=3, replicas_per_shard=0) as deployment:
            code, out = await _ticker_cli("migrate", "--from", single_url, "--to", deployment.url)
            assert code == 0, out
            assert "Copied 2 channels" in out and "1 API keys" in out, out
            # world's and sport's objects (made by their first publish); the audit: the
            # key's creation and world's update.
            assert "2 channel objects" in out and "2 audit entries" in out, out
            assert "5 brief histories" in out, out  # world's 4 briefs, sport's 1
            listed = await _ticker_cli("keys", "list", env={"REDIS_URL": deployment.url})
            assert listed[0] == 0 and listed[1].startswith("test\tpublisher\t*\t"), listed
            async with ticker_on(deployment, key=key) as service:
                assert (await service.http.get("/v1/channels/world/briefs")).json() == before
                assert (await service.http.get("/v1/channels/world")).json()["title"] == "World"
                # A first publish on the cluster creates the channel's object (admit.lua).
                await publish(service, "fresh", "a new channel")
                fresh = await service.http.get("/v1/channels/fresh")
                assert fresh.status_code == 200 and fresh.json()["title"] is None, fresh.text
                async with websockets.connect(service.ws_url, subprotocols=["ticker.v1"]) as ws:  # type: ignore[list-item]
                    await ws.send(orjson.dumps({
                        "op": "subscribe", "channel": "world", "since": cursor, "epoch": epoch,
                    }).decode())
                    got = [orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
                           for _ in range(6)]
                assert got[0]["type"] == "subscribed" and got[0]["recovered"] is True, got
                assert [(m["type"], m.get("brief", m)["id"]) for m in got[1:]] == [
                    ("brief", later[0]["id"]), ("brief", later[1]["id"]),
                    ("brief", later[2]["id"]), ("correction", fixed["id"]),
                    ("retraction", later[1]["id"]),
                ]
                again = await publish(service, "world", "before the cursor", key="idem-1")
                assert again["id"] == first["id"]
                new = await publish(service, "world", "on the cluster")
                assert cursor_key(new["id"]) > cursor_key(later[-1]["id"])
                # Histories came along, and the cluster's write scripts record them.
                await service.correct(new["id"], text="on the cluster, corrected")
                for brief_id, kinds in (
                    (later[0]["id"], ["publish", "correction"]),
                    (later[1]["id"], ["publish", "retraction"]),
                    (first["id"], ["publish"]),
                    (new["id"], ["publish", "correction"]),
                ):
                    r = await service.http.get(
                        f"/v1/channels/world/briefs/{brief_id}/history", headers=service.auth()
                    )
                    assert r.status_code == 200, r.text
                    versions = r.json()["versions"]
                    assert [(v["kind"], v["by"]) for v in versions] == [
                        (kind, "test") for kind in kinds
                    ], versions
            async with ticker_on(deployment, key=key, auto_create_channels=False) as service:
                r = await service.http.post("/v1/channels/never/briefs", json={"text": "x"},
                                            headers=service.auth())
                assert r.status_code == 409 and "ticker channels create never" in r.text
                await publish(service, "fresh", "an existing channel takes briefs")
            code, out = await _ticker_cli("migrate", "--from", single_url, "--to", deployment.url)
            assert code == 1 and "already holds 3 channels" in out, out
    finally:
        single.kill()


async def test_on_a_cluster_the_rate_is_counted_with_the_channel_set_and_a_revoke_rings_every_bell() -> None:
    """The counter and the channel set in ``{ticker}``, counted and listed by one script
    before the write script: past the limit, 429 and nothing written. A revoke rings the
    bell of every partition: the server that had the key cached refuses it at once."""
    partitions = 4
    async with cluster(shards=3, replicas_per_shard=0) as deployment, ticker_on(
        deployment, redis_partitions=partitions, publish_rate_per_minute=3
    ) as service:
        settings = Settings(redis_url=deployment.url, redis_partitions=partitions)
        layout = Layout.for_url(deployment.url, partitions)
        client = connect(settings, deployment.url)
        try:
            window = int(time.time() // 60)
            for i in range(3):
                r = await service.http.post(
                    "/v1/channels/world/briefs", json={"text": f"ok {i}"}, headers=service.auth()
                )
                assert r.status_code == 201, r.text
            assert await client.smembers(layout.channels) == {b"world"}
            if int(time.time() // 60) == window:  # (not across a minute's end)
                assert await client.get(layout.rate("test", window)) == b"3"
                refused = await service.http.post(
                    "/v1/channels/fresh/briefs", json={"text": "x"}, headers=service.auth()
                )
                assert refused.status_code == 429, refused.text
                assert 1 <= int(refused.headers["retry-after"]) <= 61
                assert await client.xlen(layout.log("world")) == 3
                assert await client.exists(layout.log("fresh")) == 0
                assert await client.smembers(layout.channels) == {b"world"}
            cache = service.app.state.services.keys.cache
            assert cache is not None and len(cache) == 1
            # A rotation rings every bell with the old secret, and the revoke with each
            # secret of the name (the new one, and the old one in its grace).
            new, _ = await KeyStore(client, layout).rotate("test", grace=60)
            old = ticker_auth.digest_of(service.key).encode()
            for p in range(partitions):
                entries: Any = await client.xrevrange(layout.bell(p), "+", "-", count=1)
                assert entries[0][1] == {b"k": old}
            assert await KeyStore(client, layout).revoke("test") is True
            for p in range(partitions):
                entries = await client.xrevrange(layout.bell(p), "+", "-", count=2)
                assert {e[1][b"k"] for e in entries} == {old, ticker_auth.digest_of(new).encode()}
            assert await client.hlen(layout.api_keys) == 0

            async def refused_now() -> bool:
                r = await service.http.post(
                    "/v1/channels/world/briefs", json={"text": "x"}, headers=service.auth()
                )
                assert r.status_code in (201, 401, 429), r.text
                return r.status_code == 401

            await eventually(refused_now, "the revoke reached the server", timeout=3)
            assert len(cache) == 0
        finally:
            await client.aclose()


async def test_on_a_cluster_every_management_action_is_audited_in_its_own_script_or_transaction() -> None:
    """The API keys, the channel objects and set, the signing secrets and the audit
    stream share ``{ticker}``: each action's script or MULTI holds its audit entry on a
    cluster too (no CROSSSLOT), and a refused action writes none. A channel delete
    deletes its data in its partition's slot first."""
    partitions = 4
    async with cluster(shards=3, replicas_per_shard=0) as deployment:
        settings = Settings(redis_url=deployment.url, redis_partitions=partitions)
        layout = Layout.for_url(deployment.url, partitions)
        client = connect(settings, deployment.url)
        try:
            keys = KeyStore(client, layout)
            await keys.create("cms", ["world"], by="ops")
            with pytest.raises(ticker_auth.KeyAdminError, match="already exists"):
                await keys.create("cms", ["world"], by="ops")
            await keys.rotate("cms", 60, by="ops")
            assert await keys.revoke("cms", by="ops")
            channels = ChannelStore(client, layout)
            await channels.create("world", {"title": "World"}, "ops")
            with pytest.raises(Conflict):
                await channels.create("world", {}, "ops")
            await channels.update("world", {"lang": "fr"}, "ops")
            await client.hset(layout.briefs("world"), "b1", b"{}")  # (a retained brief)
            with pytest.raises(Conflict):
                await channels.delete("world", "ops")
            assert await channels.delete("world", "ops", force=True) == 1
            assert await client.exists(layout.briefs("world")) == 0
            tokens = Tokens(client, layout, "", SecretCache())
            kid = await tokens.rotate("ops")
            await tokens.revoke(kid, "ops")
            with pytest.raises(SecretError):
                await tokens.revoke(kid, "ops")
            entries = await AuditLog(client, layout).read(20)
            assert [(e.action, e.target) for e in reversed(entries)] == [
                ("key.create", "cms"), ("key.rotate", "cms"), ("key.revoke", "cms"),
                ("channel.create", "world"), ("channel.update", "world"),
                ("channel.delete", "world"), ("token-secret.rotate", kid),
                ("token-secret.revoke", kid),
            ]
            assert entries[2].details == {"force": True, "briefs": 1}
            assert await client.hlen(layout.api_keys) == 0
            assert await client.hget(layout.channel_objects, "world") is None
        finally:
            await client.aclose()
