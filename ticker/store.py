"""Redis streams: the only state of the service.

The state of one channel (names as on one server; ``ticker.keys`` gives the names of
every layout, Redis Cluster's included)::

    ticker:{ch}:log            stream of events: brief, correction, retraction (fields: e kind,
                               d brief JSON, b brief id, p the epoch of the log)
    ticker:{ch}:briefs         hash: brief id -> current brief JSON (retained briefs only)
    ticker:{ch}:meta           hash: epoch, last (newest event ID), floor (newest trimmed ID)
    ticker:{ch}:history        hash: brief id -> its versions (ticker.history), retained
                               and trimmed with the brief
    ticker:{ch}:idem:<digest>  idempotency record: "fingerprint\\nbrief JSON", with a TTL
    ticker:{ch}:sync           a short-lived write that WAIT can count replicas after, when
                               a request wrote nothing itself (a replayed publish)
    ticker:channels            set of channel names (added to before a channel's first event)
    ticker:channel-objects     hash: channel name -> its object's JSON (title, lang, time
                               zone: ticker.channels), created by a first publish when
                               auto_create_channels is on
    ticker:audit               stream of management actions (ticker.audit)
    ticker:bell                the doorbell: one entry (field c, the channel) per event
                               appended to any log, trimmed with MAXLEN ~ BELL_MAXLEN
                               (on a Redis Cluster, one per partition); also one entry
                               (field k, its digest) per API key revoked, on every bell;
                               (field m) per change of a channel's object, (field g) per
                               channel deleted, on the channel's bell (ticker.channels)
    ticker:rate:<key>:<minute> writes of an API key in a minute (ticker.ratelimit), counted
                               by the write scripts

Every write is one Lua script, so a failure leaves nothing half-written; each append
rings the bell (of the channel's partition) in the same script, whose keys all share
one hash slot. The bell carries no event: it only says which channels have new ones, so
that a process's reader blocks on one key per partition whatever the number of channels
it follows (``ticker.reader``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from types import TracebackType
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from ticker import cluster, ratelimit, sentinel
from ticker.config import Settings
from ticker.errors import ConfigError, Conflict, NotFound, NotReplicated, ProblemError, StoreUnavailable
from ticker.history import MAX_VERSIONS, first_version, next_version, versions
from ticker.keys import SINGLE, Layout, is_cluster_url
from ticker.models import Brief, millis_rfc3339, parse_stream_id

StreamKey = tuple[int, int]
# At least this many bell entries are kept (MAXLEN ~): a reader loses some only when more
# than this were rung since its last read, and then its read is a full page (BELL_COUNT).
BELL_MAXLEN = 10_000
BELL_COUNT = 1000  # bell entries per read; a full page makes the reader sweep
# The fields of a bell entry: a channel with a new event (rung by every append), or an API
# key that changed (its digest, or ANY_KEY for all: rung by ``KeyStore.revoke``), which
# every process drops from its cache of keys.
BELL_CHANNEL = b"c"
BELL_KEY = b"k"
# A channel's object changed (its title, lang or time zone: what is rendered with them is
# stale), or the channel was deleted (``ticker.channels``): field and the channel's name.
BELL_META = b"m"
BELL_DELETED = b"g"  # gone
ANY_KEY = "*"
LOG_COUNT = 1000  # events per channel per read; a full page is read on
KEYS_PER_READ = 256  # channel logs named by one XREAD
ZERO: StreamKey = (0, 0)
_UPDATE_ATTEMPTS = 20


def new_epoch() -> str:
    """The epoch a channel's log starts with (used by a write only when the log has
    none): 16 random hex digits. Not a secret, only never the same twice: Python's
    generator, seeded from the system's at start (and again in a forked child), rather
    than a system call per write."""
    return f"{random.getrandbits(64):016x}"


def new_channel_object(now: float) -> bytes:
    """The object a first publish creates its channel with (``auto_create_channels``):
    no title, language or time zone (``ticker.channels`` has the format)."""
    at = millis_rfc3339(int(now * 1000))
    return orjson.dumps({
        "title": None, "lang": None, "time_zone": None, "created_at": at, "updated_at": at,
    })


def not_created(channel: str) -> ProblemError:
    """A publish to a channel that was never created, with ``auto_create_channels`` off."""
    return ProblemError(
        f"Channel {channel!r} does not exist, and this server creates no channel on a first "
        f"publish (auto_create_channels is off): an operator creates it with 'ticker "
        f"channels create {channel}' (or PUT /v1/channels/{channel} with an admin key).",
        status=409, title="Channel not created", type_suffix="channel-not-created",
    )


def key_of(stream_id: str | bytes) -> StreamKey:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    parsed = parse_stream_id(text)
    if parsed is None:
        raise ValueError(f"not a stream ID: {text!r}")
    return parsed


def format_key(key: StreamKey) -> str:
    return f"{key[0]}-{key[1]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One entry of a channel's log, as read from Redis."""

    channel: str
    id: str  # the stream entry ID: the cursor after this event
    key: StreamKey
    kind: str  # "brief" | "correction" | "retraction"
    brief_id: str
    brief: bytes  # the brief JSON after this event
    epoch: str = ""  # the epoch of the log it was appended to

    @classmethod
    def from_entry(cls, channel: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
        eid = entry_id.decode()
        kind = fields[b"e"].decode()
        data = fields[b"d"]
        epoch = fields[b"p"].decode() if b"p" in fields else ""
        if kind == "brief":
            return cls(channel, eid, key_of(eid), kind, eid, _with_id(eid, data), epoch)
        return cls(channel, eid, key_of(eid), kind, fields[b"b"].decode(), data, epoch)


def _with_id(brief_id: str, body: bytes) -> bytes:
    # The stored publish event has no id (Redis assigns it); splice it in without parsing.
    return b'{"id":"' + brief_id.encode() + b'",' + body[1:]


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    channel: str
    cursor: str
    epoch: str
    briefs: list[bytes]  # brief JSON, newest first, corrections applied, retractions left out


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what happened after this cursor?"."""

    recovered: bool
    epoch: str
    events: list[Event]  # every event after the cursor, in order (empty unless recovered)


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelMeta:
    epoch: str | None
    last: StreamKey
    floor: StreamKey


def recoverable(
    since: StreamKey, client_epoch: str | None, meta: ChannelMeta, *, present: bool
) -> bool:
    """True when every event after ``since`` is still in the log (resume exactly).

    ``present``: the log has an entry with the ID ``since``. A cursor is always the ID of
    an event (or the floor, or 0-0), so one that lies between the floor and the newest
    event but is not in the log is an event this log never had: one written on a former
    primary and lost in a failover. What the client holds after it is unknown here, and
    the new primary may have appended events with lower IDs than it: never recovered."""
    if meta.epoch is None:
        # The channel has no log: nothing was ever published, or the log was lost.
        return since == ZERO
    if client_epoch is not None and client_epoch != meta.epoch:
        return False  # the log was lost and started again since the client's cursor
    if since > meta.last:
        return False  # a cursor from the future: the log this cursor came from is gone
    return since == meta.floor or (since > meta.floor and present)


def fold_snapshot(
    events: Iterable[Event], limit: int, state: dict[str, bytes | None], out: list[bytes]
) -> bool:
    """Fold log events, newest first, into the newest ``limit`` live briefs.

    Walking backwards, the first event seen for a brief is its current state. Once the
    publish event of ``limit`` live briefs has been seen, every newer brief has been seen
    too, so ``out`` holds exactly the newest ``limit``. Returns True when ``out`` is full.
    """
    for event in events:
        bid = event.brief_id
        if event.kind == "brief":
            # A newer correction (bytes) or retraction (None) seen first wins.
            current = state.get(bid, event.brief)
            if current is not None:
                out.append(current)
                if len(out) >= limit:
                    return True
        elif bid not in state:
            state[bid] = event.brief if event.kind == "correction" else None
    return False


def _meta(values: Sequence[bytes | None]) -> ChannelMeta:
    epoch, last, floor = values
    return ChannelMeta(
        epoch=epoch.decode() if epoch else None,
        last=key_of(last) if last else ZERO,
        floor=key_of(floor) if floor else ZERO,
    )


def _script(*names: str) -> str:
    """One script made of the pieces ``ticker/lua/<name>.lua``, in order: the shared
    functions (``append``, ``rate``) first, the script's body last."""
    lua = resources.files("ticker") / "lua"
    return "\n".join((lua / f"{name}.lua").read_text() for name in names)


def reader_block_ms(settings: Settings) -> int:
    """How long one ``XREAD BLOCK`` of the reader waits: at most the interval between its
    checks that its server is still the primary (``ticker.reader``)."""
    return max(1, min(settings.reader_block_ms, int(settings.failover_check_interval * 1000)))


def connect(
    settings: Settings, url: str, *, reader: bool = False, pool_size: int | None = None
) -> aioredis.Redis:
    """A Redis client: of one server, of the primary that Sentinel names
    (``redis+sentinel://``, ``ticker.sentinel``), or of a Redis Cluster
    (``redis+cluster://``, ``ticker.cluster``; there, the reader's client is shared by the
    readers of every partition, one connection each at most per node).

    The reader gets a connection of its own whose socket timeout is its longest
    ``XREAD BLOCK`` plus ``redis_timeout``: a quiet read is never cut short, and a server
    that vanished without closing the connection (a host cut off from the network) is
    noticed. Everything else shares a blocking pool (``pool_size`` connections, by default
    ``redis_pool_size``) that waits for a free connection instead of failing under load."""
    reader_timeout = reader_block_ms(settings) / 1000 + settings.redis_timeout
    if is_cluster_url(url):
        return cluster.client(
            cluster.parse_url(url),
            max_connections=(
                settings.redis_partitions if reader else pool_size or settings.redis_pool_size
            ),
            socket_timeout=reader_timeout if reader else settings.redis_timeout,
            connect_timeout=settings.redis_timeout,
        )
    if sentinel.is_sentinel_url(url):
        return sentinel.client(
            sentinel.parse_url(url),
            pool_size=pool_size or settings.redis_pool_size,
            pool_timeout=settings.redis_timeout,
            socket_timeout=reader_timeout if reader else settings.redis_timeout,
            connect_timeout=settings.redis_timeout,
            single=reader,
        )
    if reader:
        return aioredis.Redis.from_url(
            url, socket_timeout=reader_timeout, socket_connect_timeout=settings.redis_timeout,
            single_connection_client=True,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size or settings.redis_pool_size,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    return aioredis.Redis.from_pool(pool)


async def check_layout(client: aioredis.Redis, layout: Layout) -> None:
    """On a Redis Cluster, record the number of partitions the store is written with, or
    refuse (ConfigError) a process that has another: it would look for every channel in
    the wrong partition."""
    if not layout.clustered:
        return
    mine = f"partitions={layout.partitions}"
    await client.set(layout.record, mine, nx=True)
    recorded: Any = await client.get(layout.record)
    if recorded is not None and recorded.decode() != mine:
        theirs = recorded.decode().partition("=")[2]
        raise ConfigError(
            f"This Redis Cluster holds a ticker store written with {theirs} partitions, but "
            f"redis_partitions is {layout.partitions}. Set redis_partitions = {theirs} (every "
            "process must agree), or copy the store into a new layout with 'ticker migrate'."
        )


class _UnavailableAsError:
    """``unavailable_as_error``'s context manager: a class, not a generator, since every
    Redis call of a request goes through it (no state: one instance serves all)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # (Returns None: never swallows an exception, which mypy reads from the type.)
        if exc is None:
            return
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        if isinstance(exc, redis.exceptions.BusyLoadingError):
            raise StoreUnavailable("Redis is loading its data; try again shortly.") from exc
        if isinstance(exc, (
            redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
            redis.exceptions.AskError, redis.exceptions.RedisClusterException,
        )):
            # A Redis Cluster failing over or resharding: its slots are served again within
            # seconds (redis-py's cluster client has already retried).
            raise StoreUnavailable(f"Redis Cluster is reconfiguring: {exc}") from exc
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            # A replica: the server was demoted (with Sentinel, redis-py reconnects to the
            # primary of the moment on the next attempt).
            raise StoreUnavailable("Redis is a read-only replica now; try again shortly.") from exc


_UNAVAILABLE_AS_ERROR = _UnavailableAsError()


def unavailable_as_error() -> _UnavailableAsError:
    """Turn a lost Redis into StoreUnavailable (HTTP 503 with Retry-After)."""
    return _UNAVAILABLE_AS_ERROR


class Store:
    """Writes go through ``client``; the reads that anonymous readers cause (channel
    opens, catch-ups, snapshots, lists, feeds) through ``reads``, a pool of their own, so
    that a flood of readers waits there and never takes the connections of publishes."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, reads: aioredis.Redis | None = None,
        layout: Layout = SINGLE,
    ) -> None:
        self.redis = client
        self.reads = reads if reads is not None else client
        self.settings = settings
        self.keys = layout
        self._publish = client.register_script(_script("append", "rate", "publish"))
        self._update = client.register_script(_script("append", "update"))
        self._current = client.register_script(_script("rate", "current"))
        self._admit = client.register_script(_script("rate", "admit"))
        self._rate_limit = settings.publish_rate_per_minute

    # Writes

    async def publish(
        self, brief: Brief, *, idempotency: tuple[str, str] | None, fingerprint: str,
        writer: str | None = None,
    ) -> tuple[bytes, bool]:
        """Append a brief; returns (brief JSON with its id, replayed).

        ``idempotency`` is (scope, key): a second call with the same pair within the
        window publishes nothing and returns the first brief, ``replayed`` True.
        ``writer``: the name of the API key whose rate (``publish_rate_per_minute``)
        the publish counts against; past it, a 429 problem and nothing written. It is
        also the ``by`` of the brief's first version (``ticker.history``), recorded by
        the same script; a replay records nothing.

        On one server this is one script (one round trip, and ``WAIT`` with
        ``publish_min_replicas``): the idempotency record is checked first (a replay is
        not counted), then the rate, then the channel is listed and the brief appended.
        On a Redis Cluster the channel set and the counter are in the ``{ticker}`` slot,
        which the write script cannot touch: a script there counts and lists the channel
        first (a replay is counted there), then the write script runs.
        """
        channel = brief["channel"]
        keys = self._write_keys(channel)
        layout = self.keys
        clustered = layout.clustered
        limit = self._rate_limit if writer is not None else 0
        now = time.time()
        if idempotency is not None:
            keys.append(layout.idempotency(channel, *idempotency))
        if not clustered:
            keys += [layout.channels, layout.channel_objects]
            if limit:
                keys.append(layout.rate(cast(str, writer), ratelimit.window(now)))
        body = orjson.dumps(brief)
        args: list[bytes | str | int] = [
            body,
            fingerprint,
            self.settings.idempotency_window,
            self.settings.retention_max_events,
            self.settings.retention_max_age * 1000,
            new_epoch(),
            channel,
            BELL_MAXLEN,
            1 if idempotency is not None else 0,
            0 if clustered else 1,
            0 if clustered else limit,
            ratelimit.COUNTER_TTL,
            first_version(body, writer),
            1 if self.settings.auto_create_channels else 0,
            new_channel_object(now),
        ]
        async with unavailable_as_error():
            if clustered:
                # First: if Redis is lost between the two, the channel is listed with
                # nothing in it, rather than a brief written behind an answer that says
                # it was not.
                await self._admit_write(writer if limit else None, now, channel)
            if not self.settings.publish_min_replicas:  # (the pool, as in _session)
                return await self._append_brief(self.redis, keys, args, idempotency, writer, now)
            async with self._session(channel) as conn:
                return await self._append_brief(conn, keys, args, idempotency, writer, now)

    async def _append_brief(
        self, conn: aioredis.Redis, keys: list[str], args: list[bytes | str | int],
        idempotency: tuple[str, str] | None, writer: str | None, now: float,
    ) -> tuple[bytes, bool]:
        """The publish script on ``conn``, and what its answer means (``publish``)."""
        channel = cast(str, args[6])
        status, payload = await self._publish(keys=keys, args=args, client=conn)
        if status == 1:
            await self._replicated(conn, channel, "brief", payload, idempotency)
            return payload, False
        if status == -1:
            raise ratelimit.exceeded(cast(str, writer), self._rate_limit, now)
        if status == -2:
            raise not_created(channel)
        prior_fingerprint, _, prior = payload.partition(b"\n")
        if prior_fingerprint.decode() != args[1]:
            raise ProblemError(
                "This Idempotency-Key was already used for a different request "
                "body. Use a new key for a new brief.",
                status=422,
                title="Idempotency key reused",
                type_suffix="idempotency-key-reused",
            )
        # A replay wrote nothing: a write of its own makes WAIT count the replicas
        # that have everything up to now, the first publish included.
        await self._sync(conn, channel)
        await self._replicated(conn, channel, "brief", prior, idempotency)
        return prior, True

    async def update(
        self, channel: str, brief_id: str, change: Callable[[Brief], Brief | None], kind: str,
        writer: str | None = None,
    ) -> tuple[bytes, str] | None:
        """Apply ``change`` to the current brief and append a ``kind`` event.

        ``change`` returns None when there is nothing to do (then so does this). Raises
        NotFound when the brief is not (or no longer) retained. ``writer``: the API key
        whose rate the change counts against, once, when the brief is first read (on one
        server in the same script as that read); past it, a 429 problem and nothing read
        or written. It is also the ``by`` of the version the change records (in the
        same script as the change); a change that has nothing to do records nothing.
        """
        keys = self._write_keys(channel)
        limit = self._rate_limit if writer is not None else 0
        async with unavailable_as_error(), self._session(channel) as conn:
            for attempt in range(_UPDATE_ATTEMPTS):
                if attempt == 0 and limit:
                    current = await self._counted_read(conn, channel, brief_id, cast(str, writer))
                else:
                    current = await conn.hget(self.keys.briefs(channel), brief_id)
                if current is None:
                    raise NotFound(f"Channel {channel!r} has no brief {brief_id!r}.")
                parsed = orjson.loads(current)
                new = change(parsed)
                if new is None:
                    # Nothing to write (retracted already, maybe by a try that was answered
                    # 503): still answered only once enough replicas have it.
                    await self._sync(conn, channel)
                    await self._replicated(conn, channel, kind, current, None)
                    return None
                data = orjson.dumps(new)
                args = [
                    brief_id, current, data, kind,
                    self.settings.retention_max_events,
                    self.settings.retention_max_age * 1000,
                    new_epoch(),
                    channel,
                    BELL_MAXLEN,
                    next_version(kind, parsed, new, writer),
                    MAX_VERSIONS,
                ]
                result = await self._update(keys=keys, args=args, client=conn)
                if result[0] == 1:
                    await self._replicated(conn, channel, kind, data, None)
                    return data, result[1].decode()
                if result[0] == 0:
                    raise NotFound(f"Channel {channel!r} has no brief {brief_id!r}.")
        raise Conflict(
            f"Brief {brief_id!r} is being changed by others at the same time; try again."
        )

    async def _counted_read(
        self, conn: aioredis.Redis, channel: str, brief_id: str, writer: str
    ) -> Any:
        """The brief's JSON (None if not retained), read once the write is counted
        against ``writer``'s rate; a 429 problem past it."""
        now = time.time()
        if self.keys.clustered:
            await self._admit_write(writer, now, None)
            return await conn.hget(self.keys.briefs(channel), brief_id)
        keys = [self.keys.briefs(channel), self.keys.rate(writer, ratelimit.window(now))]
        reply = await self._current(
            keys=keys, args=[brief_id, self._rate_limit, ratelimit.COUNTER_TTL], client=conn
        )
        if reply[0] == -1:
            raise ratelimit.exceeded(writer, self._rate_limit, now)
        return reply[1] if len(reply) > 1 else None

    async def _admit_write(self, writer: str | None, now: float, channel: str | None) -> None:
        """On a Redis Cluster, before a write script: count the write against
        ``writer``'s rate (if any; a 429 problem past it) and, for a publish
        (``channel``), list the channel, in one step in the ``{ticker}`` slot."""
        layout = self.keys
        # Without a writer no counter is touched: any key name of the slot will do.
        keys = [layout.rate(writer or "-", ratelimit.window(now))]
        if channel is not None:
            keys += [layout.channels, layout.channel_objects]
        reply = await self._admit(keys=keys, args=[
            self._rate_limit if writer is not None else 0, ratelimit.COUNTER_TTL,
            channel or "", 1 if self.settings.auto_create_channels else 0,
            new_channel_object(now),
        ])
        if reply[0] == -1:
            raise ratelimit.exceeded(cast(str, writer), self._rate_limit, now)
        if reply[0] == -2:
            raise not_created(cast(str, channel))

    def _write_keys(self, channel: str) -> list[str]:
        """The keys every write script takes (``ticker/lua/append.lua``): the channel's
        log, briefs and meta, the bell of its partition and the briefs' histories, all
        of one slot."""
        keys = self.keys
        return [
            keys.log(channel), keys.briefs(channel), keys.meta(channel),
            keys.bell(keys.partition(channel)), keys.history(channel),
        ]

    # Durability: WAIT for replicas, on the connection that wrote

    @asynccontextmanager
    async def _session(self, channel: str) -> AsyncIterator[aioredis.Redis]:
        """Where a write goes: with ``publish_min_replicas``, one connection held for the
        write and its ``WAIT`` (which counts the replicas that have every write *of its
        connection*); otherwise the pool, as any command."""
        if not self.settings.publish_min_replicas:
            yield self.redis
            return
        if self.keys.clustered:
            async with cluster.node_session(self.redis, self.keys.log(channel)) as conn:
                yield conn
            return
        async with self.redis.client() as conn:
            yield conn

    async def _sync(self, conn: aioredis.Redis, channel: str) -> None:
        """A write of no meaning, so that a ``WAIT`` after it on ``conn`` covers whatever
        the primary had before, when the request itself wrote nothing."""
        if self.settings.publish_min_replicas:
            await conn.set(self.keys.sync(channel), b"1", px=10_000)

    async def _replicated(
        self, conn: aioredis.Redis, channel: str, kind: str, data: bytes,
        idempotency: tuple[str, str] | None,
    ) -> None:
        """Return once ``publish_min_replicas`` replicas have what ``conn`` wrote; raise
        NotReplicated (503) if they do not within ``publish_replica_timeout_ms``.

        ``WAIT`` rather than ``WAITAOF``: the loss this guards against is the primary's
        (its process or its machine), after which Sentinel promotes a replica that holds
        the write in memory. ``WAITAOF`` would also need every replica to fsync an
        append-only file before the answer, for a loss of the primary and the replicas
        at once."""
        required = self.settings.publish_min_replicas
        if not required:
            return
        timeout = self.settings.publish_replica_timeout_ms
        replicas = int(await conn.wait(required, timeout))
        if replicas >= required:
            return
        got = (
            f"only {replicas} of the {required} replicas required confirmed it within "
            f"{timeout} ms"
        )
        if kind == "brief":
            brief_id = orjson.loads(data)["id"]
            again = (
                "Retry with the same Idempotency-Key: the retry returns this same brief "
                "once the replicas have it, and never publishes a second copy."
                if idempotency is not None else
                "This request had no Idempotency-Key, so a retry would publish a second "
                f"copy: check the channel for brief {brief_id} first, and send an "
                "Idempotency-Key with every publish."
            )
            detail = (
                f"Brief {brief_id} was written on the primary, but {got}, so a failover "
                f"could still lose it. {again}"
            )
        elif kind == "correction":
            detail = (
                f"The correction was written on the primary, but {got}, so a failover "
                "could still lose it. Read the brief back before you correct it again."
            )
        else:
            detail = (
                f"The retraction was written on the primary, but {got}, so a failover "
                "could still lose it. Retry: retracting again is safe."
            )
        raise NotReplicated(detail, replicas=replicas, required=required)

    # Reads

    async def get(self, channel: str, brief_id: str) -> bytes | None:
        async with unavailable_as_error():
            data: Any = await self.reads.hget(self.keys.briefs(channel), brief_id)
        return cast(bytes | None, data)

    async def history(self, channel: str, brief_id: str) -> list[dict[str, Any]] | None:
        """The versions of a retained brief, oldest first (``ticker.history``); None when
        the brief is not (or no longer) retained. A brief published before histories
        were kept has those of its later changes only (an empty list if none)."""
        async with unavailable_as_error(), self.reads.pipeline(transaction=True) as pipe:
            # (HGET rather than HEXISTS: redis-py's cluster transactions fail on the
            # latter's reply callback.)
            pipe.hget(self.keys.briefs(channel), brief_id)
            pipe.hget(self.keys.history(channel), brief_id)
            retained, stored = await pipe.execute()
        if retained is None:
            return None
        return versions(stored) if stored else []

    async def snapshot(self, channel: str, limit: int) -> Snapshot:
        """The newest ``limit`` live briefs and the cursor they are current at."""
        page = max(2 * limit, 100)
        state: dict[str, bytes | None] = {}
        out: list[bytes] = []
        async with unavailable_as_error():
            async with self.reads.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.meta(channel), ["epoch", "last", "floor"])
                pipe.xrevrange(self.keys.log(channel), "+", "-", count=page)
                raw_meta, entries = await pipe.execute()
            meta = _meta(raw_meta)
            cursor = entries[0][0].decode() if entries else format_key(meta.last)
            while entries and not fold_snapshot(
                [Event.from_entry(channel, eid, fields) for eid, fields in entries],
                limit, state, out,
            ):
                if len(entries) < page:
                    break
                before = "(" + entries[-1][0].decode()
                entries = await self.reads.xrevrange(self.keys.log(channel), before, "-", count=page)
        return Snapshot(channel, cursor, meta.epoch or "", out)

    async def since(self, channel: str, since: StreamKey, epoch: str | None) -> Recovery:
        """Every event after ``since``, or ``recovered=False`` when some were trimmed."""
        cursor = format_key(since)
        async with unavailable_as_error(), self.reads.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.meta(channel), ["epoch", "last", "floor"])
            pipe.xrange(self.keys.log(channel), cursor, "+")  # from the cursor's own entry
            raw_meta, entries = await pipe.execute()
        meta = _meta(raw_meta)
        present = bool(entries) and entries[0][0].decode() == cursor
        if present:
            entries = entries[1:]
        if not recoverable(since, epoch, meta, present=present):
            return Recovery(False, meta.epoch or "", [])
        events = [Event.from_entry(channel, eid, fields) for eid, fields in entries]
        return Recovery(True, meta.epoch or "", events)

    async def recent(self, channel: str, count: int) -> tuple[ChannelMeta, list[Event]]:
        """The channel's meta and its newest ``count`` events, oldest first, read
        together: every event of the log after the first one returned is in the list."""
        async with unavailable_as_error(), self.reads.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.meta(channel), ["epoch", "last", "floor"])
            pipe.xrevrange(self.keys.log(channel), "+", "-", count=count)
            raw_meta, entries = await pipe.execute()
        events = [Event.from_entry(channel, eid, fields) for eid, fields in reversed(entries)]
        return _meta(raw_meta), events

    async def pull(self, channel: str, after: StreamKey) -> list[Event]:
        """The channel's events after ``after``, ``LOG_COUNT`` at most."""
        async with unavailable_as_error():
            events = await read_logs(self.reads, self.keys, {channel: after})
        return events.get(channel, [])

    async def holds(self, channel: str, position: StreamKey, seen: Event | None) -> bool:
        """Whether the channel's log still holds ``position`` (``positions_hold``)."""
        if position == ZERO:
            return True
        async with unavailable_as_error():
            held = await positions_hold(self.reads, self.keys, {channel: (position, seen)})
            return channel in held

    async def channel_object(self, channel: str) -> bytes | None:
        """The JSON of the channel's object (``ticker.channels``), None if it has none."""
        async with unavailable_as_error():
            raw: Any = await self.reads.hget(self.keys.channel_objects, channel)
        return cast(bytes | None, raw)

    async def channel_objects(self) -> dict[bytes, bytes]:
        """Every channel's object (name -> JSON), for the hub's set of private ones."""
        async with unavailable_as_error():
            raw: Any = await self.reads.hgetall(self.keys.channel_objects)
        return cast(dict[bytes, bytes], raw)

    async def channels(self) -> list[str]:
        async with unavailable_as_error():
            names: Any = await self.reads.smembers(self.keys.channels)
        return sorted(n.decode() for n in names)

    async def report_readers(self, process: str, readers: dict[str, int], ttl: float) -> None:
        """Record this process's readers per channel, for ``ttl`` seconds, and list the
        process in the index until then (an index rather than a ``SCAN``, which a Redis
        Cluster would have to run on every shard)."""
        key = self.keys.readers(process)
        index = self.keys.readers_index
        ttl = max(1, int(ttl))
        async with unavailable_as_error(), self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if readers:
                pipe.hset(key, mapping=readers)  # type: ignore[arg-type]
                pipe.expire(key, ttl)
                pipe.zadd(index, {process: time.time() + ttl})
            else:
                pipe.zrem(index, process)
            await pipe.execute()

    async def readers(self) -> dict[str, int]:
        """Readers per channel, summed over every live process."""
        totals: dict[str, int] = {}
        index = self.keys.readers_index
        async with unavailable_as_error():
            async with self.reads.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(index, "-inf", time.time())  # processes gone
                pipe.zrange(index, 0, -1)
                _, processes = await pipe.execute()
            if not processes:
                return totals
            async with self.reads.pipeline(transaction=False) as pipe:
                for process in processes:
                    pipe.hgetall(self.keys.readers(process.decode()))
                records = await pipe.execute()
        for counts in records:
            for channel, n in counts.items():
                name = channel.decode()
                totals[name] = totals.get(name, 0) + int(n)
        return totals

    async def ping(self) -> bool:
        """Redis answers, and as the primary: a demoted one answers too, but takes no
        write (with Sentinel, the pools are pointed at the new one meanwhile). On a
        Redis Cluster: every primary answers (the cluster client sends ``PING`` to each)."""
        try:
            async with unavailable_as_error():
                if self.keys.clustered:
                    return bool(await self.redis.ping())
                if await sentinel.serves_as_primary(self.redis):
                    return True
                await sentinel.follow_primary(self.redis)
                await sentinel.follow_primary(self.reads)
        except StoreUnavailable:
            pass
        return False


# The reader's reads (ticker.reader)


async def bell_last(client: aioredis.Redis, bell: str) -> str:
    """The ID of the bell's newest entry, "0-0" when it has none: where a reader that
    (re)connects starts following it."""
    reply: Any = await client.xrevrange(bell, "+", "-", count=1)
    return cast(str, reply[0][0].decode()) if reply else "0-0"


@dataclasses.dataclass(slots=True)
class Bell:
    """What one read of a doorbell brought (``read_bell``)."""

    after: str  # the ID of the last entry read
    names: list[str]  # the channels with new events, in order
    keys: list[str]  # the API keys that changed (digests, or ANY_KEY)
    count: int  # how many entries there were (BELL_COUNT at most)
    # (kind, channel) in order: BELL_META (its object changed) or BELL_DELETED.
    changes: list[tuple[bytes, str]] = dataclasses.field(default_factory=list)


async def read_bell(client: aioredis.Redis, bell: str, after: str, block_ms: int) -> Bell:
    """Wait at most ``block_ms`` for bell entries after ``after``: the channels they
    name, the API keys they say changed (``ticker.auth.KeyStore.revoke``) and the
    channels whose object changed or that were deleted (``ticker.channels``)."""
    reply: Any = await client.xread({bell: after}, block=block_ms, count=BELL_COUNT)
    if not reply:
        return Bell(after, [], [], 0)
    entries = reply[0][1]
    names: list[str] = []
    keys: list[str] = []
    changes: list[tuple[bytes, str]] = []
    for _, fields in entries:
        channel = fields.get(BELL_CHANNEL)
        if channel is not None:
            names.append(channel.decode())
            continue
        key = fields.get(BELL_KEY)
        if key is not None:
            keys.append(key.decode())
            continue
        for kind in (BELL_META, BELL_DELETED):
            changed = fields.get(kind)
            if changed is not None:
                changes.append((kind, changed.decode()))
        # Any other field: rung by a later version of ticker; nothing for this one.
    return Bell(entries[-1][0].decode(), names, keys, len(entries), changes)


async def channel_names(client: aioredis.Redis, layout: Layout) -> set[str]:
    """Every channel that has (or had) a log."""
    names: Any = await client.smembers(layout.channels)
    return {n.decode() for n in names}


async def read_logs(
    client: aioredis.Redis, layout: Layout, positions: dict[str, StreamKey]
) -> dict[str, list[Event]]:
    """One non-blocking ``XREAD`` of the logs of the given channels (at most
    ``KEYS_PER_READ``), ``LOG_COUNT`` events at most each, after each position. Channels
    with nothing new are left out."""
    streams: dict[Any, Any] = {layout.log(ch): format_key(pos) for ch, pos in positions.items()}
    reply: Any = await client.xread(streams, count=LOG_COUNT)
    out: dict[str, list[Event]] = {}
    for stream, entries in reply or []:
        channel = layout.channel_of_log(stream)
        out[channel] = [Event.from_entry(channel, eid, fields) for eid, fields in entries]
    return out


async def positions_hold(
    client: aioredis.Redis, layout: Layout, positions: dict[str, tuple[StreamKey, Event | None]]
) -> set[str]:
    """The channels whose log still holds the position given (with the event read there,
    when known: the same event), or has trimmed exactly up to it: every event after it
    is then in the log, and a reader may go on from it. Any other position is gone from
    the log: written on a former primary and lost in a failover, or trimmed before it
    was read. Going on from it would skip what the log has before it, or after it with
    lower IDs (a new primary's log can end before the old one's)."""
    # One command at a time, not a pipeline: the reader's client has one connection,
    # and a redis-py pipeline takes another from the pool. Anchoring is rare.
    held: set[str] = set()
    for name, (position, seen) in positions.items():
        cursor = format_key(position)
        entries: Any = await client.xrange(layout.log(name), cursor, cursor)
        if entries:
            if seen is None or Event.from_entry(name, *entries[0]) == seen:
                held.add(name)
            continue
        floor: Any = await client.hget(layout.meta(name), "floor")
        if floor is not None and key_of(floor) == position:
            held.add(name)
    return held
