"""``ticker migrate``: copy a store into another Redis and key layout.

Moving from one server (or Sentinel) to a Redis Cluster changes every key's name
(``ticker.keys``): this copies, channel by channel, the log with its entry IDs (and the
stream's last ID, ``XSETID``), the retained briefs and their histories, the meta (epoch,
last, floor), the idempotency records with what is left of their TTL, then the channel
set, the channel objects (``ticker.channels``), the API keys and the audit stream
(``ticker.audit``, with its entry IDs, so that a page's ``before`` stays valid). Cursors
stay valid: a reader that resumes on the new store from a cursor of the old one gets
exactly what followed it (same IDs, same epoch).

Publishing must be stopped while it runs (stop ticker, or every publisher): a brief
published during the copy may be missed. The destination must hold no channel yet; the
source is only read. Readers' counts and rate-limit windows are not copied: they expire
within seconds anyway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ticker.errors import TickerError
from ticker.keys import Layout

PAGE = 1000  # log entries per read and per write


class MigrateError(TickerError):
    """The copy cannot be made as asked (the CLI prints the message)."""


@dataclasses.dataclass(slots=True)
class Copied:
    channels: int = 0
    events: int = 0
    briefs: int = 0
    histories: int = 0
    idempotency_records: int = 0
    api_keys: int = 0
    channel_objects: int = 0
    audit_entries: int = 0


async def migrate(
    source: aioredis.Redis, source_layout: Layout, target: aioredis.Redis, target_layout: Layout,
    progress: Callable[[str], None] = lambda line: None,
) -> Copied:
    """Copy every channel and API key from ``source`` to ``target``; raise MigrateError
    if the target already holds channels, or a copied log does not match its source."""
    copied = Copied()
    listed: Any = await target.smembers(target_layout.channels)
    created: Any = await target.hkeys(target_layout.channel_objects)
    existing = len(set(listed) | set(created))
    if existing:
        raise MigrateError(
            f"The destination already holds {existing} channels: migrate into an empty store "
            "(or one that holds no ticker data)."
        )
    names: Any = await source.smembers(source_layout.channels)
    for channel in sorted(n.decode() for n in names):
        events = await _copy_channel(source, source_layout, target, target_layout, channel)
        copied.channels += 1
        copied.events += events
        copied.briefs += int(await target.hlen(target_layout.briefs(channel)))
        copied.histories += int(await target.hlen(target_layout.history(channel)))
        await target.sadd(target_layout.channels, channel)
        progress(f"{channel}: {events} events")
    copied.idempotency_records = await _copy_idempotency(
        source, source_layout, target, target_layout, {n.decode() for n in names}
    )
    keys: Any = await source.hgetall(source_layout.api_keys)
    names_by_key: Any = await source.hgetall(source_layout.api_key_names)
    if keys:
        await target.hset(target_layout.api_keys, mapping=keys)
    if names_by_key:
        await target.hset(target_layout.api_key_names, mapping=names_by_key)
    copied.api_keys = len(keys)
    objects: Any = await source.hgetall(source_layout.channel_objects)
    if objects:
        await target.hset(target_layout.channel_objects, mapping=objects)
    copied.channel_objects = len(objects)
    copied.audit_entries = await _copy_stream(source, source_layout.audit, target,
                                              target_layout.audit)
    return copied


async def _copy_stream(
    source: aioredis.Redis, key: str, target: aioredis.Redis, target_key: str
) -> int:
    """A stream with its entry IDs, oldest first; the entries copied."""
    count = 0
    start = "-"
    while True:
        entries: Any = await source.xrange(key, start, "+", count=PAGE)
        if not entries:
            return count
        async with target.pipeline(transaction=False) as pipe:
            for entry_id, fields in entries:
                pipe.xadd(target_key, fields, id=entry_id)
            await pipe.execute()
        count += len(entries)
        if len(entries) < PAGE:
            return count
        start = "(" + entries[-1][0].decode()


async def _copy_channel(
    source: aioredis.Redis, source_layout: Layout, target: aioredis.Redis, target_layout: Layout,
    channel: str,
) -> int:
    """The log (IDs kept), the briefs, their histories and the meta of one channel; the
    events copied."""
    log, target_log = source_layout.log(channel), target_layout.log(channel)
    count = await _copy_stream(source, log, target, target_log)
    if await source.exists(log):
        info: Any = await source.xinfo_stream(log)
        last = info["last-generated-id"]
        if count == 0:  # an emptied log still has its last ID: keep the key and the ID
            await target.xadd(target_log, {"e": "x"}, id=last)
            await target.xtrim(target_log, maxlen=0)
        await target.execute_command("XSETID", target_log, last)  # type: ignore[no-untyped-call]
    briefs: Any = await source.hgetall(source_layout.briefs(channel))
    if briefs:
        await target.hset(target_layout.briefs(channel), mapping=briefs)
    histories: Any = await source.hgetall(source_layout.history(channel))
    if histories:
        await target.hset(target_layout.history(channel), mapping=histories)
    meta: Any = await source.hgetall(source_layout.meta(channel))
    if meta:
        await target.hset(target_layout.meta(channel), mapping=meta)
    copied = int(await target.xlen(target_log))
    if copied != int(await source.xlen(log)):
        raise MigrateError(
            f"Channel {channel!r}: the copy holds {copied} events, the source "
            f"{await source.xlen(log)}; was something published during the copy? Stop "
            "publishing, empty the destination and run the migration again."
        )
    return count


async def _copy_idempotency(
    source: aioredis.Redis, source_layout: Layout, target: aioredis.Redis, target_layout: Layout,
    channels: set[str],
) -> int:
    """The idempotency records of ``channels``, each with the rest of its TTL: one
    ``SCAN`` of the store for all of them (one per channel would walk the whole
    keyspace once per channel)."""
    copied = 0
    async for key in source.scan_iter(match=Layout.IDEMPOTENCY_MATCH, count=1000):
        channel, digest = source_layout.split_idempotency(key)
        if channel not in channels:
            continue
        ttl_ms = int(await source.pttl(key))
        value: Any = await source.get(key)
        if value is None or ttl_ms == -2:
            continue  # expired meanwhile
        target_key = target_layout.idempotency_prefix(channel) + digest
        await target.set(target_key, value, px=ttl_ms if ttl_ms > 0 else None)
        copied += 1
    return copied
