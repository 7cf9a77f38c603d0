"""Fan-out: one Redis reader per process, subscribers with bounded outboxes.

The reader task runs one ``XREAD BLOCK`` over the logs of every channel that has a
subscriber in this process. What one read brings for a channel is encoded once
(``ticker.frames``: one ``Message`` per event, its WebSocket frame built once) and handed
as one ``Batch`` to every live subscriber: a single append per subscriber, whatever the
number of events. Nothing in the fan-out awaits a subscriber.

How an outbox leaves depends on the connection. A WebSocket under ticker's own uvicorn
protocol (``ticker.wsproto``) has a *sink*: the fan-out writes a batch straight to its
socket when nothing else is pending, and anything queued is written by the hub once per
loop iteration, as one ``transport.write`` of pre-built frames. Other connections (SSE, a
WebSocket on another ASGI server) have a writer task that drains the outbox. Either way
a connection that holds more than its bound (messages or bytes, the socket's unsent
buffer included) is closed with ``Close.SLOW_CONSUMER``; it resumes from its cursor.

Each channel keeps its newest events in memory (``replay_window``), complete from a known
point to the newest: a snapshot is folded from them and a resume is served from them,
without a Redis read per client, so that a storm of (re)connections costs one read.

Subscribing is exact, with no gap and no duplicate: the subscription is registered first,
then the catch-up (or snapshot) up to some cursor is sent, then ``_go_live`` sends what
the channel got after that cursor from memory and adds the subscriber to the fan-out,
all in one step of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import redis.exceptions

from ticker import protocol
from ticker.config import Settings
from ticker.errors import StoreUnavailable
from ticker.frames import Batch, Item, Message, slices
from ticker.metrics import Metrics
from ticker.store import (
    ZERO,
    Event,
    Snapshot,
    Store,
    StreamKey,
    fold_snapshot,
    format_key,
    key_of,
    read_events,
)

log = logging.getLogger("ticker.hub")

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_TOO_SLOW = "too slow: fell behind the live stream; reconnect and resume from your cursor"
_LOG_RESET = "the channel's log began again: reconnect and resume from your cursor"
_STORE_DOWN = "store unavailable: reconnect later and resume"
_TOO_SLOW_CATCH_UP = "too slow: fell behind during catch-up; reconnect and resume from your cursor"


class Sink(Protocol):
    """Where a connection's frames go without a writer task (``ticker.wsproto``)."""

    paused: bool  # while the socket's unsent buffer is above its high-water mark
    transport: asyncio.WriteTransport  # frames are written to it directly

    def limit_buffer(self, high: int) -> None: ...

    async def drained(self) -> None: ...

    def close_with(self, code: int, reason: str) -> None: ...


def event_message(event: Event) -> Message:
    return Message(protocol.event_message(event), event.kind, event.id)


class Connection:
    """One client connection: its subscriptions and its bounded outbox."""

    __slots__ = (
        "_room", "_transport", "_wakeup", "closing", "hub", "marked",
        "max_bytes", "max_messages", "outbox", "outbox_bytes", "outbox_count", "sink",
        "subscriptions", "tasks",
    )

    def __init__(self, hub: Hub, sink: Sink | None = None) -> None:
        self.hub = hub
        self.sink = sink
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


class Subscription:
    """One channel on one connection."""

    __slots__ = ("channel", "connection", "live")

    def __init__(self, connection: Connection, channel: str) -> None:
        self.channel = channel
        self.connection = connection
        self.live = False


class _Channel:
    """A channel followed by this process: its subscribers and its newest events."""

    __slots__ = (
        "complete_after", "deferred", "epoch", "live", "name", "opening", "position", "ready",
        "snapshot", "snapshot_read", "subscribers", "waiting", "whole_log", "window",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscription] = set()
        self.live: set[Connection] = set()  # the fan-out: connections that are caught up
        self.waiting: dict[Subscription, StreamKey] = {}  # caught up past the reader
        self.position: StreamKey = ZERO  # the newest event handed to the fan-out
        self.epoch = ""
        # Every event after ``complete_after`` up to ``position`` is in ``window``.
        self.window: deque[tuple[Event, Message]] = deque()
        self.complete_after: StreamKey = ZERO
        self.whole_log = False  # the window holds every event of the log
        self.snapshot: Message | None = None  # at ``position``, built on first use
        self.snapshot_read: asyncio.Task[tuple[Message, StreamKey]] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opening: asyncio.Task[None] | None = None
        # Subscribes that came while the channel opened (Hub.subscribe_now).
        self.deferred: list[tuple[Subscription, protocol.Subscribe]] = []

    def after(self, cursor: StreamKey) -> list[Message] | None:
        """The messages of every event after ``cursor``; None if memory lacks some."""
        if cursor < self.complete_after:
            return None
        out: list[Message] = []
        for event, message in reversed(self.window):
            if event.key <= cursor:
                break
            out.append(message)
        out.reverse()
        return out


class Hub:
    def __init__(
        self, store: Store, reader_client: object, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.reader_client = reader_client
        self.settings = settings
        self.window_size = min(settings.replay_window, settings.retention_max_events)
        self.channels: dict[str, _Channel] = {}
        self.connections: set[Connection] = set()
        self.reader_healthy = True
        self.shutting_down = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._dirty: list[Connection] = []
        self.process_id = uuid.uuid4().hex

    # Lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="ticker-reader")
        self._reporter = loop.create_task(self._report_readers(), name="ticker-readers")

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
            self._reporter = None
            with contextlib.suppress(StoreUnavailable):
                await self.store.report_readers(self.process_id, {}, 0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
            state.deferred.append((sub, request))
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
        finally:
            # Only this task's entry: after an unsubscribe, a new subscribe may own the name.
            if connection.tasks.get(request.channel) is asyncio.current_task():
                del connection.tasks[request.channel]

    def _from_memory(self, state: _Channel, sub: Subscription, request: protocol.Subscribe) -> bool:
        connection = sub.connection
        if request.since is not None:
            missed = self._missed(state, request.since, request.epoch)
            if missed is None or not _fits(connection, missed):
                return False
            connection.push(protocol.subscribed_message(state.name, True, state.epoch))
            if missed:
                connection.push(Batch(missed))
        else:
            snapshot = self._snapshot_from_memory(state)
            if snapshot is None:
                return False
            connection.push(snapshot)
        self._go_live(state, sub, state.position)
        return True

    async def subscribe(self, connection: Connection, request: protocol.Subscribe) -> None:
        """Register, catch up (or send a snapshot), then go live. Raises StoreUnavailable."""
        state = await self._register(connection, request.channel)
        sub = connection.subscriptions[request.channel]
        put = connection.put
        if request.since is not None:
            missed = self._missed(state, request.since, request.epoch)
            if missed is not None:
                cursor = state.position
                await put(protocol.subscribed_message(state.name, True, state.epoch))
                for batch in self._slices(missed):
                    await put(batch)
                self._go_live(state, sub, cursor)
                return
            recovery = await self.store.since(request.channel, request.since, request.epoch)
            state.epoch = state.epoch or recovery.epoch
            await put(
                protocol.subscribed_message(request.channel, recovery.recovered, recovery.epoch)
            )
            if recovery.recovered:
                messages = [event_message(event) for event in recovery.events]
                for batch in self._slices(messages):
                    await put(batch)
                self._go_live(state, sub, recovery.events[-1].key if messages else request.since)
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

    def detach(self, connection: Connection) -> None:
        """Take a closing connection out of every fan-out at once."""
        for sub in connection.subscriptions.values():
            self._remove(sub)

    def _add(self, connection: Connection, state: _Channel) -> Subscription:
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
        if sub.live:
            state.live.discard(sub.connection)
        if not state.subscribers:
            # The reader stops reading this channel at its next turn.
            del self.channels[sub.channel]
            if state.snapshot_read is not None:
                state.snapshot_read.cancel()

    async def _register(self, connection: Connection, channel: str) -> _Channel:
        state = self.channels.get(channel) or self._open_channel(channel)
        sub = connection.subscriptions.get(channel)
        if sub is None or sub not in state.subscribers:  # not added by subscribe_now
            self._add(connection, state)
        await asyncio.shield(state.ready)
        return state

    def _open_channel(self, channel: str) -> _Channel:
        state = _Channel(channel)
        self.channels[channel] = state
        # In a task of its own: if the subscriber that opened the channel goes away
        # (its task is cancelled), the others who joined meanwhile are still served.
        state.opening = asyncio.get_running_loop().create_task(self._open(state))
        return state

    async def _open(self, state: _Channel) -> None:
        """Read where the channel's log is and its newest events, then let the reader
        follow it."""
        try:
            meta, events = await self.store.recent(state.name, self.window_size)
        except Exception as exc:  # StoreUnavailable above all; never leave the waiters hanging
            if self.channels.get(state.name) is state:
                del self.channels[state.name]
            state.ready.set_exception(exc)
            state.ready.exception()  # retrieved: the waiters re-raise it themselves
            if not isinstance(exc, StoreUnavailable):
                log.error("opening channel %r failed", state.name, exc_info=exc)
            for sub, _ in state.deferred:
                if isinstance(exc, StoreUnavailable):
                    sub.connection.close(protocol.Close.TRY_AGAIN_LATER, _STORE_DOWN)
                else:
                    sub.connection.close(protocol.Close.INTERNAL_ERROR, "internal error")
            state.deferred = []
            return
        finally:
            state.opening = None
        state.epoch = meta.epoch or ""
        state.position = max(meta.last, events[-1].key if events else ZERO)
        state.whole_log = len(events) < self.window_size
        state.complete_after = meta.floor if state.whole_log else events[0].key
        state.window.extend((event, event_message(event)) for event in events)
        state.ready.set_result(None)
        deferred, state.deferred = state.deferred, []
        for sub, request in deferred:
            if sub in state.subscribers and not self._from_memory(state, sub, request):
                self.subscribe_task(sub.connection, request)
        self._wake.set()

    def _missed(
        self, state: _Channel, since: StreamKey, epoch: str | None
    ) -> list[Message] | None:
        """What a resume from ``since`` must send, from memory; None when memory cannot
        tell (unknown epoch, a cursor too old or from the future): then Redis decides."""
        if not state.epoch or (epoch is not None and epoch != state.epoch):
            return None
        if since > state.position:
            return None
        return state.after(since)

    def _snapshot_from_memory(self, state: _Channel) -> Message | None:
        # Without an epoch only the empty log is known for sure (its snapshot is empty).
        if state.snapshot is None and (state.epoch or (state.whole_log and not state.window)):
            limit = self.settings.snapshot_size
            seen: dict[str, bytes | None] = {}
            briefs: list[bytes] = []
            full = fold_snapshot((e for e, _ in reversed(state.window)), limit, seen, briefs)
            if full or state.whole_log:
                cursor = format_key(state.position)
                snapshot = Snapshot(state.name, cursor, state.epoch, briefs)
                state.snapshot = Message(protocol.snapshot_message(snapshot), "snapshot", cursor)
        return state.snapshot

    async def _snapshot(self, state: _Channel) -> tuple[Message, StreamKey]:
        """The channel's snapshot and its cursor: from memory, else one Redis read
        shared by every subscriber that asks meanwhile."""
        message = self._snapshot_from_memory(state)
        if message is not None:
            return message, state.position
        if state.snapshot_read is None or state.snapshot_read.done():
            state.snapshot_read = asyncio.get_running_loop().create_task(self._read_snapshot(state))
        return await asyncio.shield(state.snapshot_read)

    async def _read_snapshot(self, state: _Channel) -> tuple[Message, StreamKey]:
        snapshot = await self.store.snapshot(state.name, self.settings.snapshot_size)
        state.epoch = state.epoch or snapshot.epoch
        message = Message(protocol.snapshot_message(snapshot), "snapshot", snapshot.cursor)
        return message, key_of(snapshot.cursor)

    def _go_live(self, state: _Channel, sub: Subscription, cursor: StreamKey) -> None:
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
        of three periods, so that a process that dies stops counting by itself."""
        interval = self.settings.readers_report_interval
        while True:
            # If Redis is gone, the reader says so; try again at the next period.
            with contextlib.suppress(StoreUnavailable):
                await self.store.report_readers(self.process_id, self.readers(), 3 * interval)
            await asyncio.sleep(interval)

    # The reader

    async def _run(self) -> None:
        attempt = 0
        while True:
            positions = {
                name: state.position
                for name, state in self.channels.items()
                if state.ready.done() and state.ready.exception() is None
            }
            if not positions:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            try:
                if not self.reader_healthy:
                    # Ready as soon as Redis answers, not after a quiet XREAD BLOCK.
                    await self.reader_client.ping()  # type: ignore[attr-defined]
                    self.reader_healthy = True
                    log.info("Redis reader reconnected; resuming from the last positions")
                events = await self._read(positions)
            except Exception as exc:  # any failure: retry; never let the reader die
                attempt += 1
                if attempt == 1:  # once per outage, not at every retry
                    if self.metrics is not None:
                        self.metrics.reader_reconnects.inc()
                    if isinstance(exc, _REDIS_DOWN):
                        log.warning("Redis reader lost its connection (%s); reconnecting", exc)
                    else:
                        log.exception("Redis reader failed; retrying")
                self.reader_healthy = False
                cap = min(self.settings.reconnect_max_delay, 0.1 * 2**min(attempt, 16))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
                continue
            attempt = 0
            if events:
                await self._dispatch_all(events)

    async def _read(self, positions: dict[str, StreamKey]) -> list[Event] | None:
        """One XREAD BLOCK; None when a new channel woke the reader first. Nothing is lost
        by cancelling a read: positions only move when events are dispatched."""
        read = asyncio.ensure_future(
            read_events(self.reader_client, positions, self.settings.reader_block_ms)  # type: ignore[arg-type]
        )
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({read, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await read
        return None if read.cancelled() else read.result()

    async def _dispatch_all(self, events: list[Event]) -> None:
        """Dispatch one read (up to 1000 events per channel) in batches of at most half
        an outbox, letting the writers run in between: a burst larger than the outbox
        bound must not close subscribers that keep up, only those whose socket is backed
        up."""
        by_channel: dict[str, list[Event]] = {}
        for event in events:
            by_channel.setdefault(event.channel, []).append(event)
        first = True
        for channel, evs in by_channel.items():
            state = self.channels.get(channel)
            if state is None:
                continue
            fresh = [event for event in evs if event.key > state.position]
            if not self._same_log(state, fresh):
                continue
            messages = [event_message(event) for event in fresh]
            start = 0
            for batch in self._slices(messages):
                if not first:
                    await asyncio.sleep(0)  # the writers of fast subscribers drain
                    if self.channels.get(channel) is not state:
                        break
                first = False
                self.dispatch(state, fresh[start : start + batch.count], batch)
                start += batch.count

    def _same_log(self, state: _Channel, events: Sequence[Event]) -> bool:
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
                del self.channels[state.name]
            return False
        return True

    def dispatch(self, state: _Channel, events: Sequence[Event], batch: Batch) -> None:
        """Add consecutive new events to the channel, then hand them as one batch to
        every live subscriber."""
        window = state.window
        for event, message in zip(events, batch.messages, strict=True):
            window.append((event, message))
        state.position = events[-1].key
        state.snapshot = None
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

    def _trim(self, state: _Channel, newest: StreamKey) -> None:
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


def _fits(connection: Connection, messages: Sequence[Message]) -> bool:
    """Within half of what the connection may have queued: sent at once, no pacing."""
    if len(messages) * 2 > connection.max_messages:
        return False
    return sum(m.size for m in messages) * 2 <= connection.max_bytes
