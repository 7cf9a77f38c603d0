"""A real Valkey Cluster on loopback, for the ``redis+cluster://`` tests: ``shards``
primaries and ``replicas_per_shard`` replicas of each, all the packaged ``valkey-server``
with ``--cluster-enabled yes``, in a temporary directory, with a node timeout short
enough that a killed primary's replica takes over in a couple of seconds.

The cluster is formed by hand, without ``valkey-cli``: ``CLUSTER ADDSLOTSRANGE`` on each
primary, ``CLUSTER MEET`` from the first node to the others, ``CLUSTER REPLICATE`` on
each replica; then every node is waited for until it says ``cluster_state:ok`` and every
replica until its link to its primary is up.

Use it as ``async with cluster(shards=3, replicas_per_shard=1) as deployment: ...``.
Every process is started with ``die_with_parent`` and killed in ``stop`` by its own id;
every wait is bounded by ``DEADLINE`` and its failure message carries the nodes' logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from tests.sentinel_cluster import DEADLINE, Node, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 1000

__all__ = ["DEADLINE", "NODE_TIMEOUT_MS", "SLOTS", "Node", "RedisClusterDeployment", "cluster", "command"]


async def command(node: Node, *args: str | int) -> Any:
    """One command to ``node`` on a connection of its own, its reply unparsed."""
    async with node.client() as c:
        return await c.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisClusterDeployment:
    """``shards`` primaries, each with ``replicas_per_shard`` replicas, in one cluster.

    ``primaries`` and ``replicas`` follow failovers that this object saw through
    (``wait_failover``, ``manual_failover``); a killed node is in ``dead``.
    """

    def __init__(self, shards: int = 3, replicas_per_shard: int = 1) -> None:
        if shards < 1 or replicas_per_shard < 0:
            raise ValueError("a cluster needs a shard, and no negative replica count")
        self.root = Path(tempfile.mkdtemp(prefix="tk-cluster-"))
        self.primaries: list[Node] = []
        self.replicas: list[Node] = []
        self.dead: list[Node] = []
        self.ids: dict[int, str] = {}  # port -> cluster node id
        self.slot_ranges: dict[int, list[tuple[int, int]]] = {}  # primary port -> its ranges
        self.primary_of: dict[int, int] = {}  # replica port -> its primary's port
        self.bus_ports: dict[int, int] = {}  # port -> cluster bus port
        self._all: list[Node] = []  # every node ever started: ``stop`` kills these
        for i in range(shards):
            self.primaries.append(self._node(f"primary{i}"))
        for i in range(shards):
            for j in range(replicas_per_shard):
                replica = self._node(f"replica{i}-{j}")
                self.replicas.append(replica)
                self.primary_of[replica.port] = self.primaries[i].port
        for i, primary in enumerate(self.primaries):
            self.slot_ranges[primary.port] = [(i * SLOTS // shards, (i + 1) * SLOTS // shards - 1)]

    def _node(self, name: str) -> Node:
        # The bus port is given explicitly: the default, port + 10000, may be taken or > 65535.
        bus_port = free_port()
        root = self.root
        node = Node(root, name, [])
        self.bus_ports[node.port] = bus_port
        self._all.append(node)
        node.args = [
            "--cluster-enabled", "yes",
            "--cluster-port", str(bus_port),
            "--cluster-config-file", str(root / name / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-reads-when-down", "no",
            "--cluster-require-full-coverage", "yes",
        ]
        return node

    # The shape of the deployment

    @property
    def nodes(self) -> list[Node]:
        """Every node, dead ones included."""
        return list(self._all)

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @property
    def url(self) -> str:
        """``redis+cluster://`` and every primary's address (the primaries now)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.primaries)

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def node_logs(self, lines: int = 20) -> str:
        return "\n".join(f"--- {n.name} (:{n.port})\n{n.log_tail(lines)}" for n in self.nodes)

    # Life cycle

    async def start(self) -> RedisClusterDeployment:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await self._until(partial(self._answers, node), f"{node.name} answers")
        for node in self.nodes:
            self.ids[node.port] = _text(await command(node, "CLUSTER", "MYID"))
        for primary in self.primaries:
            for start, end in self.slot_ranges[primary.port]:
                await command(primary, "CLUSTER", "ADDSLOTSRANGE", start, end)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            await command(first, "CLUSTER", "MEET", "127.0.0.1", node.port, self.bus_ports[node.port])
        for node in self.nodes:
            await self._until(partial(self._knows_all, node), f"{node.name} knows every node")
        for replica in self.replicas:
            primary_id = self.ids[self.primary_of[replica.port]]
            await command(replica, "CLUSTER", "REPLICATE", primary_id)
        for node in self.nodes:
            await self._until(partial(self._sees_shape, node), f"{node.name} sees every replica")
            await self._until(partial(self._state_ok, node), f"{node.name} cluster_state:ok")
        for replica in self.replicas:
            await self._until(partial(self._link_up, replica), f"{replica.name} in sync")
        return self

    async def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    # Questions to the servers

    async def cluster_info(self, node: Node) -> dict[str, str]:
        raw = _text(await command(node, "CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)

    async def cluster_nodes(self, node: Node) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` of ``node``, a dict a line: id, port, flags (a set), primary
        (the id of its primary, or None), slots ((start, end) pairs), link."""
        raw = _text(await command(node, "CLUSTER", "NODES"))
        rows = []
        for line in raw.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            slots = []
            for part in fields[8:]:
                if part.startswith("["):
                    continue  # a slot being imported or migrated
                start, _, end = part.partition("-")
                slots.append((int(start), int(end or start)))
            rows.append({
                "id": fields[0],
                "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                "flags": set(fields[2].split(",")),
                "primary": None if fields[3] == "-" else fields[3],
                "slots": slots,
                "link": fields[7],
            })
        return rows

    async def role(self, node: Node) -> str:
        reply = await command(node, "ROLE")
        return _text(reply[0])

    async def primary_for_slot(self, slot: int) -> Node:
        """The node that serves ``slot``, as the first live node that answers says (its
        ``CLUSTER SHARDS``)."""
        last: Exception | None = None
        for node in self.live:
            try:
                shards = await command(node, "CLUSTER", "SHARDS")
            except Exception as e:  # try the next node
                last = e
                continue
            for shard in shards:
                shard = _pairs(shard)
                ranges = [int(x) for x in shard["slots"]]
                if not any(a <= slot <= b for a, b in zip(ranges[::2], ranges[1::2], strict=True)):
                    continue
                for entry in shard["nodes"]:
                    entry = _pairs(entry)
                    if _text(entry["role"]) == "master" and _text(entry["health"]) == "online":
                        return self.node_at(int(entry["port"]))
            raise AssertionError(f"no online primary serves slot {slot} as {node.name} says")
        raise AssertionError(f"no live node answers: {last!r}\n{self.node_logs()}")

    async def primary_for_key(self, key: str) -> Node:
        return await self.primary_for_slot(key_slot(key.encode()))

    async def client_counts(self, name_prefix: str) -> dict[int, int]:
        """For every live node (by port), how many of its connections have a client name
        that starts with ``name_prefix``."""
        counts: dict[int, int] = {}
        for node in self.live:
            async with node.client() as c:
                clients: Any = await c.client_list()
            counts[node.port] = sum(
                1 for client in clients if str(client.get("name", "")).startswith(name_prefix)
            )
        return counts

    async def sync_replicas(self) -> None:
        """Wait until every live replica has everything its primary has written."""
        for replica in self.replicas:
            if replica in self.live:
                await self._until(partial(self._caught_up, replica), f"{replica.name} caught up")

    # Failures

    async def kill_primary(self, node: Node) -> None:
        """SIGKILL ``node`` (a primary) and reap it."""
        if node not in self.primaries:
            raise AssertionError(f"{node.name} is not a primary")
        node.kill()
        self.primaries.remove(node)
        self.dead.append(node)

    async def kill(self, node: Node) -> None:
        """SIGKILL any node and reap it."""
        node.kill()
        for group in (self.primaries, self.replicas):
            if node in group:
                group.remove(node)
        if node not in self.dead:
            self.dead.append(node)

    async def wait_failover(self, old_node: Node) -> Node:
        """Wait until the slots ``old_node`` served are served by another node that says
        it is a primary, and every live node says ``cluster_state:ok``; that node."""
        first_slot = self.slot_ranges[old_node.port][0][0]
        found: list[Node] = []

        async def moved() -> bool:
            with contextlib.suppress(Exception):
                node = await self.primary_for_slot(first_slot)
                if node.port != old_node.port and await self.role(node) == "master":
                    found[:] = [node]
                    return True
            return False

        await self._until(moved, f"a replica of {old_node.name} takes over")
        for node in self.live:
            await self._until(partial(self._state_ok, node), f"{node.name} cluster_state:ok")
        new = found[0]
        self._promoted(old_node, new)
        return new

    async def manual_failover(self, replica: Node) -> Node:
        """``CLUSTER FAILOVER`` on ``replica``: its primary hands over, alive, and becomes
        its replica. Waits until the roles have swapped and the cluster is ok; the old
        primary."""
        old = self.node_at(self.primary_of[replica.port])
        await command(replica, "CLUSTER", "FAILOVER")

        async def swapped() -> bool:
            with contextlib.suppress(Exception):
                return await self.role(replica) == "master" and await self.role(old) == "slave"
            return False

        await self._until(swapped, f"{replica.name} takes over from {old.name}")
        self._promoted(old, replica)
        for node in self.live:
            await self._until(partial(self._state_ok, node), f"{node.name} cluster_state:ok")
        await self._until(partial(self._link_up, old), f"{old.name} follows {replica.name}")
        return old

    async def restart(self, node: Node) -> None:
        """Start a killed node again (same port, same ``nodes.conf``): it rejoins, as a
        replica of whichever node now serves the slots it had. Waits until it follows
        that node, in sync, and the cluster is ok."""
        if node not in self.dead:
            raise AssertionError(f"{node.name} was not killed")
        node.start()
        self.dead.remove(node)
        self.replicas.append(node)
        await self._until(partial(self._answers, node), f"{node.name} answers")

        async def follows() -> bool:
            with contextlib.suppress(Exception):
                rows = {r["id"]: r for r in await self.cluster_nodes(node)}
                me = rows[self.ids[node.port]]
                if "slave" in me["flags"] and me["primary"] in rows:
                    primary = self.node_at(rows[me["primary"]]["port"])
                    if primary in self.primaries:
                        self.primary_of[node.port] = primary.port
                        return True
            return False

        await self._until(follows, f"{node.name} rejoins as a replica")
        await self._until(partial(self._link_up, node), f"{node.name} in sync")
        for other in self.live:
            await self._until(partial(self._state_ok, other), f"{other.name} cluster_state:ok")

    def _promoted(self, old: Node, new: Node) -> None:
        """Book-keeping: ``new`` serves what ``old`` served, and the other replicas of
        ``old`` follow ``new`` (the cluster moves them there)."""
        self.slot_ranges[new.port] = self.slot_ranges.pop(old.port)
        if new in self.replicas:
            self.replicas.remove(new)
        if new not in self.primaries:
            self.primaries.append(new)
        if old in self.primaries:
            self.primaries.remove(old)
        if old.proc is not None and old.proc.poll() is None and old not in self.replicas:
            self.replicas.append(old)
        self.primary_of.pop(new.port, None)
        for port, primary in list(self.primary_of.items()):
            if primary == old.port:
                self.primary_of[port] = new.port
        if old in self.replicas:
            self.primary_of[old.port] = new.port

    # Checks for _until

    async def _answers(self, node: Node) -> bool:
        with contextlib.suppress(Exception):
            async with node.client() as c:
                return bool(await c.ping())
        return False

    async def _knows_all(self, node: Node) -> bool:
        with contextlib.suppress(Exception):
            rows = await self.cluster_nodes(node)
            return len(rows) == len(self.nodes) and all(
                "handshake" not in r["flags"] and r["link"] == "connected" for r in rows
            )
        return False

    async def _sees_shape(self, node: Node) -> bool:
        """``node`` sees every replica as one, of its primary (needed before a failover
        can be voted for)."""
        with contextlib.suppress(Exception):
            rows = {r["port"]: r for r in await self.cluster_nodes(node)}
            return all(
                "slave" in rows[port]["flags"] and rows[port]["primary"] == self.ids[primary]
                for port, primary in self.primary_of.items()
            )
        return False

    async def _state_ok(self, node: Node) -> bool:
        with contextlib.suppress(Exception):
            return (await self.cluster_info(node)).get("cluster_state") == "ok"
        return False

    async def _link_up(self, replica: Node) -> bool:
        with contextlib.suppress(Exception):
            async with replica.client() as c:
                info: Any = await c.info("replication")
                return bool(info.get("master_link_status") == "up")
        return False

    async def _caught_up(self, replica: Node) -> bool:
        with contextlib.suppress(Exception):
            primary = self.node_at(self.primary_of[replica.port])
            async with primary.client() as p, replica.client() as r:
                wanted: Any = (await p.info("replication"))["master_repl_offset"]
                have: Any = await r.info("replication")
                return bool(
                    have.get("master_link_status") == "up"
                    and int(have["slave_repl_offset"]) >= int(wanted)
                )
        return False

    async def _until(
        self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:.0f} s: {what}\n{self.node_logs()}")
            await asyncio.sleep(0.05)


def _pairs(reply: Any) -> dict[str, Any]:
    """A RESP2 flat ``[key, value, ...]`` list (or a RESP3 map) as a dict of str keys."""
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    return {_text(k): v for k, v in zip(reply[::2], reply[1::2], strict=True)}


@contextlib.asynccontextmanager
async def cluster(shards: int = 3, replicas_per_shard: int = 1) -> AsyncIterator[RedisClusterDeployment]:
    """A started ``RedisClusterDeployment``, stopped (every process killed, its directory
    removed) on the way out."""
    deployment = RedisClusterDeployment(shards, replicas_per_shard)
    try:
        yield await deployment.start()
    finally:
        await deployment.stop()
