"""HTTP reads of a channel, answered from memory and rendered once per change.

``GET .../briefs`` (with ``?limit=`` or ``?since=``), ``/embed/{channel}`` and the feeds
read the hub's copy of the channel, not Redis: a read makes the process follow the
channel for ``http_follow_seconds`` (``Hub.follow``; each read renews it), and the stream
reader keeps it current exactly as for WebSocket subscribers. So a channel that only
pollers, pages and feed readers want is read from Redis once when it is first wanted, and
then once per change by the reader, however many requests come.

What is rendered from it (a list's JSON, a page's HTML, a feed's XML) is kept on the
channel with its ETag (``Channel.renders``) until the channel's next event, which empties
it (``Hub.dispatch``): a thousand polls of an unchanged channel render once. An answer
made from Redis (memory holds too little of the log for the ``limit`` asked) is kept only
when it is at the channel's position in memory.

Bounds: at most ``RENDERS_PER_CHANNEL`` answers per channel (query parameters are the
client's to choose: past that, the oldest answer goes), and at most
``http_follow_max_channels`` channels followed for HTTP (``Hub.follow``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable

from ticker.channel import Channel
from ticker.hub import Hub
from ticker.store import Snapshot, format_key

RENDERS_PER_CHANNEL = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """An answer made from a channel's briefs at one cursor."""

    etag: str
    body: bytes
    cursor: str  # the channel's position the answer is current at
    epoch: str


async def briefs(hub: Hub, state: Channel, limit: int) -> Snapshot:
    """The channel's newest ``limit`` live briefs: from memory, else from Redis."""
    return hub.briefs(state, limit) or await hub.store.snapshot(state.name, limit)


async def render(
    hub: Hub, state: Channel, key: tuple[Hashable, ...], limit: int,
    build: Callable[[Snapshot], Rendered],
) -> Rendered:
    """The answer ``build`` makes of the channel's newest ``limit`` briefs, made at most
    once per change of the channel. ``key`` names everything the answer depends on
    besides the channel's briefs (the endpoint, ``limit``, the query's options, the base
    of its links)."""
    found = state.renders.get(key)
    if found is not None:
        return found
    position = state.position
    snapshot = await briefs(hub, state, limit)
    rendered = build(snapshot)
    current = snapshot.cursor == format_key(position) and state.position == position
    if current and hub.channels.get(state.name) is state:
        renders = state.renders
        if len(renders) >= RENDERS_PER_CHANNEL:
            del renders[next(iter(renders))]
        renders[key] = rendered
    return rendered


def etag(kind: str, options: tuple[Hashable, ...], snapshot: Snapshot) -> str:
    """A strong ETag for an answer of ``kind`` with ``options`` at the snapshot's cursor:
    it changes with the channel's epoch and cursor, and with any option that changes
    the bytes."""
    digest = hashlib.blake2b(repr(options).encode(), digest_size=6).hexdigest()
    return f'"{kind}-{digest}-{snapshot.epoch}-{snapshot.cursor}"'
