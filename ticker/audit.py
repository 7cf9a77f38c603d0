"""The audit stream: who managed which API key or channel, and when.

Every key management action (``KeyStore.create``, ``rotate``, ``revoke``), channel
management action (``ticker.channels``: create, update, delete) and signing-secret action
(``ticker.tokens``: rotate, revoke) appends one entry to a stream in the ``{ticker}`` slot
(``Layout.audit``)::

    ticker:audit   stream, fields: at (RFC 3339), action ("key.create", "key.rotate",
                   "key.revoke", "channel.create", "channel.update", "channel.delete",
                   "token-secret.rotate", "token-secret.revoke"),
                   target (the key's or channel's name, the secret's kid), by (who),
                   details (JSON)

``by`` is the admin key's name for an HTTP request, ``cli:<OS user>`` for the ``ticker``
command. ``details`` says what changed but never a secret or a key's digest: the caller
passes only what it means to show, and ``entry_fields`` refuses a details object with a
field named like one (a guard against a later change that passes a record whole).

The stream is capped at ``AUDIT_MAXLEN`` entries (``MAXLEN ~``: Redis trims whole nodes, so
a few more may stay): years of management actions for a newsroom, and a bound on the
memory a runaway script can take. Whoever needs a longer record ships the stream to a log
store (``GET /v1/audit`` pages through it by entry ID).

An entry is written in the same atomic step as its action, never as a command of its own:
the action and its entry are one ``MULTI``/``EXEC`` (``AuditLog.add``, queued in the
action's transaction) or one Lua script (``script_args`` and ``LUA_APPEND``), and a
compare-and-set script appends the entry only when it made the change. Every key the
audited actions write (the API keys, the channel objects and set, the signing secrets)
shares the ``{ticker}`` hash tag with the stream (``ticker.keys``), so this holds on a
Redis Cluster too. So an action never happens without its entry, and no entry is written
for an action that did not happen (a refused compare-and-set, a name already taken).

What is outside that step: the doorbell (in each partition's slot on a cluster) is rung
after it, as before (only a key rotation or revoke on one server rings it in the same
script). And a channel delete spans two slots: it first deletes the channel's data (its
log, briefs, meta and histories, in the channel's own slot, one script) and its
idempotency records, then removes its object and its place in the channel set and
appends the entry in one ``{ticker}`` script (only if it removed something: of two
deletes that raced, one is recorded). A process that dies between the two
leaves a channel that still exists (listed, with its object) but holds no briefs, and no
``channel.delete`` entry yet: deleting it again completes the delete and records it
(``details.briefs`` then counts what that second attempt found: 0).
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


def entry_fields(action: str, target: str, by: str, details: dict[str, Any]) -> dict[str, Any]:
    """An entry's fields, in their order: the one place that builds an entry (and refuses
    details with a field named like a secret)."""
    leaked = _SECRET_FIELDS & set(details)
    if leaked:
        raise ValueError(f"audit details must not hold {sorted(leaked)}")
    return {
        "at": millis_rfc3339(int(time.time() * 1000)), "action": action,
        "target": target, "by": by, "details": orjson.dumps(details),
    }


# How many script arguments an entry takes (``AuditLog.script_args``): MAXLEN's bound,
# then five fields and their values.
AUDIT_ARGS = 11

# For a script that appends an entry when it does its action: ``audit_append(key, first)``
# appends the entry whose ``script_args`` are ARGV[first] to ARGV[first + 10] to the stream
# ``key`` (``Layout.audit``, one of the script's KEYS), as ``AuditLog.add`` would:
# ``XADD key MAXLEN ~ N * at .. action .. target .. by .. details ..``.
# (It also defines ``AUDIT_ARGS``, for a script whose entry comes last in ARGV.)
LUA_APPEND = f"""
local AUDIT_ARGS = {AUDIT_ARGS}
local function audit_append(key, first)
  return redis.call('XADD', key, 'MAXLEN', '~', ARGV[first], '*',
                    unpack(ARGV, first + 1, first + AUDIT_ARGS - 1))
end
"""


class AuditLog:
    """The audit stream of a store: its entries are written by the actions' own
    transactions and scripts (``add``, ``script_args``), and read here."""

    def __init__(self, client: aioredis.Redis, layout: Layout) -> None:
        self.redis = client
        self.key = layout.audit

    def add(
        self, pipe: Any, action: str, target: str, by: str, details: dict[str, Any]
    ) -> None:
        """Queue the entry in ``pipe``, the ``pipeline(transaction=True)`` that does the
        action: both are one ``MULTI``/``EXEC``. (``pipe``: a Redis or a Redis Cluster
        pipeline, of the same client.)"""
        pipe.xadd(self.key, entry_fields(action, target, by, details),
                  maxlen=AUDIT_MAXLEN, approximate=True)

    @staticmethod
    def script_args(action: str, target: str, by: str, details: dict[str, Any]) -> list[Any]:
        """The entry as ``AUDIT_ARGS`` arguments of a script that appends it itself
        (``LUA_APPEND``): ``MAXLEN``'s bound, then each field and its value."""
        fields = entry_fields(action, target, by, details)
        return [AUDIT_MAXLEN, *(part for pair in fields.items() for part in pair)]

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
