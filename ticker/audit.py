"""The audit stream: who managed which API key or channel, and when.

Every key management action (``KeyStore.create``, ``rotate``, ``revoke``) and channel
management action (``ticker.channels``: create, update, delete) appends one entry to a
stream in the ``{ticker}`` slot (``Layout.audit``)::

    ticker:audit   stream, fields: at (RFC 3339), action ("key.create", "key.rotate",
                   "key.revoke", "channel.create", "channel.update", "channel.delete"),
                   target (the key's or channel's name), by (who), details (JSON)

``by`` is the admin key's name for an HTTP request, ``cli:<OS user>`` for the ``ticker``
command. ``details`` says what changed but never a secret or a key's digest: the caller
passes only what it means to show, and ``append`` refuses a details object with a field
named like one (a guard against a later change that passes a record whole).

The stream is capped at ``AUDIT_MAXLEN`` entries (``MAXLEN ~``: Redis trims whole nodes, so
a few more may stay): years of management actions for a newsroom, and a bound on the
memory a runaway script can take. Whoever needs a longer record ships the stream to a log
store (``GET /v1/audit`` pages through it by entry ID).

An entry is appended right after its action succeeded, as a command of its own: a process
that dies between the two leaves the action unrecorded (never an entry for an action that
did not happen).
"""

from __future__ import annotations

import dataclasses
import getpass
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from ticker.keys import Layout
from ticker.models import millis_rfc3339, parse_stream_id
from ticker.store import unavailable_as_error

AUDIT_MAXLEN = 100_000
MAX_LIMIT = 1000  # entries per read
DEFAULT_LIMIT = 50
# Field names that hold secrets or digests: never in an entry's details.
_SECRET_FIELDS = frozenset({"key", "secret", "digest", "token"})


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    id: str  # the stream entry ID: the cursor for the next page (``before``)
    at: str
    action: str
    target: str
    by: str
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cli_actor() -> str:
    """``by`` for the ``ticker`` command: ``cli:`` and the OS user who ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary uid)
        user = "unknown"
    return f"cli:{user[:64]}"


class AuditLog:
    """The audit stream of a store."""

    def __init__(self, client: aioredis.Redis, layout: Layout) -> None:
        self.redis = client
        self.key = layout.audit

    async def append(self, action: str, target: str, by: str, details: dict[str, Any]) -> str:
        """Append one entry; returns its ID."""
        leaked = _SECRET_FIELDS & set(details)
        if leaked:
            raise ValueError(f"audit details must not hold {sorted(leaked)}")
        fields: dict[Any, Any] = {
            "at": millis_rfc3339(int(time.time() * 1000)), "action": action,
            "target": target, "by": by, "details": orjson.dumps(details),
        }
        async with unavailable_as_error():
            entry_id: Any = await self.redis.xadd(
                self.key, fields, maxlen=AUDIT_MAXLEN, approximate=True
            )
        return str(entry_id.decode())

    async def read(self, limit: int = DEFAULT_LIMIT, before: str | None = None) -> list[Entry]:
        """Up to ``limit`` entries, newest first, older than the entry ``before`` (an ID
        from an earlier page) if given."""
        if before is not None and parse_stream_id(before) is None:
            raise ValueError(f"not an audit entry ID: {before[:40]!r}")
        start = f"({before}" if before is not None else "+"
        async with unavailable_as_error():
            raw: Any = await self.redis.xrevrange(self.key, start, "-", count=limit)
        return [_entry(entry_id, fields) for entry_id, fields in raw]


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    def text(name: bytes) -> str:
        return fields.get(name, b"").decode()

    return Entry(
        entry_id.decode(), text(b"at"), text(b"action"), text(b"target"), text(b"by"),
        orjson.loads(fields.get(b"details", b"{}")),
    )
