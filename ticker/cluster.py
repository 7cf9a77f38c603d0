"""Redis Cluster: the store spread over shards.

``REDIS_URL=redis+cluster://HOST:PORT[,HOST:PORT...][?OPTIONS]`` names some nodes of the
cluster (any of them: the client learns the others and the slots from them); credentials
and TLS are query parameters, as for Sentinel (``ticker.sentinel.SERVER_OPTIONS``)::

    redis+cluster://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?password=s3cret

The keys are laid out in partitions (``ticker.keys``). redis-py's ``RedisCluster`` routes
every command by its key's slot and follows the cluster through failovers and
resharding (``MOVED``/``ASK`` redirections, a new slot map after a lost connection).
Every connection ticker opens is named ``ticker`` (``CLIENT LIST`` shows them).

Connections are bounded, and a command waits for one rather than fail: redis-py's
cluster client refuses a command (``MaxConnectionsError``) rather than open more than
``max_connections`` to one node, so ``BoundedCluster`` lets at most ``slots`` commands and
``slots`` pipelines be under way at once, whatever their nodes, the others waiting their
turn as with a blocking pool of one server: ``redis_pool_size`` for writes,
``redis_read_pool_size`` for reads, the number of partitions for the readers (whose
blocking reads hold one connection each).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import (
    ClusterNode,
    ClusterPipeline,
    RedisCluster,
    _ClusterNodePoolAdapter,
)
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError

from ticker import sentinel
from ticker.errors import ConfigError
from ticker.keys import CLUSTER_SCHEME, is_cluster_url

DEFAULT_PORT = 6379
CLIENT_NAME = "ticker"
URL_FORMAT = (
    "redis+cluster://HOST:PORT[,HOST:PORT...], with credentials and TLS as query "
    "parameters (" + ", ".join(sentinel.SERVER_OPTIONS) + ")"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    options: tuple[tuple[str, Any], ...] = ()


def parse_url(url: str) -> ClusterURL:
    """Parse and check a ``redis+cluster://`` URL; ConfigError says what is wrong."""
    if not is_cluster_url(url):
        raise ConfigError(f"{sentinel.shown(url)} is not a Redis Cluster URL: use {URL_FORMAT}.")
    netloc = url[len(CLUSTER_SCHEME):].split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        raise ConfigError(
            f"In {sentinel.shown(url)}, put credentials in query parameters (?password=..., "
            "?username=...), not before the hosts."
        )
    if not netloc:
        raise ConfigError(f"{sentinel.shown(url)} names no node: use {URL_FORMAT}.")
    parts = urlsplit(url)
    if parts.path.strip("/"):
        raise ConfigError(
            f"{sentinel.shown(url)} names a database: a Redis Cluster has only database 0."
        )
    nodes = tuple(
        sentinel.host_port(url, item, DEFAULT_PORT, "cluster node") for item in netloc.split(",")
    )
    options = sentinel.parse_options(parts.query, sentinel.SERVER_OPTIONS, "Redis Cluster URL")
    return ClusterURL(nodes, options)


@asynccontextmanager
async def torn_as_lost() -> AsyncIterator[None]:
    """A connection closed under a command, as a lost connection.

    When a node fails, redis-py's cluster client reads the slot map again in whichever
    task met the failure, and closes the connections of the nodes it replaces, also
    those other tasks are using at that moment: their command then fails inside
    redis-py with an ``AttributeError`` on the closed connection (measured: a few per
    failover, in publishes and readers). It is a lost connection, and is answered as
    one: 503 and a retry, a reader reconnecting."""
    try:
        yield
    except AttributeError as exc:
        if "'NoneType' object has no attribute" not in str(exc):
            raise
        raise RedisConnectionError(
            "the connection was closed under the command while the cluster's slot map "
            "was read again"
        ) from exc


class BoundedCluster(RedisCluster):
    """A cluster client with at most ``slots`` commands and ``slots`` pipelines under
    way (two bounds: a pipeline may send a redirected command again through the client,
    which must not wait for a slot its own pipeline holds), whose connections closed
    under a command fail as lost (``torn_as_lost``)."""

    def __init__(self, *args: Any, slots: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = asyncio.Semaphore(slots)
        self.pipelines = asyncio.Semaphore(slots)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.commands, torn_as_lost():
            return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of an ``XREAD``: its first stream's (ticker's reads name streams of
        one slot). redis-py would ask a node (``COMMAND GETKEYS``) before every
        ``XREAD``, whose keys the command table cannot place: a round trip more for
        each bell read, outside redis-py's retries."""
        if command.upper() == "XREAD":
            # (redis-py sends the keyword as bytes: b"STREAMS")
            names = [
                (a.decode("latin-1") if isinstance(a, bytes) else a).upper()
                if isinstance(a, (str, bytes)) else a
                for a in args
            ]
            if "STREAMS" in names:
                first = args[names.index("STREAMS") + 1]
                return key_slot(first.encode() if isinstance(first, str) else first)
        return await super()._determine_slot(command, *args)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def bounded(*args: Any, **kwargs: Any) -> Any:
            async with self.pipelines, torn_as_lost():
                return await execute(*args, **kwargs)

        pipe.execute = bounded  # type: ignore[method-assign]
        return pipe


def client(
    url: ClusterURL, *, max_connections: int, socket_timeout: float | None,
    connect_timeout: float,
) -> aioredis.Redis:
    """A client of the cluster, at most ``max_connections`` connections per node.

    Typed as a ``Redis``: the store uses the commands both have (single-key commands,
    scripts, pipelines and transactions within one slot)."""
    cluster = BoundedCluster(
        slots=max_connections,
        startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
        max_connections=2 * max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        client_name=CLIENT_NAME,
        require_full_coverage=True,
        **sentinel.server_kwargs(url.options),
    )
    return cast(aioredis.Redis, cluster)


@asynccontextmanager
async def node_session(redis: aioredis.Redis, key: str) -> AsyncIterator[aioredis.Redis]:
    """A client holding one connection to the primary of ``key``'s slot, for a write and
    its ``WAIT`` (which counts the replicas that have the writes of its own connection;
    a cluster client may send two commands on two connections).

    If the slot has moved (a failover, a resharding) or its primary is gone, the cluster
    client is told to read the slot map again, and the write fails as a lost store
    would: the caller answers 503, and the retry goes to the new primary."""
    cluster = cast(BoundedCluster, redis)
    # (innermost first: a torn connection is a lost one, after which the map is read again)
    async with cluster.commands, _session_on(cluster, key) as session, torn_as_lost():
        yield session


@asynccontextmanager
async def _session_on(cluster: BoundedCluster, key: str) -> AsyncIterator[aioredis.Redis]:
    await cluster.initialize()
    node = cluster.get_node_from_key(key)
    if node is None:
        raise RedisConnectionError(f"no primary serves the slot of {key}")
    session = aioredis.Redis(
        connection_pool=cast(Any, _ClusterNodePoolAdapter(node)), single_connection_client=True
    )
    try:
        yield session
    except (MovedError, AskError, RedisConnectionError, OSError):
        await session.aclose()  # before the map is read again: its node may be replaced
        await cluster.nodes_manager.initialize()
        raise
    finally:
        await session.aclose()
