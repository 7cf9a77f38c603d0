"""Fan-out: one Redis reader per process, subscribers with bounded outboxes.

The reader task runs one ``XREAD BLOCK`` over the logs of every channel that has a
subscriber in this process. Each event is encoded once (``protocol.event_message``) and
the same string is appended to the outbox of every subscriber of its channel; nothing in
the fan-out loop awaits a subscriber. A connection whose outbox passes its bound (messages
or bytes) is closed with ``Close.SLOW_CONSUMER``; it resumes from its cursor.

Subscribing is exact, with no gap and no duplicate: the subscription is registered first
(live events are held back in ``pending``), then the catch-up (or snapshot) is read from
Redis and sent, then the held-back events newer than the catch-up are released. Every
subscription remembers the newest event it was given and drops anything not newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque

import redis.exceptions

from ticker import protocol
from ticker.config import Settings
from ticker.errors import StoreUnavailable
from ticker.metrics import Metrics
from ticker.store import ZERO, Event, Store, StreamKey, key_of, read_events

log = logging.getLogger("ticker.hub")

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def utf8_size(message: str) -> int:
    return len(message) if message.isascii() else len(message.encode())


class Connection:
    """One client connection: its subscriptions and its bounded outbox."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        # Limits
        self.max_messages = settings.outbox_max_messages
        self.max_bytes = settings.outbox_max_bytes
        self.outbox: deque[str] = deque()
        self.outbox_bytes = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closing: tuple[int, str] | None = None
        self.wakeup = asyncio.Event()  # set when the writer has something to do
        self.room = asyncio.Event()  # set when the outbox is at most half full
        self.room.set()

    def push(self, message: str, size: int | None = None) -> None:
        """Queue a message without waiting; a full outbox closes the connection.

        ``size`` is the message's length in UTF-8 bytes, when the caller knows it (the
        fan-out computes it once per event, not once per subscriber)."""
        if self.closing is not None:
            return
        if size is None:
            size = utf8_size(message)
        if len(self.outbox) >= self.max_messages or self.outbox_bytes + size > self.max_bytes:
            self.close(
                protocol.Close.SLOW_CONSUMER,
                "too slow: fell behind the live stream; reconnect and resume from your cursor",
            )
            return
        self.outbox.append(message)
        self.outbox_bytes += size
        if len(self.outbox) * 2 > self.max_messages or self.outbox_bytes * 2 > self.max_bytes:
            self.room.clear()
        self.wakeup.set()

    async def put(self, message: str) -> None:
        """Queue a message, first waiting until the outbox is at most half full.

        Used for catch-up, which can be long: it goes at the pace of the client instead
        of filling the outbox at once."""
        while not self.room.is_set() and self.closing is None:
            await self.room.wait()
        self.push(message)

    def take(self) -> list[str]:
        """Everything queued, for the writer."""
        items = list(self.outbox)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.room.set()
        return items

    def close(self, code: int, reason: str, *, drain: bool = False) -> None:
        """Ask the writer to close; without ``drain`` whatever is queued is dropped."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if code == protocol.Close.SLOW_CONSUMER and self.metrics is not None:
            self.metrics.slow_closes.inc()
        if not drain:
            self.outbox.clear()
            self.outbox_bytes = 0
        self.room.set()
        self.wakeup.set()


class Subscription:
    """One channel on one connection."""

    __slots__ = ("channel", "connection", "cursor", "live", "pending")

    def __init__(self, connection: Connection, channel: str) -> None:
        self.channel = channel
        self.connection = connection
        self.cursor: StreamKey = ZERO
        self.live = False
        self.pending: list[tuple[StreamKey, str]] = []

    def deliver(self, key: StreamKey, message: str, size: int) -> None:
        if not self.live:
            self.pending.append((key, message))
            if len(self.pending) > self.connection.max_messages:
                self.pending.clear()
                self.connection.close(
                    protocol.Close.SLOW_CONSUMER,
                    "too slow: fell behind during catch-up; reconnect and resume from your cursor",
                )
            return
        if key > self.cursor:
            self.cursor = key
            self.connection.push(message, size)

    def go_live(self, cursor: StreamKey) -> None:
        """Release the events held back during catch-up that are newer than ``cursor``."""
        self.cursor = cursor
        for key, message in self.pending:
            if key > self.cursor:
                self.cursor = key
                self.connection.push(message)
        self.pending = []
        self.live = True


class _Channel:
    __slots__ = ("opening", "position", "ready", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.position: StreamKey = ZERO
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opening: asyncio.Task[None] | None = None


class Hub:
    def __init__(
        self, store: Store, reader_client: object, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.reader_client = reader_client
        self.settings = settings
        self.channels: dict[str, _Channel] = {}
        self.connections: set[Connection] = set()
        self.reader_healthy = True
        self.shutting_down = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
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

    def open(self) -> Connection:
        """A new client connection, counted by the hub until ``close_connection``."""
        conn = Connection(self.settings, self.metrics)
        self.connections.add(conn)
        return conn

    def close_connection(self, conn: Connection) -> None:
        for channel in list(conn.subscriptions):
            self.unsubscribe(conn, channel)
        self.connections.discard(conn)

    # Subscriptions

    async def subscribe(self, connection: Connection, request: protocol.Subscribe) -> None:
        """Register, catch up (or send a snapshot), then go live. Raises StoreUnavailable."""
        sub = Subscription(connection, request.channel)
        connection.subscriptions[request.channel] = sub
        await self._register(sub)
        put = connection.put
        if request.since is not None:
            recovery = await self.store.since(request.channel, request.since, request.epoch)
            await put(
                protocol.subscribed_message(request.channel, recovery.recovered, recovery.epoch)
            )
            if recovery.recovered:
                cursor = request.since
                for event in recovery.events:
                    await put(protocol.event_message(event))
                    cursor = event.key
                sub.go_live(cursor)
                return
        snapshot = await self.store.snapshot(request.channel, self.settings.snapshot_size)
        await put(protocol.snapshot_message(snapshot))
        sub.go_live(key_of(snapshot.cursor))

    def unsubscribe(self, connection: Connection, channel: str) -> None:
        sub = connection.subscriptions.pop(channel, None)
        task = connection.tasks.pop(channel, None)
        if task is not None and not task.done():
            task.cancel()
        if sub is None:
            return
        state = self.channels.get(channel)
        if state is not None:
            state.subscribers.discard(sub)
            if not state.subscribers:
                # The reader stops reading this channel at its next turn.
                del self.channels[channel]

    async def _register(self, sub: Subscription) -> None:
        state = self.channels.get(sub.channel)
        if state is None:
            state = _Channel()
            self.channels[sub.channel] = state
            # In a task of its own: if the subscriber that opened the channel goes away
            # (its task is cancelled), the others who joined meanwhile are still served.
            state.opening = asyncio.get_running_loop().create_task(self._open(sub.channel, state))
        state.subscribers.add(sub)
        await asyncio.shield(state.ready)

    async def _open(self, channel: str, state: _Channel) -> None:
        """Find where the channel's log is, then let the reader follow it."""
        try:
            state.position = await self.store.last(channel)
        except Exception as exc:  # StoreUnavailable above all; never leave the waiters hanging
            if self.channels.get(channel) is state:
                del self.channels[channel]
            state.ready.set_exception(exc)
            state.ready.exception()  # retrieved: the waiters re-raise it themselves
            return
        finally:
            state.opening = None
        state.ready.set_result(None)
        self._wake.set()

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
        """Dispatch one read (up to 1000 events per channel) in slices of at most half an
        outbox, letting the writers run in between: a burst larger than the outbox bound
        must not close subscribers that keep up, only those whose socket is backed up."""
        max_messages = max(1, self.settings.outbox_max_messages // 2)
        max_bytes = max(1, self.settings.outbox_max_bytes // 2)
        messages = size = 0
        for event in events:
            if messages >= max_messages or size >= max_bytes:
                await asyncio.sleep(0)  # the writers of fast subscribers drain their outbox
                messages = size = 0
            sent = self.dispatch(event)
            messages += 1 if sent else 0
            size += sent

    def dispatch(self, event: Event) -> int:
        """Hand one event to every subscriber of its channel; the size of the message
        (0 when no one here follows the channel or the event was already dispatched)."""
        state = self.channels.get(event.channel)
        if state is None or event.key <= state.position:
            return 0
        state.position = event.key
        message = protocol.event_message(event)
        size = utf8_size(message)
        key = event.key
        closed: list[Subscription] = []
        for sub in state.subscribers:
            sub.deliver(key, message, size)
            if sub.connection.closing is not None:
                closed.append(sub)
        if self.metrics is not None:
            self.metrics.delivered.inc(len(state.subscribers))
            self.metrics.deliver_seconds.observe(max(0.0, time.time() - key[0] / 1000))
        # A closing connection (a slow consumer above all) takes nothing more: drop it from
        # the fan-out now, not when its client reads again or its socket finally goes away.
        for sub in closed:
            state.subscribers.discard(sub)
        if closed and not state.subscribers and self.channels.get(event.channel) is state:
            del self.channels[event.channel]
        return len(message)
