"""The audit entry of a management action is written in the same atomic step as the
action (``ticker.audit``): one script or one ``MULTI``/``EXEC`` on a real server, seen
through ``MONITOR``; and a refused compare-and-set (a concurrent change) writes none.
(On a Redis Cluster: tests/test_cluster.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from ticker.audit import AuditLog, entry_fields
from ticker.auth import KeyAdminError, KeyStore
from ticker.channels import ChannelStore
from ticker.embedded import EmbeddedRedis
from ticker.errors import Conflict
from ticker.keys import SINGLE
from ticker.tokens import SecretCache, SecretError, Tokens

# The keys that management actions change: every write to one is an audited action.
MANAGED = {SINGLE.api_keys, SINGLE.api_key_names, SINGLE.channel_objects, SINGLE.channels,
           SINGLE.token_secrets}
# (Not HSETNX: a key's create claims its name with it, and writes its record with HSET
# in the same script only if the name was free.)
WRITES = {"HSET", "HDEL", "SADD", "SREM", "DEL"}


@contextlib.asynccontextmanager
async def monitored(redis_server: EmbeddedRedis) -> AsyncIterator[list[tuple[str, str]]]:
    """Every command the server runs meanwhile, as (client type, command): "lua" for one
    run by a script."""
    client = aioredis.Redis.from_url(redis_server.url)
    seen: list[tuple[str, str]] = []
    try:
        async with client.monitor() as monitor:
            await client.ping()  # (MONITOR is on before anything we watch runs)

            async def listen() -> None:
                async for cmd in monitor.listen():
                    seen.append((cmd.get("client_type", ""), cmd["command"]))

            task = asyncio.create_task(listen())
            try:
                yield seen
                marker = "ECHO end-of-monitored"
                probe = aioredis.Redis.from_url(redis_server.url)
                await probe.echo("end-of-monitored")
                await probe.aclose()
                for _ in range(200):
                    if any(c.startswith(marker) for _, c in seen):
                        break
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await client.aclose()


def atomic_units(seen: list[tuple[str, str]]) -> list[list[str]]:
    """The commands the server ran as one step each: a command with what the script it
    ran did (its "lua" commands), or a ``MULTI`` with everything up to its ``EXEC``."""
    units: list[list[str]] = []
    in_multi = False
    for kind, command in seen:
        name = command.split(" ", 1)[0].upper()
        if kind == "lua" or in_multi:
            units[-1].append(command)
            in_multi = in_multi and name != "EXEC"
        else:
            units.append([command])
            in_multi = name == "MULTI"
    return units


def writes_managed(unit: list[str]) -> bool:
    for command in unit:
        parts = command.split(" ")
        if parts[0].upper() in WRITES and len(parts) > 1 and parts[1] in MANAGED:
            return True
    return False


def audit_entries(unit: list[str]) -> int:
    return sum(1 for c in unit if c.upper().startswith(f"XADD {SINGLE.audit.upper()} "))


def actions(entries: list[Any]) -> list[tuple[str, str]]:
    return [(e.action, e.target) for e in reversed(entries)]


async def test_every_management_action_and_its_entry_are_one_step_of_the_server(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    """Every write of a management action runs in the same script or transaction as its
    audit entry, and no entry runs anywhere else: a process that dies at any point
    leaves both or neither. Refused actions write neither."""
    keys = KeyStore(redis_client)
    channels = ChannelStore(redis_client, SINGLE)
    tokens = Tokens(redis_client, SINGLE, "", SecretCache())
    async with monitored(redis_server) as seen:
        await keys.create("cms", ["world"], by="ops")
        with pytest.raises(KeyAdminError, match="already exists"):
            await keys.create("cms", ["sport"], by="ops")
        await keys.rotate("cms", 60, by="ops")
        assert await keys.revoke("cms", by="ops")
        assert not await keys.revoke("cms", by="ops")
        await channels.create("world", {"title": "World"}, "ops")
        with pytest.raises(Conflict):
            await channels.create("world", {}, "ops")
        await channels.update("world", {"lang": "fr"}, "ops")
        await channels.update("sport", {"title": "Sport"}, "ops", create=True)
        await redis_client.sadd(SINGLE.channels, "legacy")  # published to, no object
        await channels.update("legacy", {"title": "Old"}, "ops")
        assert await channels.delete("world", "ops") == 0
        kid = await tokens.rotate("ops")
        await tokens.revoke(kid, "ops")
    with pytest.raises(SecretError):  # (its script tries an HDEL, which deletes nothing)
        await tokens.revoke(kid, "ops")
    units = atomic_units(seen)
    audited = [u for u in units if audit_entries(u)]
    assert len(audited) == 10, audited
    for unit in units:
        if unit[0].startswith(f"SADD {SINGLE.channels} legacy"):
            continue  # the test's own write, standing for a publish
        assert writes_managed(unit) == bool(audit_entries(unit)), unit
        assert audit_entries(unit) <= 1, unit
    for unit in audited:
        assert unit[0].split(" ")[0].upper() in {"EVALSHA", "EVAL", "MULTI"}, unit
    entries = await AuditLog(redis_client, SINGLE).read(20)
    assert actions(entries) == [
        ("key.create", "cms"), ("key.rotate", "cms"), ("key.revoke", "cms"),
        ("channel.create", "world"), ("channel.update", "world"), ("channel.create", "sport"),
        ("channel.update", "legacy"), ("channel.delete", "world"),
        ("token-secret.rotate", kid), ("token-secret.revoke", kid),
    ]
    # The entries are as they always were.
    assert entries[-1].details == {"role": "publisher", "channels": ["world"]}
    assert entries[-2].details == {"grace_seconds": 60, "valid_until": entries[-2].details[
        "valid_until"]}
    assert entries[-3].details == {"secrets": 2}
    assert entries[2].details == {"force": False, "briefs": 0}
    assert entries[0].details == {} and entries[0].by == "ops"


async def test_a_compare_and_set_refused_by_a_concurrent_change_writes_no_entry(
    redis_client: aioredis.Redis
) -> None:
    """Two admins change one channel at once: the change that lost the race is tried
    again, and recorded once, after the one that won; and a rotation that a revoke
    overtook records nothing (the key is gone: there was no rotation)."""
    store = ChannelStore(redis_client, SINGLE)
    rival = ChannelStore(redis_client, SINGLE)
    await store.create("world", {"title": "World"}, "ops")
    real_cas = store._cas
    tries = 0

    async def cas_after_a_rival(**kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:  # between this update's read and its write
            await rival.update("world", {"lang": "fr"}, "rival")
        return await real_cas(**kwargs)

    store._cas = cas_after_a_rival  # type: ignore[assignment]
    info, created = await store.update("world", {"title": "Le monde"}, "ops")
    assert tries == 2 and not created
    assert (info.title, info.lang) == ("Le monde", "fr")  # neither change lost
    log = AuditLog(redis_client, SINGLE)
    assert [(e.action, e.by, e.details) for e in reversed(await log.read(10))] == [
        ("channel.create", "ops", {"title": "World"}),
        ("channel.update", "rival", {"lang": "fr"}),
        ("channel.update", "ops", {"title": "Le monde"}),
    ]

    keys = KeyStore(redis_client)
    await keys.create("cms", ["world"], by="ops")
    real_swap = keys._swap

    async def swap_after_a_revoke(**kwargs: Any) -> Any:
        await KeyStore(redis_client).revoke("cms", by="rival")
        return await real_swap(**kwargs)

    keys._swap = swap_after_a_revoke  # type: ignore[assignment]
    with pytest.raises(KeyAdminError, match="no key named"):
        await keys.rotate("cms", 60, by="ops")
    assert [(e.action, e.by) for e in (await log.read(2))] == [
        ("key.revoke", "rival"), ("key.create", "ops")
    ]
    assert await redis_client.hlen(SINGLE.api_keys) == 0


async def test_two_deletes_of_one_channel_at_once_record_one(
    redis_client: aioredis.Redis
) -> None:
    store = ChannelStore(redis_client, SINGLE)
    await store.create("world", {}, "ops")
    await asyncio.gather(store.delete("world", "a"), store.delete("world", "b"),
                         return_exceptions=True)
    deletes = [e for e in await AuditLog(redis_client, SINGLE).read(10)
               if e.action == "channel.delete"]
    assert len(deletes) == 1, deletes
    assert await store.get("world") is None


def test_an_entry_never_holds_a_secret_named_field() -> None:
    for field in ("key", "secret", "digest", "token"):
        with pytest.raises(ValueError, match="must not hold"):
            entry_fields("key.create", "cms", "ops", {field: "x"})
        with pytest.raises(ValueError, match="must not hold"):
            AuditLog.script_args("key.create", "cms", "ops", {field: "x"})
