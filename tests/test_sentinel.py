"""Redis Sentinel: ticker on a real primary, replicas and sentinels (tests/sentinel_cluster.py),
in real uvicorn, with real WebSocket subscribers; primaries killed with SIGKILL, failed
over by hand, replicas held behind; and the URL's parsing.

Every process is killed by its own id in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import DEADLINE, eventually, run_service, tcp_socket
from tests.followers import Follower, SseFollower, cursor_key
from tests.sentinel_cluster import PRIMARY_NAME, Node, SentinelCluster, free_port
from ticker import sentinel
from ticker.auth import KeyStore
from ticker.config import Settings, load_settings
from ticker.embedded import die_with_parent
from ticker.errors import ConfigError
from ticker.keys import SINGLE

# The URL


def test_a_sentinel_url_names_the_sentinels_the_primary_and_the_database() -> None:
    url = sentinel.parse_url(
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel3/news/2"
        "?password=p%40ss&sentinel_password=s&ssl=true&ssl_ca_certs=/etc/ca.pem"
    )
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel3", 26379))
    assert url.primary_name == "news" and url.db == 2
    assert url.server_kwargs() == {
        "db": 2, "password": "p@ss", "ssl": True, "ssl_ca_certs": "/etc/ca.pem",
    }
    assert url.sentinel_kwargs() == {"password": "s"}


@pytest.mark.parametrize(
    "url, says",
    [
        ("redis+sentinel://10.0.0.1:26379", "must name the primary"),
        ("redis+sentinel://10.0.0.1:26379/news/x", "must be a number"),
        ("redis+sentinel://:secret@10.0.0.1:26379/news", "query parameters"),
        ("redis+sentinel://10.0.0.1:26379/news?pasword=x", "Unknown option 'pasword'"),
        ("redis+sentinel://10.0.0.1:99999/news", "HOST:PORT"),
        ("redis+sentinel://10.0.0.1:26379/news?ssl=maybe", "true or false"),
    ],
)
def test_a_wrong_sentinel_url_is_refused_at_start_in_a_sentence(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings({"REDIS_URL": url}, config_file=None)


def test_the_redis_url_error_shows_the_sentinel_format_and_no_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "sentinel://h:1/n?password=secret"})
    assert "redis+sentinel://HOST:PORT" in str(caught.value)
    assert "secret" not in str(caught.value)


# Real deployments


async def test_sentinels_asked_at_once_stay_each_in_the_list_and_are_all_closed() -> None:
    """Two sentinels down and one up, asked by 20 tasks at once: each task moves the one
    that answers to the front. The list stays one of each (redis-py's own swap, raced,
    put one twice and dropped another, whose connections then leaked)."""
    async with cluster(replicas=0) as deployment:
        down = [("127.0.0.1", free_port()) for _ in range(2)]
        live = ("127.0.0.1", deployment.sentinels[0].port)
        manager = sentinel.Sentinels([*down, live], sentinel_kwargs={"socket_timeout": 5})
        clients = list(manager.sentinels)
        try:
            answers = await asyncio.gather(
                *(manager.discover_master(PRIMARY_NAME) for _ in range(20))
            )
            assert {int(port) for _, port in answers} == {deployment.primary.port}
            assert sorted(map(id, manager.sentinels)) == sorted(map(id, clients))
        finally:
            await manager.aclose()
        for client in clients:
            assert all(not c.is_connected for c in client.connection_pool._available_connections)


@contextlib.asynccontextmanager
async def cluster(replicas: int, appendonly: bool = False) -> AsyncIterator[SentinelCluster]:
    deployment = SentinelCluster(replicas=replicas, appendonly=appendonly)
    try:
        yield await deployment.start()
    finally:
        await deployment.stop()


@contextlib.asynccontextmanager
async def ticker_on(deployment: SentinelCluster, **overrides: Any) -> AsyncIterator[Any]:
    settings = Settings(
        redis_url=deployment.url, log_level="error", shutdown_drain=0.5,
        reconnect_max_delay=0.3, failover_check_interval=0.5, publish_rate_per_minute=0,
        **overrides,
    )
    async with run_service(settings, tcp_socket()) as service:
        async with deployment.primary.client() as client:
            service.key = await KeyStore(client).create("test", ["*"])
        yield service


async def publish(
    service: Any, text: str, key: str | None = None, attempts: int = 400
) -> dict[str, Any]:
    """POST a brief, retrying 503s with the same Idempotency-Key as a client would."""
    headers = {**service.auth(), "Idempotency-Key": key or uuid.uuid4().hex}
    for _ in range(attempts):
        with contextlib.suppress(httpx.TransportError):
            r = await service.http.post(
                "/v1/channels/world/briefs", json={"text": text}, headers=headers
            )
            if r.status_code == 201:
                brief: dict[str, Any] = r.json()
                return brief
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} was never acknowledged")


async def readyz(service: Any) -> int:
    status: int = (await service.http.get("/readyz")).status_code
    return status


async def cli_create_key(redis_url: str) -> str:
    """``ticker keys create`` in a child process, with ``REDIS_URL``; the key it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKER_")}
    env["REDIS_URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", "keys", "create", "--name", "cms", "--channel", "world",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


def reader_port(service: Any) -> int | None:
    connection = service.hub.reader_for("world").client.connection
    return None if connection is None or not connection.is_connected else int(connection.port)


async def test_primary_killed_mid_stream_every_acknowledged_brief_arrives_once_in_order() -> None:
    """A primary with one replica and an append-only file; 200 briefs posted at about
    20/s (503s retried with the same Idempotency-Key) to a WebSocket and an SSE
    subscriber. The primary is killed with SIGKILL after 60 and started again from its
    append-only file once the replica took over, as a supervisor would: it comes back as
    the new primary's replica, which WAIT needs. Every acknowledged brief reaches both
    subscribers once, in order; /readyz is 503 during the failover and 200 after, on
    the new primary; a publish after the failover is heard (no deaf reader)."""
    async with cluster(replicas=1, appendonly=True) as deployment, ticker_on(
        deployment, publish_min_replicas=1, publish_replica_timeout_ms=500
    ) as service:
        followers = [
            await Follower(service.ws_url).start(), await SseFollower(service.base).start(),
        ]
        try:
            statuses: list[int] = []
            acknowledged: list[str] = []

            async def watch_readyz() -> None:
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        statuses.append(await readyz(service))
                    await asyncio.sleep(0.05)

            old = deployment.primary
            killed = old.port

            async def supervise() -> Node:
                new = await deployment.failover_to_another(killed)
                old.start()  # from its append-only file; Sentinel makes it a replica
                return new

            watcher = asyncio.create_task(watch_readyz())
            supervisor: asyncio.Task[Node] | None = None
            for i in range(200):
                acknowledged.append((await publish(service, f"brief {i}"))["id"])
                if i == 60:
                    old.kill()
                    statuses.clear()
                    supervisor = asyncio.create_task(supervise())
                await asyncio.sleep(0.05)
            assert supervisor is not None
            new = await supervisor
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            assert 503 in statuses, "/readyz never said 503 during the failover"
            assert await deployment.role(old) == "slave"

            async def ready_on_new() -> bool:
                return await readyz(service) == 200 and reader_port(service) == new.port

            await eventually(ready_on_new, "/readyz 200, the reader on the new primary")
            late = await publish(service, "after the failover")
            acknowledged.append(late["id"])
            for follower in followers:
                await follower.until_shown(late["id"])
                # Exactly once, in order: what it shows is every acknowledged brief, and
                # the log of the new primary holds nothing else.
                assert follower.shown == acknowledged
                assert not follower.disorder  # nothing twice, nothing out of order
        finally:
            for follower in followers:
                await follower.stop()


async def test_manual_failover_the_reader_leaves_the_demoted_primary() -> None:
    async with cluster(replicas=1) as deployment, ticker_on(deployment) as service:
        follower = await Follower(service.ws_url).start()
        try:
            first = await publish(service, "before")
            await follower.until_shown(first["id"])
            old = deployment.primary
            assert reader_port(service) == old.port
            async with deployment.sentinels[0].client() as s:
                await s.execute_command("SENTINEL", "FAILOVER", "ticker")
            new = await deployment.failover_to_another(old.port)
            # Sentinel tells the old primary it is a replica only at its next look at it
            # (about ten seconds later); meanwhile it still says "master" to whoever asks,
            # and its clients are not killed. The reader must leave it all the same.

            async def reader_moved() -> bool:
                return reader_port(service) == new.port and await readyz(service) == 200

            await eventually(reader_moved, "the reader on the new primary, /readyz 200", timeout=5)
            assert await deployment.role(old) == "master"  # not told yet: still it was left
            # The CLI finds the new primary through Sentinel too: a key it creates now
            # publishes.
            service.key = await cli_create_key(deployment.url)
            second = await publish(service, "after")
            await follower.until_shown(second["id"])
            assert follower.shown == [first["id"], second["id"]]
            assert all(follower.recovered())
        finally:
            await follower.stop()


async def test_a_reader_left_on_a_demoted_server_notices_it_and_readyz_says_so(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    """No Sentinel, no killed clients: the server ticker uses is turned into a replica
    behind its back. The ROLE check finds it; /readyz says 503 until it is primary again,
    and then the reader follows again."""
    async with serve_with(failover_check_interval=0.3, reconnect_max_delay=0.3) as service:
        sub = await service.subscriber()
        await sub.subscribe("world")
        assert (await sub.recv())["type"] == "snapshot"
        dead_port = tcp_socket()  # a primary that never answers: the replica keeps its data
        port = dead_port.getsockname()[1]
        try:
            await redis_client.execute_command("REPLICAOF", "127.0.0.1", port)

            async def unready() -> bool:
                return await readyz(service) == 503 and not service.hub.reader_healthy

            await eventually(unready, "/readyz 503 on a replica", timeout=5)
            await asyncio.sleep(1.0)  # and it stays so: the reader never anchors on a replica
            assert await readyz(service) == 503
        finally:
            await redis_client.execute_command("REPLICAOF", "NO", "ONE")
            dead_port.close()

        async def ready() -> bool:
            return await readyz(service) == 200

        await eventually(ready, "/readyz 200 on the primary again", timeout=10)
        brief = await service.publish("world", "heard again")
        assert (await sub.recv())["brief"]["id"] == brief["id"]
        await sub.close()


async def test_publish_min_replicas_503_until_replicas_have_it_then_the_same_brief() -> None:
    async with cluster(replicas=1) as deployment, ticker_on(
        deployment, publish_min_replicas=1, publish_replica_timeout_ms=300
    ) as service:
        follower = await Follower(service.ws_url).start()
        try:
            first = await publish(service, "replicated")
            await follower.until_shown(first["id"])
            link = deployment.links[0]
            link.pause()
            headers = {**service.auth(), "Idempotency-Key": "cms-4411"}
            r = await service.http.post(
                "/v1/channels/world/briefs", json={"text": "held"}, headers=headers
            )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            problem = r.json()
            assert problem["type"].endswith("not-replicated")
            assert problem["replicas"] == 0 and problem["required"] == 1
            assert "same Idempotency-Key" in problem["detail"]
            # Still held: the retry is still refused, and still publishes nothing new.
            again = await service.http.post(
                "/v1/channels/world/briefs", json={"text": "held"}, headers=headers
            )
            assert again.status_code == 503

            # A retraction is refused the same way until the replica has it; retrying is safe.
            gone = await service.http.delete(
                f"/v1/channels/world/briefs/{first['id']}", headers=service.auth()
            )
            assert gone.status_code == 503 and "retracting again is safe" in gone.json()["detail"]

            link.resume()
            done = await service.http.post(
                "/v1/channels/world/briefs", json={"text": "held"}, headers=headers
            )
            assert done.status_code == 201, done.text
            assert done.headers["idempotent-replayed"] == "true"
            held_id = done.json()["id"]
            retract = await service.http.delete(
                f"/v1/channels/world/briefs/{first['id']}", headers=service.auth()
            )
            assert retract.status_code == 204
            await follower.until_shown(held_id)
            assert follower.brief_ids() == [first["id"], held_id]  # one copy, never two
            async with deployment.replicas[0].client() as replica:
                assert await replica.xlen(SINGLE.log("world")) == 3  # two briefs, one retraction

            # The Python client retries a 503 with the same Idempotency-Key by itself.
            from ticker_client import TickerClient

            link.pause()
            asyncio.get_running_loop().call_later(1.0, link.resume)
            async with TickerClient(service.base, api_key=service.key, backoff_max=1.0) as c:
                brief = await c.publish("world", "through the client")
            await follower.until_shown(brief.id)
            assert follower.brief_ids().count(brief.id) == 1
        finally:
            await follower.stop()


async def test_a_write_lost_in_a_failover_resumes_with_recovered_false_and_a_snapshot() -> None:
    async with cluster(replicas=1) as deployment, ticker_on(deployment) as service:
        follower = await Follower(service.ws_url).start()
        try:
            kept = [(await publish(service, f"kept {i}"))["id"] for i in range(2)]
            await follower.until_shown(kept[-1])
            async with deployment.primary.client() as primary:
                assert await primary.wait(1, 2000) == 1  # the replica has them
            deployment.links[0].pause()
            lost = [(await publish(service, f"lost {i}"))["id"] for i in range(2)]
            await follower.until_shown(lost[-1])
            old = deployment.primary.port
            deployment.primary.kill()
            await deployment.links[0].cut()  # what the replica had not received is gone
            await deployment.failover_to_another(old)

            # The reader finds its position gone from the new primary's log and closes the
            # channel's subscribers; resuming from a cursor the new primary never had gives
            # recovered: false and a snapshot of what the new primary holds.
            async def resumed() -> bool:
                return False in follower.recovered()

            await eventually(resumed, "a resume with recovered: false")
            assert follower.closes[0] == 1012
            assert follower.recovered()[0] is False
            assert follower.shown == kept
            after = await publish(service, "after the failover")
            await follower.until_shown(after["id"])
            assert follower.shown == [*kept, after["id"]]

            # Anyone else resuming from a lost cursor: not recovered; from a kept one: exact.
            for since, recovered, first in ((lost[0], False, "snapshot"), (kept[-1], True, "brief")):
                sub = await service.subscriber()
                await sub.subscribe("world", since=since)
                answer = await sub.recv()
                assert answer["type"] == "subscribed" and answer["recovered"] is recovered
                assert (await sub.recv())["type"] == first
                await sub.close()
        finally:
            await follower.stop()


async def test_the_reader_does_not_skip_events_appended_below_its_position(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    """A new primary's log can end before the old one's, and then append events with IDs
    below the reader's position. Staged on one server: the newest event is replaced by
    one with a lower ID, as a failover would leave it, and the reader reconnects."""
    async with serve_with(reconnect_max_delay=0.3) as service:
        follower = await Follower(service.ws_url).start()
        try:
            briefs = []
            for i in range(3):
                briefs.append(await service.publish("world", f"brief {i}"))
                await asyncio.sleep(0.01)  # one millisecond each at least
            await follower.until_shown(briefs[-1]["id"])
            newest = briefs[-1]["id"]
            before = briefs[-2]["id"]
            entries: Any = await redis_client.xrange(SINGLE.log("world"))
            assert entries[-1][0].decode() == newest
            fields = dict(entries[-1][1])
            body = orjson.loads(fields[b"d"])
            body["text"] = "written by the new primary"
            fields[b"d"] = orjson.dumps(body)
            ms, seq = before.split("-")
            lower = f"{ms}-{int(seq) + 1}"
            assert cursor_key(lower) < cursor_key(newest)
            # The log as a new primary that never had the newest event holds it.
            async with redis_client.pipeline(transaction=True) as pipe:
                pipe.delete(SINGLE.log("world"))
                for entry_id, entry_fields in entries[:-1]:
                    pipe.xadd(SINGLE.log("world"), entry_fields, id=entry_id)
                pipe.xadd(SINGLE.log("world"), fields, id=lower)
                pipe.hdel(SINGLE.briefs("world"), newest)
                pipe.hset(SINGLE.briefs("world"), lower, orjson.dumps({**body, "id": lower}))
                pipe.hset(SINGLE.meta("world"), "last", lower)
                pipe.execute_command("CLIENT", "KILL", "TYPE", "normal")  # a failover's disconnects
                await pipe.execute()

            async def resumed() -> bool:
                return False in follower.recovered()

            await eventually(resumed, "a resume with recovered: false")
            await follower.until_shown(lower)
            assert follower.shown == [briefs[0]["id"], before, lower]
            assert newest not in follower.shown and not follower.disorder
        finally:
            await follower.stop()
