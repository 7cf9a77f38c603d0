"""Typed briefs and events, parsed from the server's JSON (protocol ``ticker.v1``).

Parsing is tolerant: fields the server adds later are kept in ``raw`` and otherwise
ignored, so a newer server never breaks an older client.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_CURSOR_RE = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII)


def cursor_key(cursor: str) -> tuple[int, int]:
    """A cursor (a Redis stream ID such as ``"1732850000000-3"``) as a sortable pair."""
    m = _CURSOR_RE.fullmatch(cursor)
    if m is None:
        raise ValueError(f"{cursor!r} is not a cursor: cursors look like '1732850000000-0'.")
    return int(m.group(1)), int(m.group(2))


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Brief:
    """One brief, as the server stores it (corrections applied)."""

    id: str
    channel: str
    text: str
    url: str | None
    time: datetime
    urgency: int
    tags: tuple[str, ...]
    lang: str | None
    version: int
    updated_at: datetime | None
    status: str  # "usable", or "canceled" once retracted
    pinned: bool
    author: str | None  # the public byline (None for none, or from an older server)
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Brief:
        time = _time(data.get("time"))
        if time is None:
            raise ValueError(f"brief {data.get('id')!r} has no valid 'time'")
        return cls(
            id=str(data["id"]),
            channel=str(data["channel"]),
            text=str(data["text"]),
            url=data.get("url"),
            time=time,
            urgency=int(data.get("urgency", 5)),
            tags=tuple(data.get("tags") or ()),
            lang=data.get("lang"),
            version=int(data.get("version", 1)),
            updated_at=_time(data.get("updated_at")),
            status=str(data.get("status", "usable")),
            pinned=bool(data.get("pinned", False)),
            author=data.get("author"),
            raw=dict(data),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The current briefs of a channel, newest first: replace what you show with these.

    Sent on a subscription without ``since``, and when the server cannot resume exactly
    (``resumed_from`` is then the cursor it could not resume from)."""

    channel: str
    briefs: tuple[Brief, ...]
    cursor: str
    epoch: str
    resumed_from: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BriefEvent:
    """A new brief was published."""

    channel: str
    brief: Brief
    cursor: str


@dataclasses.dataclass(frozen=True, slots=True)
class Correction:
    """A brief was corrected: ``brief`` is its new state (``version`` incremented)."""

    channel: str
    brief: Brief
    cursor: str


@dataclasses.dataclass(frozen=True, slots=True)
class Retraction:
    """A brief was retracted: remove the brief ``id``."""

    channel: str
    id: str
    cursor: str


Event = Snapshot | BriefEvent | Correction | Retraction


def event_from_message(message: Mapping[str, Any]) -> Event | None:
    """The event of a server message; None for messages that are not events."""
    kind = message.get("type")
    channel = str(message.get("channel", ""))
    if kind == "brief":
        return BriefEvent(channel, Brief.from_json(message["brief"]), str(message["cursor"]))
    if kind == "correction":
        return Correction(channel, Brief.from_json(message["brief"]), str(message["cursor"]))
    if kind == "retraction":
        return Retraction(channel, str(message["id"]), str(message["cursor"]))
    if kind == "snapshot":
        briefs = tuple(Brief.from_json(b) for b in message.get("briefs", ()))
        return Snapshot(channel, briefs, str(message["cursor"]), str(message.get("epoch", "")))
    return None
