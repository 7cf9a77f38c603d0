"""The Valkey Cluster harness itself (tests/redis_cluster.py): it comes up whole, a key
written through redis-py's cluster client is read back, and a killed primary's replica
takes over with the key."""

from __future__ import annotations

import time

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from tests.redis_cluster import SLOTS, Node, RedisClusterDeployment, cluster


def client_for(deployment: RedisClusterDeployment) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in deployment.primaries],
        client_name="tk-harness-test",
    )


async def test_the_cluster_comes_up_whole() -> None:
    async with cluster(shards=3, replicas_per_shard=1) as deployment:
        assert len(deployment.primaries) == 3 and len(deployment.replicas) == 3
        ports = [n.port for n in deployment.primaries]
        assert deployment.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        for node in deployment.live:
            info = await deployment.cluster_info(node)
            assert info["cluster_state"] == "ok", deployment.node_logs()
            assert info["cluster_slots_assigned"] == str(SLOTS)
            assert info["cluster_known_nodes"] == "6"
        for replica in deployment.replicas:
            assert await deployment.role(replica) == "slave"
        assert await deployment.primary_for_slot(0) is deployment.primaries[0]
        assert await deployment.primary_for_slot(SLOTS - 1) is deployment.primaries[-1]


async def test_a_key_written_through_the_cluster_client_is_read_back() -> None:
    async with cluster() as deployment:
        client = client_for(deployment)
        try:
            for i in range(20):
                await client.set(f"k{i}", f"v{i}")
            for i in range(20):
                assert await client.get(f"k{i}") == f"v{i}".encode()
            owner = await deployment.primary_for_key("k0")
            assert owner in deployment.primaries
            assert await _direct_get(owner, "k0") == b"v0"
            assert await deployment.primary_for_slot(key_slot(b"k0")) is owner
            counts = await deployment.client_counts("tk-harness-test")
            assert sum(counts.values()) >= 1
            assert set(counts) == {n.port for n in deployment.live}
            assert all(counts[n.port] == 0 for n in deployment.replicas)
        finally:
            await client.aclose()
        assert sum((await deployment.client_counts("tk-harness-test")).values()) == 0


async def test_a_killed_primary_is_replaced_by_its_replica_with_the_key() -> None:
    async with cluster(shards=3, replicas_per_shard=1) as deployment:
        client = client_for(deployment)
        try:
            await client.set("news", "first")
            old = await deployment.primary_for_key("news")
            replica = next(
                r for r in deployment.replicas if deployment.primary_of[r.port] == old.port
            )
            await deployment.sync_replicas()
            killed_at = time.monotonic()
            await deployment.kill_primary(old)
            new = await deployment.wait_failover(old)
            took = time.monotonic() - killed_at
            print(f"failover took {took:.2f} s")
            assert new is replica, deployment.node_logs()
            assert await deployment.primary_for_key("news") is new
            assert await deployment.role(new) == "master"
            assert new in deployment.primaries and old in deployment.dead
            assert f"127.0.0.1:{old.port}" not in deployment.url
            assert await client.get("news") == b"first"
            await client.set("news", "second")
            assert await _direct_get(new, "news") == b"second"
            await deployment.restart(old)
            assert old in deployment.replicas and deployment.primary_of[old.port] == new.port
            assert await deployment.role(old) == "slave"
        finally:
            await client.aclose()


async def test_a_manual_failover_swaps_a_primary_and_its_replica() -> None:
    async with cluster(shards=3, replicas_per_shard=1) as deployment:
        old = deployment.primaries[0]
        replica = next(r for r in deployment.replicas if deployment.primary_of[r.port] == old.port)
        assert await deployment.manual_failover(replica) is old
        assert await deployment.role(replica) == "master" and await deployment.role(old) == "slave"
        assert await deployment.primary_for_slot(0) is replica
        assert replica in deployment.primaries and old in deployment.replicas
        assert deployment.primary_of[old.port] == replica.port


async def _direct_get(node: Node, key: str) -> bytes | None:
    async with node.client() as c:
        value = await c.get(key)
        assert value is None or isinstance(value, bytes)
        return value
