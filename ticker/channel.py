"""A channel followed by one process: its subscribers, where its log is, and its newest
events in memory (the replay window), complete from a known point to the newest.

The hub opens, fills and drops channels (``ticker.hub``); the reader reads their logs
after their positions (``ticker.reader``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from ticker import protocol
from ticker.frames import Message
from ticker.store import ZERO, ChannelMeta, Event, StreamKey

if TYPE_CHECKING:
    from ticker.answers import Answer
    from ticker.channels import ChannelInfo
    from ticker.hub import Connection, Subscription
    from ticker.views import Rendered


def event_message(event: Event) -> Message:
    """An event as it goes to subscribers: encoded once, for every transport."""
    return Message(protocol.event_message(event), event.kind, event.id)


class Channel:
    """A channel followed by this process: its subscribers and its newest events."""

    __slots__ = (
        "answers", "caught_up", "complete_after", "deferred", "epoch", "failure", "info",
        "leased_until", "live", "name", "opening", "position", "reading", "ready", "renders",
        "revision", "rung", "snapshot", "snapshot_read", "subscribers", "verify", "waiting",
        "whole_log", "window", "written",
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
        # Done when the channel is open, its opening failed (``failure``) or nobody wants it.
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: tuple[type[Exception], str] | None = None  # raised anew by each waiter
        self.opening: asyncio.Task[None] | None = None
        self.reading = False  # the opening read is out (no longer cancelled)
        self.rung = False  # the bell named the channel while its opening read was out
        # The reader (re)anchored while the opening read was out: that read may come from
        # a former primary, so its position is checked before the channel is ready.
        self.verify = False
        # Subscribes that came while the channel opened (Hub.subscribe_now).
        self.deferred: dict[Subscription, protocol.Subscribe] = {}
        # HTTP reads (``ticker.views``): followed until then (loop time) without subscribers,
        # and their answers at ``position``, rendered once (emptied by every new event),
        # and whole, for requests answered before routing (``ticker.answers``).
        self.leased_until = 0.0
        self.renders: dict[tuple[object, ...], Rendered] = {}
        self.answers: dict[tuple[object, ...], Answer] = {}
        # The channel's object (title, lang, time zone: ``ticker.channels``), read when
        # first needed, and how many times it changed since this process followed the
        # channel (``Hub.channel_changed``): what was read or rendered before is stale.
        self.info: ChannelInfo | None = None
        self.revision = 0
        # The newest event this process wrote to the channel, and a future done once the
        # reader has brought it (``Hub.wrote``, ``Hub.caught_up``).
        self.written: StreamKey = ZERO
        self.caught_up: asyncio.Future[None] | None = None

    def load(self, meta: ChannelMeta, events: list[Event], window_size: int) -> None:
        """Start from the log's meta and its newest events (``Store.recent``)."""
        self.epoch = meta.epoch or ""
        self.position = max(meta.last, events[-1].key if events else ZERO)
        self.whole_log = len(events) < window_size
        self.complete_after = meta.floor if self.whole_log else events[0].key
        self.window.extend((event, event_message(event)) for event in events)

    def newest(self) -> tuple[StreamKey, Event | None]:
        """The position and, when memory holds it, the event read there."""
        if self.window and self.window[-1][0].key == self.position:
            return self.position, self.window[-1][0]
        return self.position, None

    def empty(self) -> bool:
        """The log has no event and never had one, as far as memory knows (a resume is
        then exact only from 0-0, like ``store.recoverable`` says of a missing log)."""
        return not self.epoch and self.position == ZERO and self.whole_log and not self.window

    def after(self, cursor: StreamKey) -> list[Message] | None:
        """The messages of every event after ``cursor``; None if memory lacks some, or
        cannot vouch for the cursor: it must be ``complete_after`` or an event of the
        window. Any other cursor is no event of this log (one lost with a former primary,
        ``store.recoverable``), and Redis decides."""
        if cursor < self.complete_after:
            return None
        out: list[Message] = []
        for event, message in reversed(self.window):
            if event.key <= cursor:
                if event.key != cursor:
                    return None
                break
            out.append(message)
        else:
            if cursor != self.complete_after:
                return None
        out.reverse()
        return out
