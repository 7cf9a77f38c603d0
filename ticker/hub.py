"""Fan-out: the channels a process follows, their subscribers and bounded outboxes.

One reader per process (``ticker.reader``) brings each followed channel's new events.
What one read brings for a channel is encoded once (``ticker.frames``: one ``Message``
per event, its WebSocket frame built once) and handed as one ``Batch`` to every live
subscriber: a single append per subscriber, whatever the number of events. Nothing in
the fan-out awaits a subscriber.

How an outbox leaves depends on the connection. A WebSocket under ticker's own uvicorn
protocol (``ticker.wsproto``), and an event stream that ``ticker serve`` took on its
first request (``ticker.sseproto``), has a *sink*: the fan-out writes a batch straight to
its socket (a WebSocket's frames, or the batch's SSE form, built once per batch) when
nothing else is pending, and anything queued is written by the hub once per loop
iteration, as one ``transport.write``. Other connections (an event stream through ASGI,
a WebSocket on another ASGI server) have a writer task that drains the outbox. Either way
a connection that holds more than its bound (messages or bytes, the socket's unsent
buffer included) is closed with ``Close.SLOW_CONSUMER``; it resumes from its cursor.

Each channel keeps its newest events in memory (``replay_window``), complete from a known
point to the newest: a snapshot is folded from them and a resume is served from them,
without a Redis read per client, so that a storm of (re)connections costs one read.

Subscribing is exact, with no gap and no duplicate: the subscription is registered first,
then the catch-up (or snapshot) up to some cursor is sent, then ``_go_live`` sends what
the channel got after that cursor from memory and adds the subscriber to the fan-out,
all in one step of the event loop.

Subscribing is also cheap and bounded, since subscribers are anonymous. A channel that
has never been published (the reader's existence cache says so) is opened at once as an
empty log, with no Redis read. Opening one that exists reads it on the read pool, with a
slot of a budget of its own (half the pool), so that opens never take every read
connection. An open still waiting for its slot is cancelled when its last subscriber
leaves; one whose command is out is left to finish (cancelling a redis-py command drops
its connection) and its result is dropped. No failure is kept in a future: an exception
kept there holds its traceback, whose frames hold the channel that holds the future, a
cycle that lingers under ``ticker serve``'s raised GC thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from ticker import protocol
from ticker.channel import Channel, event_message
from ticker.channels import ChannelInfo, object_info
from ticker.config import Settings
from ticker.errors import StoreUnavailable
from ticker.frames import Batch, Item, Message, slices
from ticker.metrics import Metrics
from ticker.reader import Reader
from ticker.store import (
    ANY_KEY,
    LOG_COUNT,
    ZERO,
    Event,
    Snapshot,
    Store,
    StreamKey,
    fold_snapshot,
    format_key,
    key_of,
)
from ticker.tokens import CMS_KID, CONFIG_KID, KEY_KID, Grant, SecretCache

log = logging.getLogger("ticker.hub")

_TOO_SLOW = "too slow: fell behind the live stream; reconnect and resume from your cursor"
_LOG_RESET = "the channel's log began again: reconnect and resume from your cursor"
_STORE_DOWN = "store unavailable: reconnect later and resume"
_LOG_DIVERGED = (
    "the channel's log lost its newest events (a failover): reconnect and resume from your cursor"
)
# A token subscription is warned this long before its token expires (a tenth of its
# life for a short one).
TOKEN_WARNING_SECONDS = 60.0
# How long a read waits for the reader to bring what this process wrote (Hub.caught_up).
CATCH_UP_SECONDS = 1.0
_TOO_SLOW_CATCH_UP = "too slow: fell behind during catch-up; reconnect and resume from your cursor"


async def cancel_and_wait(task: asyncio.Task[None], every: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every``
    seconds: redis-py can swallow a cancellation that arrives while it connects or reads
    (its issues #2028, #2551), and a task that loops on Redis would then go on forever,
    and the shutdown that waits for it with it (``ticker serve`` on a port in use hung
    so before this)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended with an error while stopping", task.get_name(),
                  exc_info=task.exception())


class Sink(Protocol):
    """Where a connection's frames go without a writer task: a WebSocket
    (``ticker.wsproto``) or an event stream (``ticker.sseproto``)."""

    paused: bool  # while the socket's unsent buffer is above its high-water mark
    transport: asyncio.WriteTransport  # frames are written to it directly
    # What is written: each item's Server-Sent Events form (``item.sse``) if true, else its
    # WebSocket frame (``item.frame``). Read once, when the connection is made.
    sse: bool

    def limit_buffer(self, high: int) -> None: ...

    async def drained(self) -> None: ...

    def close_with(self, code: int, reason: str) -> None: ...


class Connection:
    """One client connection: its subscriptions and its bounded outbox.

    A connection whose sink is an event stream (``sink.sse``) is made an
    ``_EventStreamConnection``, which writes each item's SSE form instead of its WebSocket
    frame: chosen once here, so that the fan-out's hand-off to a WebSocket costs no test."""

    __slots__ = (
        "_room", "_transport", "_wakeup", "closing", "hub", "marked",
        "max_bytes", "max_messages", "outbox", "outbox_bytes", "outbox_count", "sink",
        "stream", "subscriptions", "tasks",
    )

    def __new__(cls, hub: Hub, sink: Sink | None = None) -> Connection:
        if sink is not None and sink.sse and cls is Connection:
            cls = _EventStreamConnection
        return object.__new__(cls)

    def __init__(self, hub: Hub, sink: Sink | None = None) -> None:
        self.hub = hub
        self.sink = sink
        # An event stream's (one channel: it ends with its subscription); an ASGI
        # stream's connection has no sink and is marked by its response.
        self.stream = sink is not None and sink.sse
        self.max_messages = hub.settings.outbox_max_messages
        self.max_bytes = hub.settings.outbox_max_bytes
        self.outbox: list[Item] = []
        self.outbox_count = 0
        self.outbox_bytes = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closing: tuple[int, str] | None = None
        self.marked = False  # in the hub's list of sinks to flush
        self._wakeup: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._transport: asyncio.WriteTransport | None = None
        if sink is not None:
            # Paused above half the bound: catch-up waits for it to drain.
            sink.limit_buffer(max(1, self.max_bytes // 2))
            self._transport = sink.transport

    def deliver(self, batch: Batch) -> None:
        """The fan-out's hand-off: with a sink and nothing else pending, the batch's
        frames are written at once (one write, no copy); otherwise queued."""
        transport = self._transport
        if transport is not None and not self.outbox and self.closing is None:
            if not transport.is_closing():
                transport.write(batch.frame)
                if transport.get_write_buffer_size() > self.max_bytes:
                    self.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW)
            return
        self.push(batch)

    # Filling the outbox

    def push(self, item: Item | bytes) -> None:
        """Queue without waiting; past the bound the connection is closed (4008)."""
        if self.closing is not None:
            return
        if isinstance(item, bytes):
            item = Message.control(item)
        count = self.outbox_count + item.count
        size = self.outbox_bytes + item.size
        if count > self.max_messages or size > self.max_bytes:
            self.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW)
            return
        self.outbox.append(item)
        self.outbox_count = count
        self.outbox_bytes = size
        self._notify()

    def has_room(self) -> bool:
        """At most half the bound is queued (the socket's unsent buffer included)."""
        if self.outbox_count * 2 > self.max_messages or self.outbox_bytes * 2 > self.max_bytes:
            return False
        return self.sink is None or not self.sink.paused

    async def put(self, item: Item | bytes) -> None:
        """Queue, first waiting for room: catch-up goes at the pace of the client."""
        while self.closing is None and not self.has_room():
            if self.sink is None:
                await self.room.wait()
            elif self.sink.paused:
                await self.sink.drained()
            else:
                await asyncio.sleep(0)  # the flush at the end of this iteration makes room
        self.push(item)

    def close(self, code: int, reason: str, *, drain: bool = False) -> None:
        """Close after what is queued (``drain``) or at once, dropping the outbox. The
        connection leaves the fan-out now, not when its client reads again."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if code == protocol.Close.SLOW_CONSUMER and self.hub.metrics is not None:
            self.hub.metrics.slow_closes.inc()
        if not drain:
            self.outbox = []
            self.outbox_count = self.outbox_bytes = 0
        self.hub.detach(self)
        if self._room is not None:
            self._room.set()
        self._notify()

    def _notify(self) -> None:
        if self.sink is not None:
            if not self.marked:
                self.marked = True
                self.hub.mark(self)
        elif self._wakeup is not None:
            self._wakeup.set()

    # Emptying it: a sink is flushed by the hub, otherwise a writer task takes.

    def flush(self) -> None:
        """Write everything pending as one write (the hub calls it once per iteration)."""
        self.marked = False
        items = self.outbox
        transport = self._transport
        if items and transport is not None:
            self.outbox = []
            self.outbox_count = self.outbox_bytes = 0
            if not transport.is_closing():
                transport.write(b"".join([i.frame for i in items]) if len(items) > 1 else items[0].frame)
                if transport.get_write_buffer_size() > self.max_bytes:
                    self.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW)
        if self.closing is not None and self.sink is not None:
            self.sink.close_with(*self.closing)

    @property
    def wakeup(self) -> asyncio.Event:
        """Set when a writer task has something to do."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            if self.outbox or self.closing is not None:
                self._wakeup.set()
        return self._wakeup

    @property
    def room(self) -> asyncio.Event:
        if self._room is None:
            self._room = asyncio.Event()
            self._room.set()
        if not self.has_room():
            self._room.clear()
        return self._room

    def take(self) -> list[Item]:
        """Everything queued, for a writer task."""
        items = self.outbox
        self.outbox = []
        self.outbox_count = self.outbox_bytes = 0
        if self._room is not None:
            self._room.set()
        return items

    def queued_bytes(self) -> int:
        transport = self._transport
        return self.outbox_bytes + (transport.get_write_buffer_size() if transport else 0)


class _EventStreamConnection(Connection):
    """A connection whose sink is an event stream (``ticker.sseproto``): the same as
    ``Connection``, writing each item's Server-Sent Events form (built once per message
    and batch, shared by every stream) instead of its WebSocket frame."""

    __slots__ = ()

    def deliver(self, batch: Batch) -> None:
        transport = self._transport
        if transport is not None and not self.outbox and self.closing is None:
            if not transport.is_closing():
                transport.write(batch.sse)
                if transport.get_write_buffer_size() > self.max_bytes:
                    self.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW)
            return
        self.push(batch)

    def flush(self) -> None:
        self.marked = False
        items = self.outbox
        transport = self._transport
        if items and transport is not None:
            self.outbox = []
            self.outbox_count = self.outbox_bytes = 0
            if not transport.is_closing():
                transport.write(b"".join([i.sse for i in items]) if len(items) > 1 else items[0].sse)
                if transport.get_write_buffer_size() > self.max_bytes:
                    self.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW)
        if self.closing is not None and self.sink is not None:
            self.sink.close_with(*self.closing)


class Subscription:
    """One channel on one connection. ``grant``: what opened a private channel to it (a
    reader token, until its expiry), None on a public one."""

    __slots__ = ("channel", "connection", "grant", "live")

    def __init__(self, connection: Connection, channel: str) -> None:
        self.channel = channel
        self.connection = connection
        self.live = False
        self.grant: Grant | None = None


class Hub:
    def __init__(
        self, store: Store, reader_client: aioredis.Redis, settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.settings = settings
        self.window_size = min(settings.replay_window, settings.retention_max_events)
        self.channels: dict[str, Channel] = {}
        self.connections: set[Connection] = set()
        # One reader per doorbell: one for a single server, one per partition of a Redis
        # Cluster (``ticker.keys``), all sharing ``reader_client``.
        self.stream_readers = [
            Reader(self, reader_client, partition) for partition in range(store.keys.bells)
        ]
        self.shutting_down = False
        # Opening reads take a slot each: at most half the read pool, so that they never
        # take every read connection (snapshots, catch-ups and GET lists need some too).
        self._opens = asyncio.Semaphore(max(1, settings.redis_read_pool_size // 2))
        self._tasks: list[asyncio.Task[None]] = []
        self._reporter: asyncio.Task[None] | None = None
        self._lease_keeper: asyncio.Task[None] | None = None
        # Channels followed for HTTP reads (``follow``), least recently read first.
        self.leases: dict[str, Channel] = {}
        # When this process last answered a write (``time.monotonic()``): the reader rests
        # after a heavy fan-out while writes come (``ticker.reader.FANOUT_BUSY``).
        self.last_write = -math.inf
        self._dirty: list[Connection] = []
        self.process_id = uuid.uuid4().hex
        # Reader-token signing secrets read by this process (``ticker.tokens``), which the
        # readers keep true; and the subscriptions a token opened, by when something is
        # due for them (a warning, then the end): one schedule, no timer per subscription.
        self.secrets = SecretCache()
        self.granted: set[Subscription] = set()
        self._due: list[tuple[float, int, Subscription, Grant, bool]] = []
        self._due_seq = itertools.count()
        self._due_changed: asyncio.Event | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        # The private channels (``ticker.access``), None until read: kept true by the
        # doorbell (``channel_changed``), read whole again when a reader missed bells.
        self.private: set[str] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # Lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(reader.run(), name=f"ticker-reader-{reader.partition}")
            for reader in self.stream_readers
        ]
        self._reporter = loop.create_task(self._report_readers(), name="ticker-readers")
        self._lease_keeper = loop.create_task(self._expire_leases(), name="ticker-leases")
        self._due_changed = asyncio.Event()
        self._expirer = loop.create_task(self._expire_grants(), name="ticker-token-expiry")

    async def stop(self) -> None:
        if self._expirer is not None:
            await cancel_and_wait(self._expirer)
            self._expirer = None
        if self._reloading is not None:
            await cancel_and_wait(self._reloading)
        for task in list(self._side_tasks):
            await cancel_and_wait(task)
        if self._lease_keeper is not None:
            await cancel_and_wait(self._lease_keeper)
            self._lease_keeper = None
        if self._reporter is not None:
            await cancel_and_wait(self._reporter)
            self._reporter = None
            with contextlib.suppress(StoreUnavailable):
                await self.store.report_readers(self.process_id, {}, 0)
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []

    def reader_for(self, channel: str) -> Reader:
        """The reader that follows the channel's doorbell."""
        return self.stream_readers[self.store.keys.partition(channel)]

    @property
    def reader_healthy(self) -> bool:
        """Every reader follows its doorbell (none is reconnecting)."""
        return all(reader.healthy for reader in self.stream_readers)

    async def shutdown(self, code: int, reason: str, drain_seconds: float) -> None:
        """Close every connection with ``code`` after sending what is queued, waiting
        at most ``drain_seconds`` for the writers to finish."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.close(code, reason, drain=True)
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def open(self, sink: Sink | None = None) -> Connection:
        """A new client connection, counted by the hub until ``close_connection``."""
        conn = Connection(self, sink)
        self.connections.add(conn)
        return conn

    def close_connection(self, conn: Connection) -> None:
        for channel in list(conn.subscriptions):
            self.unsubscribe(conn, channel)
        self.connections.discard(conn)

    # Writing: every connection with a sink and something pending, once per iteration

    def mark(self, conn: Connection) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:  # one broken socket must not stop the others' writes
                log.exception("writing to a subscriber failed")
                conn.close(protocol.Close.INTERNAL_ERROR, "internal error")

    # Subscriptions

    def subscribe_now(self, connection: Connection, request: protocol.Subscribe) -> bool:
        """Serve a subscribe without a task: at once from memory when the channel is open
        and memory holds the answer in at most half an outbox, or, while the channel
        opens, when it is open (subscribers come in storms: one channel read serves them
        all). False when it needs ``subscribe_task``."""
        # (A channel whose opening failed is no longer in ``channels``.)
        state = self.channels.get(request.channel) or self._open_channel(request.channel)
        sub = self._add(connection, state)
        if not state.ready.done():
            state.deferred[sub] = request
            return True
        return self._from_memory(state, sub, request)

    def subscribe_task(self, connection: Connection, request: protocol.Subscribe) -> None:
        """Serve a subscribe in a task of its own: a catch-up from Redis, at the pace of
        the client. If Redis cannot answer, the connection is closed with 1013."""
        connection.tasks[request.channel] = asyncio.get_running_loop().create_task(
            self._subscribe_task(connection, request))

    async def _subscribe_task(self, connection: Connection, request: protocol.Subscribe) -> None:
        try:
            await self.subscribe(connection, request)
        except StoreUnavailable as exc:
            log.warning("subscribe to %r failed: %s", request.channel, exc)
            connection.close(protocol.Close.TRY_AGAIN_LATER, _STORE_DOWN)
        except Exception:  # a bug: close rather than leave the subscriber waiting
            log.exception("subscribe to %r failed", request.channel)
            connection.close(protocol.Close.INTERNAL_ERROR, "internal error")
        finally:
            # Only this task's entry: after an unsubscribe, a new subscribe may own the name.
            if connection.tasks.get(request.channel) is asyncio.current_task():
                del connection.tasks[request.channel]

    def _from_memory(self, state: Channel, sub: Subscription, request: protocol.Subscribe) -> bool:
        if state.position < state.written:
            return False  # the reader has yet to bring what this process wrote
        connection = sub.connection
        if request.since is not None:
            missed = self.missed(state, request.since, request.epoch)
            if missed is not None:
                if not _fits(connection, missed):
                    return False
                connection.push(protocol.subscribed_message(state.name, True, state.epoch))
                if missed:
                    connection.push(Batch(missed))
                self._go_live(state, sub, state.position)
                return True
            if not state.empty():
                return False
            # No log, and a cursor other than 0-0: not recoverable, and the snapshot is empty.
            connection.push(protocol.subscribed_message(state.name, False, state.epoch))
        snapshot = self._snapshot_from_memory(state)
        if snapshot is None:
            return False
        connection.push(snapshot)
        self._go_live(state, sub, state.position)
        return True

    async def subscribe(self, connection: Connection, request: protocol.Subscribe) -> None:
        """Register, catch up (or send a snapshot), then go live. Raises StoreUnavailable."""
        try:
            await self._subscribe(connection, request)
        except asyncio.CancelledError as exc:  # unsubscribed or gone, maybe mid-read
            _forget_frames(exc)
            raise

    async def _subscribe(self, connection: Connection, request: protocol.Subscribe) -> None:
        state = await self._register(connection, request.channel)
        if state is None:
            return  # unsubscribed or closed meanwhile
        await self.caught_up(state)
        sub = connection.subscriptions[request.channel]
        put = connection.put
        if request.since is not None:
            missed = self.missed(state, request.since, request.epoch)
            if missed is not None:
                cursor = state.position
                await put(protocol.subscribed_message(state.name, True, state.epoch))
                for batch in self._slices(missed):
                    await put(batch)
                self._go_live(state, sub, cursor)
                return
            if state.empty():  # as in _from_memory: no log, so no Redis read
                await put(protocol.subscribed_message(state.name, False, state.epoch))
            else:
                recovery = await self.store.since(request.channel, request.since, request.epoch)
                state.epoch = state.epoch or recovery.epoch
                await put(
                    protocol.subscribed_message(request.channel, recovery.recovered, recovery.epoch)
                )
                if recovery.recovered:
                    messages = [event_message(event) for event in recovery.events]
                    for batch in self._slices(messages):
                        await put(batch)
                    last = recovery.events[-1].key if messages else request.since
                    self._go_live(state, sub, last)
                    return
        snapshot, cursor = await self._snapshot(state)
        await put(snapshot)
        self._go_live(state, sub, cursor)

    def unsubscribe(self, connection: Connection, channel: str) -> None:
        sub = connection.subscriptions.pop(channel, None)
        task = connection.tasks.pop(channel, None)
        if task is not None and not task.done():
            task.cancel()
        if sub is not None:
            self._remove(sub)
            if sub.grant is not None:
                self.granted.discard(sub)

    def detach(self, connection: Connection) -> None:
        """Take a closing connection out of every fan-out at once."""
        for sub in connection.subscriptions.values():
            self._remove(sub)

    def _add(self, connection: Connection, state: Channel) -> Subscription:
        sub = Subscription(connection, state.name)
        connection.subscriptions[state.name] = sub
        state.subscribers.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        state = self.channels.get(sub.channel)
        if state is None or sub not in state.subscribers:
            return
        state.subscribers.discard(sub)
        state.waiting.pop(sub, None)
        state.deferred.pop(sub, None)
        if sub.live:
            state.live.discard(sub.connection)
        if not state.subscribers and state.name not in self.leases:
            self._drop(state)

    def _drop(self, state: Channel) -> None:
        """Nobody here follows the channel any more: forget it, and stop what its
        subscribers started, except a Redis command already out (cancelling one drops its
        connection): that one finishes and its result is dropped with the channel."""
        del self.channels[state.name]
        if self.leases.get(state.name) is state:
            del self.leases[state.name]
        if state.snapshot_read is not None:
            state.snapshot_read.cancel()
        if state.opening is not None and not state.reading:
            state.opening.cancel()  # still waiting for a slot of the opening budget
        if not state.ready.done():
            state.ready.set_result(None)  # whoever still waits on it has gone too
        if state.caught_up is not None and not state.caught_up.done():
            state.caught_up.set_result(None)

    async def _register(self, connection: Connection, channel: str) -> Channel | None:
        """The subscription's channel once it is open; None if the subscription is gone
        meanwhile. Raises StoreUnavailable if Redis could not open it."""
        state = self.channels.get(channel) or self._open_channel(channel)
        sub = connection.subscriptions.get(channel)
        if sub is None or sub not in state.subscribers:  # not added by subscribe_now
            sub = self._add(connection, state)
        await asyncio.shield(state.ready)
        if state.failure is not None:
            kind, message = state.failure
            raise kind(message)
        return state if sub in state.subscribers else None

    def _open_channel(self, channel: str) -> Channel:
        state = Channel(channel)
        self.channels[channel] = state
        if self.reader_for(channel).exists(channel) is False:
            # Never published (else the reader would know it): nothing to read. Its first
            # event rings the bell, and the reader reads the log from 0-0.
            state.whole_log = True
            state.ready.set_result(None)
            return state
        # In a task of its own: if the subscriber that opened the channel goes away
        # (its task is cancelled), the others who joined meanwhile are still served.
        state.opening = asyncio.get_running_loop().create_task(self._open(state))
        return state

    async def _open(self, state: Channel) -> None:
        """Read where the channel's log is and its newest events, then let the reader
        follow it.

        The reader skips a channel until it is ready; if the bell names it while this
        read is out (``rung``), what the log got after the read is pulled here before
        the channel is ready (nobody is live on it yet, so nothing races the dispatch).
        A bell the reader took before this read started needs nothing: the read comes
        after its event."""
        try:
            async with self._opens:  # waiting here is cancelled if everyone leaves (_drop)
                if self.channels.get(state.name) is not state:
                    return
                state.reading = True
                meta, events = await self.store.recent(state.name, self.window_size)
                state.load(meta, events, self.window_size)
                if state.verify and not await self.store.holds(state.name, *state.newest()):
                    # Read from a former primary while the reader moved to the new one.
                    raise StoreUnavailable(f"channel {state.name!r} was read during a failover")
                while state.rung and self.channels.get(state.name) is state:
                    state.rung = False
                    await self._pull(state)
        except Exception as exc:  # StoreUnavailable above all; never leave the waiters hanging
            self._open_failed(state, exc)
            return
        finally:
            state.opening = None
            state.reading = False
        if self.channels.get(state.name) is not state:
            if not state.ready.done():
                state.ready.set_result(None)
            return  # nobody wants it any more: what was read goes with it
        state.ready.set_result(None)
        deferred, state.deferred = state.deferred, {}
        for sub, request in deferred.items():
            if sub in state.subscribers and not self._from_memory(state, sub, request):
                self.subscribe_task(sub.connection, request)

    async def _pull(self, state: Channel) -> None:
        """Add what the channel's log got after its position, page by page."""
        while self.channels.get(state.name) is state:
            events = await self.store.pull(state.name, state.position)
            await self.dispatch_reads([(state, events)])
            if len(events) < LOG_COUNT:
                return

    def _open_failed(self, state: Channel, exc: Exception) -> None:
        if self.channels.get(state.name) is state:
            del self.channels[state.name]
        if self.leases.get(state.name) is state:
            del self.leases[state.name]
        if isinstance(exc, StoreUnavailable):
            state.failure = (StoreUnavailable, str(exc))
            code, reason = protocol.Close.TRY_AGAIN_LATER, _STORE_DOWN
        else:
            log.error("opening channel %r failed", state.name, exc_info=exc)
            state.failure = (RuntimeError, f"opening channel {state.name!r} failed")
            code, reason = protocol.Close.INTERNAL_ERROR, "internal error"
        if not state.ready.done():
            state.ready.set_result(None)
        deferred, state.deferred = state.deferred, {}
        for sub in deferred:
            sub.connection.close(code, reason)

    def missed(
        self, state: Channel, since: StreamKey, epoch: str | None
    ) -> list[Message] | None:
        """What a resume from ``since`` must send, from memory; None when memory cannot
        tell (unknown epoch, a cursor too old or from the future): then Redis decides."""
        if state.empty():
            return [] if since == ZERO else None  # see Hub._from_memory
        if not state.epoch or (epoch is not None and epoch != state.epoch):
            return None
        if since > state.position:
            return None
        return state.after(since)

    def _snapshot_from_memory(self, state: Channel) -> Message | None:
        if state.snapshot is None:
            snapshot = self.briefs(state, self.settings.snapshot_size)
            if snapshot is not None:
                state.snapshot = Message(
                    protocol.snapshot_message(snapshot), "snapshot", snapshot.cursor
                )
        return state.snapshot

    async def _snapshot(self, state: Channel) -> tuple[Message, StreamKey]:
        """The channel's snapshot and its cursor: from memory, else one Redis read
        shared by every subscriber that asks meanwhile."""
        message = self._snapshot_from_memory(state)
        if message is not None:
            return message, state.position
        if state.snapshot_read is None or state.snapshot_read.done():
            state.snapshot_read = asyncio.get_running_loop().create_task(self._read_snapshot(state))
        return await asyncio.shield(state.snapshot_read)

    async def _read_snapshot(self, state: Channel) -> tuple[Message, StreamKey]:
        try:
            snapshot = await self.store.snapshot(state.name, self.settings.snapshot_size)
        except asyncio.CancelledError as exc:  # nobody follows the channel any more
            _forget_frames(exc)
            raise
        state.epoch = state.epoch or snapshot.epoch
        message = Message(protocol.snapshot_message(snapshot), "snapshot", snapshot.cursor)
        return message, key_of(snapshot.cursor)

    # HTTP reads (``ticker.views``): a channel followed for a while without subscribers

    async def follow(self, name: str) -> Channel:
        """The channel, open and ready, and followed by this process for at least
        ``http_follow_seconds`` more, so that HTTP reads of it are answered from memory
        while the reader keeps it current. Raises StoreUnavailable if Redis could not open it.

        A channel that was never published is not followed (an unregistered, empty
        channel answers): names made up by the thousand cost neither memory nor Redis. At
        most ``http_follow_max_channels`` are followed for HTTP; past that, the one read
        least recently is let go (it is read again, once, when it is wanted again)."""
        state = self.channels.get(name)
        if state is None:
            if self.reader_for(name).exists(name) is False:
                state = Channel(name)
                state.whole_log = True
                state.ready.set_result(None)
                return state
            state = self._open_channel(name)
        self.renew(state)
        await asyncio.shield(state.ready)
        if state.failure is not None:
            kind, message = state.failure
            raise kind(message)
        await self.caught_up(state)
        return state

    def renew(self, state: Channel) -> None:
        """Follow the channel for ``http_follow_seconds`` more, as the most recently read
        of those followed for HTTP; past ``http_follow_max_channels``, let go of the one
        read least recently."""
        state.leased_until = asyncio.get_running_loop().time() + self.settings.http_follow_seconds
        leases = self.leases
        leases.pop(state.name, None)
        leases[state.name] = state
        while len(leases) > self.settings.http_follow_max_channels:
            oldest = next(iter(leases.values()))
            del leases[oldest.name]
            if not oldest.subscribers and self.channels.get(oldest.name) is oldest:
                self._drop(oldest)

    # Reading one's writes: what this process wrote is in what it answers from memory

    def wrote(self, channel: str, key: StreamKey) -> None:
        """This process wrote the event ``key`` to ``channel`` (and answered the writer).
        Until the reader brings it, the channel's memory is older than what the writer
        knows: a list or a snapshot asked for next would miss it."""
        self.last_write = time.monotonic()  # the reader's rest
        state = self.channels.get(channel)
        if state is not None and key > state.written:
            state.written = key

    async def caught_up(self, state: Channel) -> None:
        """Wait until the channel's memory holds what this process wrote to it, at most
        ``CATCH_UP_SECONDS`` (the reader's delay is milliseconds; a reader that cannot
        reach Redis is not waited for longer: memory is then what there is)."""
        if state.position >= state.written:
            return
        if state.caught_up is None or state.caught_up.done():
            state.caught_up = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(state.caught_up), CATCH_UP_SECONDS)

    async def _expire_leases(self) -> None:
        """Let go of the channels that no HTTP read wanted for ``http_follow_seconds``
        (those with subscribers stay followed for them)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.5, min(5.0, self.settings.http_follow_seconds / 4)))
            now = loop.time()
            for state in [s for s in self.leases.values() if s.leased_until <= now]:
                del self.leases[state.name]
                if not state.subscribers and self.channels.get(state.name) is state:
                    self._drop(state)

    def briefs(self, state: Channel, limit: int) -> Snapshot | None:
        """The channel's newest ``limit`` live briefs at its position, folded from memory
        (a subscriber's snapshot, a GET list); None when memory does not hold enough of
        the log."""
        # Without an epoch only the empty log is known for sure (its snapshot is empty).
        if not state.epoch and not (state.whole_log and not state.window):
            return None
        seen: dict[str, bytes | None] = {}
        out: list[bytes] = []
        full = fold_snapshot((e for e, _ in reversed(state.window)), limit, seen, out)
        if not full and not state.whole_log:
            return None
        return Snapshot(state.name, format_key(state.position), state.epoch, out)

    def _go_live(self, state: Channel, sub: Subscription, cursor: StreamKey) -> None:
        """Send what the channel got after ``cursor`` and join the fan-out, in one step."""
        if sub not in state.subscribers or sub.live:
            return  # closed or unsubscribed meanwhile
        if cursor > state.position:
            state.waiting[sub] = cursor  # the reader is behind Redis: wait for it
            return
        missed = state.after(cursor)
        if missed is None:
            sub.connection.close(protocol.Close.SLOW_CONSUMER, _TOO_SLOW_CATCH_UP)
            return
        if missed:
            sub.connection.push(Batch(missed))
        if sub.connection.closing is None:
            sub.live = True
            state.live.add(sub.connection)

    def _slices(self, messages: Sequence[Message]) -> list[Batch]:
        """Batches of at most half an outbox."""
        return slices(
            messages,
            max(1, self.settings.outbox_max_messages // 2),
            max(1, self.settings.outbox_max_bytes // 2),
        )

    def readers(self) -> dict[str, int]:
        """Subscribers per channel in this process."""
        return {name: len(state.subscribers) for name, state in self.channels.items()}

    async def _report_readers(self) -> None:
        """Every few seconds, this process's readers per channel go to Redis with a TTL
        of three periods, so that a process that dies stops counting by itself. Channels
        that do not exist are left out: only existing ones are listed, and anonymous
        subscribers must not make this write grow."""
        interval = self.settings.readers_report_interval
        while True:
            readers = {
                name: count for name, count in self.readers().items()
                if count and self.reader_for(name).exists(name) is not False
            }
            # If Redis is gone, the reader says so; try again at the next period.
            with contextlib.suppress(StoreUnavailable):
                await self.store.report_readers(self.process_id, readers, 3 * interval)
            await asyncio.sleep(interval)

    # What the reader (or an opening channel's pull) brings

    async def dispatch_reads(self, reads: list[tuple[Channel, list[Event]]]) -> None:
        """Dispatch what was read for each channel (up to 1000 events each) in batches of
        at most half an outbox, letting the writers run in between: a burst larger than
        the outbox bound must not close subscribers that keep up, only those whose socket
        is backed up. Events go to the channel they were read for, only while this
        process still follows it (a channel opened again meanwhile is another one, with
        its own position)."""
        first = True
        for state, events in reads:
            if self.channels.get(state.name) is not state:
                continue
            fresh = [event for event in events if event.key > state.position]
            if not self._same_log(state, fresh):
                continue
            messages = [event_message(event) for event in fresh]
            start = 0
            for batch in self._slices(messages):
                if not first:
                    await asyncio.sleep(0)  # the writers of fast subscribers drain
                    if self.channels.get(state.name) is not state:
                        break
                first = False
                self.dispatch(state, fresh[start : start + batch.count], batch)
                start += batch.count

    def _same_log(self, state: Channel, events: Sequence[Event]) -> bool:
        """Learn the channel's epoch from its events; False (and every subscriber of the
        channel closed, to resume afresh) when they come from a new log: the one this
        process followed was lost, and so is what it holds in memory."""
        for event in events:
            if not event.epoch or event.epoch == state.epoch:
                continue
            if not state.epoch:
                state.epoch = event.epoch
                continue
            log.warning("the log of channel %r was lost and began again", state.name)
            for sub in list(state.subscribers):
                sub.connection.close(protocol.Close.SERVICE_RESTART, _LOG_RESET)
            if self.channels.get(state.name) is state:
                self._drop(state)
            return False
        return True

    def log_diverged(self, state: Channel) -> None:
        """The channel's log no longer holds the newest event this process dispatched:
        written on a former primary and lost in a failover (or trimmed before it was
        read). What memory holds is not that log any more: drop it, and close the
        channel's subscribers so that they resume, exactly or with a snapshot."""
        log.warning(
            "the log of channel %r no longer holds its event %s (a failover lost it); its "
            "subscribers resume", state.name, format_key(state.position),
        )
        for sub in list(state.subscribers):
            sub.connection.close(protocol.Close.SERVICE_RESTART, _LOG_DIVERGED)
        if self.channels.get(state.name) is state:
            self._drop(state)

    def dispatch(self, state: Channel, events: Sequence[Event], batch: Batch) -> None:
        """Add consecutive new events to the channel, then hand them as one batch to
        every live subscriber."""
        window = state.window
        for event, message in zip(events, batch.messages, strict=True):
            window.append((event, message))
        state.position = events[-1].key
        state.snapshot = None
        state.renders.clear()
        state.answers.clear()
        if state.caught_up is not None and state.position >= state.written:
            if not state.caught_up.done():
                state.caught_up.set_result(None)
            state.caught_up = None
        self._trim(state, events[-1].key)
        for conn in tuple(state.live):  # a connection that closes leaves the set
            conn.deliver(batch)
        if self.metrics is not None:
            self.metrics.delivered.inc(len(state.live) * batch.count)
            now = time.time()
            for event in events:
                self.metrics.deliver_seconds.observe(max(0.0, now - event.key[0] / 1000))
        if state.waiting:
            for sub, cursor in list(state.waiting.items()):
                if cursor <= state.position:
                    del state.waiting[sub]
                    self._go_live(state, sub, cursor)

    # Channel objects (ticker.channels): their changes come through the bell

    async def channel_info(self, state: Channel) -> ChannelInfo:
        """The channel's object (its defaults), read from Redis once and kept with the
        channel until it changes (``channel_changed``)."""
        info = state.info
        if info is not None:
            return info
        revision = state.revision
        info = object_info(state.name, await self.store.channel_object(state.name))
        if state.revision == revision and self.channels.get(state.name) is state:
            state.info = info
        return info

    def channel_changed(self, name: str) -> None:
        """The channel's object changed: drop it and what was rendered with it, and
        learn again whether it is private (``_learn_privacy``): a channel made private
        ends its subscribers that nothing granted."""
        self._side_task(self._learn_privacy(name))
        state = self.channels.get(name)
        if state is None:
            return
        state.info = None
        state.revision += 1
        state.renders.clear()
        state.answers.clear()

    async def _learn_privacy(self, name: str) -> None:
        try:
            info = object_info(name, await self.store.channel_object(name))
        except StoreUnavailable:
            info = None  # not known: treated as private until the next reload
        private = self.private
        if private is not None:
            if info is None or info.private:
                private.add(name)
            else:
                private.discard(name)
        state = self.channels.get(name)
        if state is not None and (info is None or info.private):
            self._enforce_private(state)

    def is_public(self, channel: str) -> bool:
        """Known public in this process (``private`` is loaded and does not name it): a
        subscribe to it needs no check. A set lookup: the public fan-out pays nothing."""
        private = self.private
        return private is not None and channel not in private

    def reload_private(self) -> None:
        """Read which channels are private, all at once (at start, and after a reader
        missed bells); until it is read, every subscribe is checked."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_private())

    async def _reload_private(self) -> None:
        while True:
            self._reload_again = False
            with contextlib.suppress(StoreUnavailable):
                objects = await self.store.channel_objects()
                self.private = {
                    name.decode() for name, raw in objects.items()
                    if object_info(name.decode(), raw).private
                }
                for name in self.private:
                    state = self.channels.get(name)
                    if state is not None:
                        self._enforce_private(state)
            if not self._reload_again:
                return

    def _enforce_private(self, state: Channel) -> None:
        """The channel is private (or not known public): end what nothing granted."""
        for sub in [s for s in state.subscribers if s.grant is None]:
            self.end_subscription(
                sub, "token_required",
                f"Channel {state.name!r} became private: subscribe again with a reader token.",
                protocol.Close.TOKEN_REQUIRED)

    # Reader tokens on live subscriptions

    def grant(self, sub: Subscription, grant: Grant) -> None:
        """``grant`` opened the subscription: warn its client before it expires, and end
        the subscription when it does (``_expire_grants``)."""
        sub.grant = grant
        self.granted.add(sub)
        if math.isinf(grant.expires):
            return  # an API key's with no end: it ends when the key is revoked
        now = time.time()
        lead = min(TOKEN_WARNING_SECONDS, max(0.0, (grant.expires - now) / 10))
        self._schedule(grant.expires - lead, sub, grant, False)
        self._schedule(grant.expires, sub, grant, True)

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _schedule(self, when: float, sub: Subscription, grant: Grant, end: bool) -> None:
        due = self._due
        if len(due) > 4 * len(self.granted) + 1024:
            # Entries of ended subscriptions wait for their time: drop them now and then,
            # so that subscribing again and again cannot grow the schedule.
            due[:] = [e for e in due if e[2] in self.granted and e[2].grant is e[3]]
            heapq.heapify(due)
        heapq.heappush(due, (when, next(self._due_seq), sub, grant, end))
        if due[0][2] is sub and self._due_changed is not None:
            self._due_changed.set()

    async def _expire_grants(self) -> None:
        """Warn (``token-expiring``) and end (``token_expired``) token subscriptions
        when due: one heap and one task for every subscription of the process."""
        assert self._due_changed is not None
        changed = self._due_changed
        due = self._due
        while True:
            changed.clear()
            wait = due[0][0] - time.time() if due else 3600.0
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(wait, 3600.0))
                continue
            _, _, sub, grant, end = heapq.heappop(due)
            if sub.grant is not grant or sub not in self.granted:
                continue  # ended, or subscribed again with another token
            if end:
                self.end_subscription(
                    sub, "token_expired",
                    f"The reader token for channel {sub.channel!r} expired: subscribe again "
                    "with a new token and your cursor to resume.", protocol.Close.TOKEN_EXPIRED)
            else:
                left = max(1, math.ceil(grant.expires - time.time()))
                sub.connection.push(protocol.token_expiring_message(sub.channel, left))

    def keys_revoked(self, digests: Sequence[str]) -> None:
        """API keys were revoked or rotated (``ANY_KEY``: maybe any): end the
        subscriptions they opened (a reader key's, server-side); they subscribe again
        with a key that is still valid."""
        kids = {KEY_KID + d for d in digests}
        every = ANY_KEY in digests
        for sub in [s for s in self.granted if s.grant is not None and (
                s.grant.kid in kids or (every and s.grant.kid.startswith(KEY_KID)))]:
            self.end_subscription(
                sub, "token_revoked",
                f"The API key that opened channel {sub.channel!r} was revoked or rotated: "
                "subscribe again with a valid one.", protocol.Close.TOKEN_REVOKED)

    def secret_revoked(self, kid: str) -> None:
        """A signing secret was revoked: forget it, and end what its tokens opened."""
        self.secrets.forget(kid)
        for sub in [s for s in self.granted if s.grant is not None and s.grant.kid == kid]:
            self.end_subscription(
                sub, "token_revoked",
                f"The reader token for channel {sub.channel!r} was revoked: get a new one.",
                protocol.Close.TOKEN_REVOKED)

    def secrets_unknown(self) -> None:
        """The doorbell may have lost a revoke (a reader missed entries): forget every
        secret, and end what a secret no longer in the store opened."""
        self.secrets.forget()
        kids = {s.grant.kid for s in self.granted if s.grant is not None
                and not s.grant.kid.startswith((KEY_KID, CMS_KID))} - {CONFIG_KID}
        if kids:
            self._side_task(self._recheck_secrets(kids))

    async def _recheck_secrets(self, kids: set[str]) -> None:
        key = self.store.keys.token_secrets
        for kid in kids:
            with contextlib.suppress(StoreUnavailable):
                if not await self.store.redis.hexists(key, kid):
                    self.secret_revoked(kid)

    def end_subscription(self, sub: Subscription, code: str, message: str,
                         close: int) -> None:
        """End one subscription with an ``error`` (a WebSocket's other channels go on);
        an event stream, which has one, ends with a ``close`` event."""
        conn = sub.connection
        self.granted.discard(sub)
        if conn.subscriptions.get(sub.channel) is not sub:
            return
        if conn.stream:
            conn.close(close, f"{code}: {message}", drain=True)
            return
        conn.push(protocol.error_message(code, message, sub.channel))
        self.unsubscribe(conn, sub.channel)

    def channels_changed(self, partition: int) -> None:
        """Any channel of the partition may have changed (its reader missed the bell)."""
        self.reload_private()
        for name in [n for n in self.channels if self.store.keys.partition(n) == partition]:
            self.channel_changed(name)

    def channel_deleted(self, name: str) -> None:
        """The channel was deleted: each subscriber gets an ``error`` (``channel_deleted``)
        and loses the subscription; a connection left with no other is closed with 4004
        (an event stream always: it has one channel). The channel is forgotten here, so
        that a new one of the same name starts afresh."""
        state = self.channels.get(name)
        if state is None:
            return
        log.info("channel %r was deleted; closing its subscriptions", name)
        message = protocol.error_message(
            protocol.ErrorCode.CHANNEL_DELETED,
            f"Channel {name!r} was deleted: it has no briefs any more. Subscribe again "
            "only if it is created again.", name,
        )
        for sub in list(state.subscribers):
            conn = sub.connection
            conn.push(message)
            self.unsubscribe(conn, name)
            if not conn.subscriptions:
                conn.close(protocol.Close.CHANNEL_DELETED, f"channel {name} was deleted",
                           drain=True)
        if self.channels.get(name) is state:
            self._drop(state)

    def _trim(self, state: Channel, newest: StreamKey) -> None:
        """Keep the window to its size and, like the log's own retention, drop events
        older than ``retention_max_age`` before the newest one."""
        window = state.window
        while len(window) > self.window_size:
            state.complete_after = window.popleft()[0].key
            # Below the log's own count limit the window no longer holds all of the log.
            state.whole_log = state.whole_log and (
                self.window_size >= self.settings.retention_max_events
            )
        cutoff = newest[0] - self.settings.retention_max_age * 1000
        while window and window[0][0].key[0] < cutoff:
            state.complete_after = window.popleft()[0].key


def _forget_frames(exc: asyncio.CancelledError) -> None:
    """Drop the frames a cancellation went through. A cancelled task that nobody awaits
    keeps the error it ended with, and so its traceback's frames; redis-py keeps its
    read's ``asyncio.timeout`` (which holds the task) in a local of such a frame: task,
    error and frames would make a cycle, left for a full collection under ``ticker
    serve``'s raised GC thresholds."""
    exc.__traceback__ = None


def _fits(connection: Connection, messages: Sequence[Message]) -> bool:
    """Within half of what the connection may have queued: sent at once, no pacing."""
    if len(messages) * 2 > connection.max_messages:
        return False
    return sum(m.size for m in messages) * 2 <= connection.max_bytes
