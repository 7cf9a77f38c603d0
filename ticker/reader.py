"""The reader: one per process and doorbell, following it.

Every append to a channel's log also appends the channel's name to one stream, the bell
(``ticker:bell``, see ``ticker.store``; on a Redis Cluster, the bell of the channel's
partition, see ``ticker.keys``, and a reader per partition, each following the channels
of its partition). The reader blocks on the bell only (``XREAD
BLOCK`` on a connection of its own, with no socket timeout): the key set of its blocking
read never grows with the channels this process follows, and a subscribe never has to
wake it or cancel its read (cancelling a redis-py command drops its connection). For the
distinct channels one bell read names that are open and ready here, it reads their logs
after their positions, one non-blocking ``XREAD`` per ``KEYS_PER_READ`` of them (again for
those that return a full page), and hands the events to the hub's fan-out. A channel not
open here costs one dict lookup: a wake-up costs work in proportion to what was
published, never to what is open.

Anchoring. On start and after every reconnect the reader first reads the bell's newest
ID, then the set of channels that exist, then sweeps: it reads every open channel that
exists after its position. What was appended before the anchor is found by the sweep,
what came after by the bell. A bell read that returns a full page may follow a loss to
the bell's trimming (``BELL_MAXLEN``: a loss needs more entries than that since the last
read, so the read after one is always full): then the set is read again and every open
channel swept.

The opening race. A channel whose opening read (``Hub._open``) is out when the bell names
it is marked (``rung``), and its opener pulls its log after its position before the
channel is ready. One still waiting to start its read needs nothing: the read comes after
the event.

Following the primary (one server or Sentinel; a Redis Cluster client follows its
shards' primaries itself, through the cluster's redirections). Every
``failover_check_interval`` (between two bell reads, whose wait is never longer) the
reader asks its own server ``ROLE``, and with Sentinel whether
it is the server Sentinel names now (``ticker.sentinel.serves_as_primary``); it also
points the store's pools at the primary of the moment. A server that is no longer the
primary is left like a lost connection: the reader drops its connection, opens one to the
primary that Sentinel names, and anchors again; ``/readyz`` answers 503 meanwhile. Without
the check, a reader left on a demoted primary (Sentinel kills its clients, but a primary
cut off from the sentinels is never told) would wait on a bell that nobody rings any more,
while publishes succeed elsewhere and every health check stays green.

Anchoring on another primary. Replication is asynchronous: the new primary may lack the
newest events the reader dispatched, and appends its own after what it has, with IDs that
may be lower than the reader's positions. So each anchor first checks that every open
channel's position is still in its log (``store.positions_hold``); a channel whose
position is gone is dropped from memory and its subscribers closed to resume afresh,
where ``store.recoverable`` answers ``recovered: false`` for such a cursor. A channel
whose opening read was out meanwhile is checked by its opener (``verify``).

The existence cache: the channels that exist, from ``ticker:channels`` (loaded when
anchoring) plus every name the bell brings. A publish adds its channel to that set before
the channel's first event, so a channel missing from the cache has no event that the bell
has not brought yet: the hub opens it as an empty log, with no Redis read, and its first
event rings the bell like any other. Until the cache is loaded (not anchored yet, or Redis
lost) ``exists`` answers None, and the hub reads.

The cache of API keys (``ticker.auth.KeyCache``): a revoke rings every bell with the
key's digest (field ``k`` instead of ``c``), and the reader drops that key from the
process's cache. While it does not follow its bell (before its first anchor, after a
failure) the cache is off, since it may miss a revoke; anchoring empties it, and so does
a full page of the bell (the bell may have been trimmed past the reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import redis.exceptions

from ticker import sentinel, store, tokens

if TYPE_CHECKING:
    from ticker.auth import KeyCache
    from ticker.channel import Channel
    from ticker.hub import Hub

log = logging.getLogger("ticker.hub")

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# Coalescing under load. A fan-out to many sockets holds the event loop (about 75 ms for
# one brief to 10,000 WebSockets on this kind of machine, almost all of it one write per
# socket). Read again at once, the reader would fan out each new brief on its own while
# the requests of this process wait behind it: a publisher POSTing briefs back to back
# got one in per fan-out (200 briefs took 22 s to reach 10,000 subscribers). So after a
# fan-out that took longer than FANOUT_BUSY, while this process is answering writes (one
# was answered at most FANOUT_QUICK before that fan-out began), the reader rests as long
# as the fan-out took (at most FANOUT_REST_MAX) before it reads the bell again: the
# writes run meanwhile, and the briefs they publish go out together in the next fan-out,
# joined in one write per socket. Briefs written by others (another process, another
# node, a publisher on Redis) are never held back: resting for them would only delay
# them (measured at 10,000 subscribers and 10 briefs/s written to Redis, a rest decided
# from the bell's timing alone took the p99 latency from 93 ms to 215-300 ms).
FANOUT_BUSY = 0.005  # seconds
FANOUT_QUICK = 0.01  # seconds
FANOUT_REST_MAX = 0.1  # seconds


class NotPrimary(Exception):
    """The reader's server is no longer the primary."""


class Reader:
    """Brings the hub every new event of the channels it follows."""

    def __init__(self, hub: Hub, client: aioredis.Redis, partition: int = 0) -> None:
        self.hub = hub
        self.client = client
        self.keys = hub.store.keys
        self.partition = partition
        self.bell = self.keys.bell(partition)
        self.healthy = True  # not reconnecting
        self.after: str | None = None  # the newest bell entry taken; None until anchored
        self.known: set[str] | None = None  # channels that exist; None until loaded
        self.busy = 0.0  # seconds the last reads and their fan-out took (FANOUT_BUSY)
        # The process's cache of API keys (``ticker.auth.KeyCache``), set by the app: the
        # bell also names revoked keys, and a reader that does not follow its bell may
        # miss some, so the cache is off while this reader is not anchored.
        self.key_cache: KeyCache | None = None

    def exists(self, channel: str) -> bool | None:
        """Whether the channel has a log; None when the reader cannot tell yet."""
        known = self.known
        return None if known is None else channel in known

    async def run(self) -> None:
        hub = self.hub
        settings = hub.settings
        block_ms = store.reader_block_ms(settings)
        loop = asyncio.get_running_loop()
        checked = loop.time()
        attempt = 0
        if self.key_cache is not None:
            self.key_cache.blind(self.partition)  # until anchored
        while True:
            try:
                if self.after is None:
                    await self._anchor()
                    checked = loop.time()
                    if not self.healthy:
                        self.healthy = True
                        log.info("Redis reader reconnected; resuming from the last positions")
                elif loop.time() - checked >= settings.failover_check_interval:
                    await self._check_primary()
                    checked = loop.time()
                if await self._follow(block_ms):
                    await self._sweep()  # the bell may have been trimmed past us
                await self._rest()
            except Exception as exc:  # any failure: retry; never let the reader die
                self.after = None
                self.known = None  # until anchored again, opening a channel reads it
                if self.key_cache is not None:
                    self.key_cache.blind(self.partition)
                await self._disconnect()
                attempt += 1
                if attempt == 1:  # once per outage, not at every retry
                    if hub.metrics is not None:
                        hub.metrics.reader_reconnects.inc()
                    if isinstance(exc, (*_REDIS_DOWN, NotPrimary)):
                        log.warning("Redis reader lost its connection (%s); reconnecting", exc)
                    else:
                        log.exception("Redis reader failed; retrying")
                self.healthy = False
                cap = min(settings.reconnect_max_delay, 0.1 * 2**min(attempt, 16))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
                continue
            attempt = 0

    async def _rest(self) -> None:
        """Rest after a heavy fan-out while this process answers writes (see FANOUT_BUSY
        above)."""
        busy = self.busy
        if busy <= FANOUT_BUSY:
            return
        if time.monotonic() - self.hub.last_write > busy + FANOUT_QUICK:
            return
        await asyncio.sleep(min(busy, FANOUT_REST_MAX))

    async def _check_primary(self) -> None:
        """Raise NotPrimary unless the reader's server is the primary (see the module's
        docstring); point the store's pools at the primary of the moment."""
        if self.keys.clustered:
            return
        for pool_client in (self.hub.store.redis, self.hub.store.reads):
            await sentinel.follow_primary(pool_client)
        if not await sentinel.serves_as_primary(self.client):
            connection = self.client.connection
            where = f"{connection.host}:{connection.port}" if connection is not None else "?"
            raise NotPrimary(f"its server {where} is no longer the primary")

    async def _disconnect(self) -> None:
        """Drop the reader's connection and give it back to its pool, so that the next
        command takes one from the pool, which opens it to the primary of the moment.
        (redis-py reopens a connection it keeps to the address it had: with Sentinel,
        only the pool asks where the primary is now.)"""
        connection = getattr(self.client, "connection", None)  # (a cluster client has none)
        if connection is not None:
            self.client.connection = None
            with contextlib.suppress(Exception):
                await connection.disconnect()
            with contextlib.suppress(Exception):
                await self.client.connection_pool.release(connection)

    async def _anchor(self) -> None:
        """Where to follow the bell from, then everything open caught up to there, from
        positions that this server's logs still hold."""
        await self._check_primary()  # never anchored on a replica
        after = await store.bell_last(self.client, self.bell)
        if self.key_cache is not None:
            # A key revoked before ``after`` is gone from Redis by now (its bell entry
            # comes after the deletion), so what the cache reads from now on is true;
            # one revoked after it, the bell brings.
            self.key_cache.see(self.partition)
        await self._sweep(anchoring=True)
        # A channel's object may have changed while this reader did not follow its bell,
        # and a reader-token secret may have been revoked.
        self.hub.channels_changed(self.partition)
        self.hub.secrets_unknown()
        self.after = after

    async def _sweep(self, anchoring: bool = False) -> None:
        """Load the existence cache, then read every open channel that exists after its
        position. The channels whose opening read is out pull theirs when it returns.
        ``anchoring``: first drop the channels whose position the log no longer holds."""
        names = await store.channel_names(self.client, self.keys)
        self.known = names
        due: list[Channel] = []
        for state in self.hub.channels.values():
            if state.name not in names:
                continue  # no log: nothing to read (its first event rings the bell)
            if self.keys.partition(state.name) != self.partition:
                continue  # another reader's
            if state.ready.done():
                due.append(state)
            elif state.reading:
                state.rung = True
                state.verify = state.verify or anchoring
        if anchoring:
            due = await self._holding(due)
        await self._read(due)

    async def _holding(self, due: list[Channel]) -> list[Channel]:
        """The channels whose position this server's log holds; the others are dropped
        by the hub (``Hub.log_diverged``)."""
        positions = {s.name: s.newest() for s in due if s.position != store.ZERO}
        if not positions:
            return due
        held = await store.positions_hold(self.client, self.keys, positions)
        for state in due:
            if state.name in positions and state.name not in held:
                self.hub.log_diverged(state)
        return [s for s in due if self.hub.channels.get(s.name) is s]

    async def _follow(self, block_ms: int) -> bool:
        """One bell read and the reads of the open channels it names; True when the bell
        read was a full page."""
        assert self.after is not None and self.known is not None  # anchored
        bell = await store.read_bell(self.client, self.bell, self.after, block_ms)
        self.after, names, revoked, count = bell.after, bell.names, bell.keys, bell.count
        for kind, name in bell.changes:
            # A channel's object changed (what was rendered with its defaults is stale),
            # or the channel was deleted (ticker.channels).
            if kind == store.BELL_DELETED:
                self.known.discard(name)
                self.hub.channel_deleted(name)
            else:
                self.hub.channel_changed(name)
        if count >= store.BELL_COUNT:
            # The bell may have been trimmed past us: a change among what was lost.
            self.hub.channels_changed(self.partition)
        if count >= store.BELL_COUNT:
            self.hub.secrets_unknown()
        if revoked or count >= store.BELL_COUNT:
            digests = [store.ANY_KEY] if count >= store.BELL_COUNT else []
            for value in revoked:
                kid = tokens.revoked_kid(value)
                if kid is not None:
                    self.hub.secret_revoked(kid)
                else:
                    digests.append(value)
            if digests and self.hub.granted:
                self.hub.keys_revoked(digests)
        if self.key_cache is not None:
            if count >= store.BELL_COUNT:
                # The bell may have been trimmed past us: a revoke among what was lost.
                revoked = [store.ANY_KEY]
            if revoked:
                self.key_cache.forget(revoked)
        known = self.known
        channels = self.hub.channels
        due: list[Channel] = []
        for name in dict.fromkeys(names):
            known.add(name)
            state = channels.get(name)
            if state is None:
                continue
            if state.ready.done():
                due.append(state)
            elif state.reading:
                state.rung = True  # its opener pulls once its read is back
        await self._read(due)
        return count >= store.BELL_COUNT

    async def _read(self, due: list[Channel]) -> None:
        """Read the channels' logs after their positions and dispatch what came; again
        for those that returned a full page. ``busy``: how long it took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await self._read_and_dispatch(due)
        finally:
            self.busy = loop.time() - start

    async def _read_and_dispatch(self, due: list[Channel]) -> None:
        hub = self.hub
        while due:
            full: list[Channel] = []
            for start in range(0, len(due), store.KEYS_PER_READ):
                chunk = due[start : start + store.KEYS_PER_READ]
                positions = {s.name: s.position for s in chunk}
                got = await store.read_logs(self.client, self.keys, positions)
                reads = [(state, got[state.name]) for state in chunk if state.name in got]
                if reads:
                    await hub.dispatch_reads(reads)
                full += [state for state, events in reads if len(events) >= store.LOG_COUNT]
            due = [state for state in full if hub.channels.get(state.name) is state]
