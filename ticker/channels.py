"""Channels as managed objects: a title, a language and a time zone that the widget,
the feeds and ``/embed`` use when a request does not say, made and changed by an
operator (``ticker channels ...``) or an admin key (``/v1/channels/{channel}``).

Storage: one hash in the ``{ticker}`` slot (``Layout.channel_objects``), channel name ->
its object's JSON::

    {"title": "World news" | null, "lang": "fr" | null, "time_zone": "Europe/Paris" | null,
     "private": true | false (absent: false), "created_at": RFC 3339, "updated_at": RFC 3339}

``private``: its briefs reach only reader tokens and keys that may read it
(``ticker.access``, ``ticker.tokens``). An object is a JSON object so that fields can be
added later: a field this version does not know is kept as it is by every update
(``_merged``), never dropped.

A channel exists when it has an object, or when it is in the channel set
(``Layout.channels``: it was published to), which covers every channel of a store made
before channels were objects: those keep working, with no defaults, and ``update`` gives
them an object. The first publish to a channel with neither creates its object (with no
title) in the publish script itself when ``auto_create_channels`` is on, and is refused
(409) when it is off (``ticker/lua/publish.lua``, ``admit.lua``).

Every change rings the doorbell of the channel's partition (``ticker.store``: field
``m``, the channel's object changed; ``x``, the channel was deleted), so that every
serving process drops what it rendered with the old defaults (``Hub.channel_changed``)
or, on a delete, closes the channel's subscribers and forgets it (``Hub.channel_deleted``).
Writes are compare-and-set on the object's JSON (``_CAS``), so that two admins updating
at once never lose either change silently. Each change's audit entry (``ticker.audit``)
is written by the same step: ``_CAS`` appends it only when it wrote, and a delete's
``{ticker}`` script (``_FORGET``: the object and the channel set) only when it removed
something. A delete deletes the channel's data first, in the channel's own slot
(``_DELETE``, atomic with the count of briefs it retains), so a process that
dies between the two leaves a channel with no briefs, still listed and not yet audited
as deleted, which a second delete completes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import orjson
import redis.asyncio as aioredis

from ticker.audit import LUA_APPEND, AuditLog
from ticker.errors import Conflict, NotFound, ProblemError
from ticker.keys import Layout
from ticker.models import CHANNEL_RE, LANG_RE, millis_rfc3339
from ticker.store import BELL_DELETED, BELL_MAXLEN, BELL_META, unavailable_as_error

MAX_TITLE = 200
MAX_LANG = 35
MAX_TIME_ZONE = 64
FIELDS = ("title", "lang", "time_zone", "private")  # what an admin sets; the dates are the store's
_TRIES = 10
_SCAN_COUNT = 1000

# Deletes a channel's data (its keys share one slot) only if it retains no brief, unless
# forced, in one step: a publish between a count and a delete would be lost once accepted.
# KEYS: log, briefs, meta, history. ARGV[1]: '1' to delete whatever it retains.
# Returns {1 if deleted else 0, the briefs it retained}.
_DELETE = """
local retained = redis.call('HLEN', KEYS[2])
if retained > 0 and ARGV[1] ~= '1' then return {0, retained} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return {1, retained}
"""

# Removes a channel's object and its place in the channel set, with the audit entry of
# its delete, if either was there (else 0, and no entry). KEYS: the objects hash, the
# channel set, the audit stream (all in {ticker}); ARGV[1] the channel, then the entry.
_FORGET = LUA_APPEND + """
local gone = redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('SREM', KEYS[2], ARGV[1])
if gone == 0 then return 0 end
audit_append(KEYS[3], 2)
return 1
"""

# Compare-and-set of one hash field, with the audit entry of the change: KEYS[1] the
# hash, KEYS[2] the audit stream (both in {ticker}); ARGV[1] the field, ARGV[2] the value
# read ('' for none), ARGV[3] the new value ('' to delete), then the audit entry
# (``AuditLog.script_args``). 1 if written (and the entry appended), else 0 (neither).
_CAS = LUA_APPEND + """
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
audit_append(KEYS[2], 4)
return 1
"""


class ChannelError(ProblemError):
    """A channel value that is not valid (422), or a request that cannot be done."""

    status = 422
    title = "Invalid channel"
    type_suffix = "invalid-channel"


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A channel that exists, and its defaults (None: not set)."""

    name: str
    title: str | None = None
    lang: str | None = None
    time_zone: str | None = None
    created_at: str | None = None  # None: published to before channels were objects
    updated_at: str | None = None
    # Its briefs reach only holders of a reader token or of a key that may read it
    # (``ticker.access``); its name is not secret (it is listed).
    private: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "lang": self.lang,
            "time_zone": self.time_zone, "private": self.private,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }


def check_name(name: str) -> str:
    if not CHANNEL_RE.fullmatch(name):
        raise ChannelError(
            f"Channel {name[:80]!r} is not a valid channel name: use 1 to 64 lowercase "
            "letters, digits and hyphens, starting with a letter or digit.",
            status=400, field="channel",
        )
    return name


def check_title(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TITLE:
        raise ChannelError(
            f"A channel's title must be text of 1 to {MAX_TITLE} characters (or null for none).",
            field="title",
        )
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise ChannelError(
            "A channel's title must not hold control characters (line breaks, tabs...).",
            field="title",
        )
    if not value.strip():
        raise ChannelError("A channel's title must not be blank.", field="title")
    return value


def check_lang(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_LANG or not LANG_RE.fullmatch(value):
        raise ChannelError(
            "A channel's lang must be a language tag such as 'fr' or 'en-US' (or null).",
            field="lang",
        )
    return value


def check_time_zone(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= MAX_TIME_ZONE and _is_zone(value):
        return value
    shown = value[:60] if isinstance(value, str) else value
    raise ChannelError(
        f"A channel's time_zone must be an IANA time zone such as 'Europe/Paris' (or null), "
        f"not {shown!r}.",
        field="time_zone",
    )


def _is_zone(name: str) -> bool:
    """An IANA name of the system's (or tzdata's) database: ``ZoneInfo`` alone also
    takes a path-like key such as 'posixrules' that no browser knows."""
    if name not in _zones():
        return False
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError):
        return False
    return True


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())  # (read from disk: once per process)


def check_private(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ChannelError(
            "A channel's private must be true (briefs only for reader tokens and reader "
            "keys) or false.", field="private",
        )
    return value


def check_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The valid settable fields of ``values`` (a ChannelError for any other or a bad
    value): what ``create`` and ``update`` take."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ChannelError(
            f"Unknown field {unknown[0][:40]!r}: a channel has {', '.join(FIELDS)}.",
            field=unknown[0][:40],
        )
    checks = {"title": check_title, "lang": check_lang, "time_zone": check_time_zone,
              "private": check_private}
    return {name: checks[name](value) for name, value in values.items()}


def object_info(name: str, raw: bytes | None) -> ChannelInfo:
    """The channel ``name`` with the object stored for it (``raw``; None: none)."""
    if raw is None:
        return ChannelInfo(name)
    record = orjson.loads(raw)
    return ChannelInfo(
        name, record.get("title"), record.get("lang"), record.get("time_zone"),
        record.get("created_at"), record.get("updated_at"), record.get("private") is True,
    )


def _now() -> str:
    return millis_rfc3339(int(time.time() * 1000))


class ChannelStore:
    """The channel objects of a store, and their management."""

    def __init__(self, client: aioredis.Redis, layout: Layout) -> None:
        self.redis = client
        self.layout = layout
        self.audit = AuditLog(client, layout)
        self._cas = client.register_script(_CAS)
        self._delete = client.register_script(_DELETE)
        self._forget = client.register_script(_FORGET)

    async def get(self, name: str) -> ChannelInfo | None:
        """The channel, or None if it does not exist (no object, never published to)."""
        layout = self.layout
        async with unavailable_as_error(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(layout.channel_objects, name)
            pipe.sismember(layout.channels, name)
            raw, listed = await pipe.execute()
        if raw is None and not listed:
            return None
        return object_info(name, raw)

    async def list(self) -> list[ChannelInfo]:
        """Every channel, by name: those with an object and those published to."""
        layout = self.layout
        async with unavailable_as_error(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(layout.channel_objects)
            pipe.smembers(layout.channels)
            objects, listed = await pipe.execute()
        found = {n.decode(): object_info(n.decode(), raw) for n, raw in objects.items()}
        for n in listed:
            found.setdefault(n.decode(), ChannelInfo(n.decode()))
        return [found[name] for name in sorted(found)]

    async def create(self, name: str, values: dict[str, Any], by: str) -> ChannelInfo:
        """A new channel with ``values`` (title, lang, time_zone). Refused (409) when it
        has an object already; a channel published to before objects existed gets one."""
        check_name(name)
        fields = check_fields(values)
        now = _now()
        record = {**dict.fromkeys(FIELDS), **fields, "created_at": now, "updated_at": now}
        entry = self.audit.script_args("channel.create", name, by, fields)
        if not await self._swap(name, b"", orjson.dumps(record), entry):
            raise Conflict(
                f"Channel {name!r} exists already: change it with 'ticker channels update "
                f"{name}' (or PATCH /v1/channels/{name})."
            )
        await self._ring(BELL_META, name)
        return object_info(name, orjson.dumps(record))

    async def update(self, name: str, values: dict[str, Any], by: str,
                     *, create: bool = False) -> tuple[ChannelInfo, bool]:
        """Set the given fields (None clears one), keeping the others; returns the
        channel and whether it was created. A channel that does not exist is a 404
        problem, unless ``create`` (PUT): then it is created."""
        check_name(name)
        fields = check_fields(values)
        for _ in range(_TRIES):
            async with unavailable_as_error():
                raw: Any = await self.redis.hget(self.layout.channel_objects, name)
                listed = raw is not None or await self.redis.sismember(self.layout.channels, name)
            if not listed and not create:
                raise NotFound(
                    f"There is no channel {name!r}: create it with 'ticker channels create "
                    f"{name}' (or PUT /v1/channels/{name}).", field="channel",
                )
            now = _now()
            record = _merged(raw, fields, now)
            action = "channel.update" if listed else "channel.create"
            entry = self.audit.script_args(action, name, by, fields)
            if await self._swap(name, raw or b"", orjson.dumps(record), entry):
                await self._ring(BELL_META, name)
                return object_info(name, orjson.dumps(record)), not listed
        raise Conflict(f"Channel {name!r} kept changing while it was updated: try again.")

    async def delete(self, name: str, by: str, *, force: bool = False) -> int:
        """Delete the channel's object and, with it, its log, briefs, meta, histories and
        idempotency records; returns how many briefs it still retained. Refused (409)
        while it retains briefs, unless ``force``. Every serving process is told
        (``BELL_DELETED``): it closes the channel's subscribers and forgets it."""
        check_name(name)
        layout = self.layout
        async with unavailable_as_error():
            exists = await self.get(name)
            if exists is None:
                raise NotFound(
                    f"There is no channel {name!r} ('ticker channels list' shows them).",
                    field="channel",
                )
            deleted, retained_raw = await self._delete(
                keys=[layout.log(name), layout.briefs(name), layout.meta(name),
                      layout.history(name)],
                args=["1" if force else "0"],
            )
            retained = int(retained_raw)
            if not deleted:
                raise Conflict(
                    f"Channel {name!r} still retains {retained} briefs: deleting it deletes "
                    f"them for good. Delete it anyway with 'ticker channels delete {name} "
                    "--force' (or DELETE ...?force=true), or wait until retention removes them.",
                    briefs=retained,
                )
            # Then the {ticker} slot's keys, and the entry, in one script (a process that
            # dies before it leaves the channel listed, empty and not yet recorded as
            # deleted: a second delete completes it). A delete that raced this one and
            # removed them first is the one recorded.
            await self._forget_idempotency(name)
            entry = self.audit.script_args("channel.delete", name, by,
                                           {"force": force, "briefs": retained})
            await self._forget(keys=[layout.channel_objects, layout.channels, self.audit.key],
                               args=[name, *entry])
        await self._ring(BELL_DELETED, name)
        return retained

    async def _forget_idempotency(self, name: str) -> None:
        """Its idempotency records, so that a retried publish with an old key publishes
        to the new channel instead of answering with a brief deleted."""
        match = self.layout.idempotency_prefix(name) + "*"
        batch: list[Any] = []
        async for key in self.redis.scan_iter(match=match, count=_SCAN_COUNT):
            batch.append(key)
        for key in batch:  # one by one: on a cluster they share a slot, but keep it simple
            await self.redis.delete(key)

    async def _swap(self, name: str, expected: bytes, new: bytes, entry: Sequence[Any]) -> bool:
        """``_CAS`` of the channel's object, with the audit entry ``entry``
        (``AuditLog.script_args``) appended only if it wrote."""
        async with unavailable_as_error():
            done = await self._cas(
                keys=[self.layout.channel_objects, self.audit.key],
                args=[name, expected, new, *entry],
            )
        return bool(done)

    async def _ring(self, field: bytes, name: str) -> None:
        """Tell every serving process through the doorbell of the channel's partition."""
        layout = self.layout
        async with unavailable_as_error():
            await self.redis.xadd(
                layout.bell(layout.partition(name)), {field: name},
                maxlen=BELL_MAXLEN, approximate=True,
            )


def _merged(raw: bytes | None, fields: dict[str, Any], now: str) -> dict[str, Any]:
    """The stored object with ``fields`` set: fields this version does not know are
    kept as they are (see the module's docstring)."""
    record: dict[str, Any] = orjson.loads(raw) if raw is not None else {}
    for name in FIELDS:
        record.setdefault(name, None)
    record.update(fields)
    record.setdefault("created_at", now)
    record["updated_at"] = now
    return record

