"""Channels as managed objects (``ticker.channels``): CRUD over HTTP and the CLI, their
validation, admin-only writes, delete (refused while briefs are retained, ``--force``
with a live subscriber), ``auto_create_channels`` on and off, channels that have briefs
but no object, and the audit stream of every management action (``ticker.audit``)."""

from __future__ import annotations

import asyncio
import getpass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service, until_closed
from tests.test_auth import ticker_cli
from ticker.auth import KeyStore, digest_of
from ticker.channels import ChannelStore
from ticker.embedded import EmbeddedRedis
from ticker.keys import SINGLE
from ticker.migrate import MigrateError, migrate

WORLD = "/v1/channels/world"


async def _admin(redis_client: aioredis.Redis, name: str = "boss") -> dict[str, str]:
    key = await KeyStore(redis_client).create(name, [], role="admin", by="test-setup")
    return {"Authorization": f"Bearer {key}"}


async def test_an_admin_creates_reads_updates_and_deletes_a_channel_over_http(
    service: Service, redis_client: aioredis.Redis
) -> None:
    admin = await _admin(redis_client)
    http = service.http
    assert (await http.get(WORLD)).status_code == 404
    body = {"title": "World news", "lang": "fr", "time_zone": "Europe/Paris"}
    r = await http.put(WORLD, json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "World news" and r.json()["created_at"]
    r = await http.get(WORLD)
    assert r.status_code == 200
    assert r.json() == {"name": "world", "title": "World news", "lang": "fr",
                        "time_zone": "Europe/Paris", "private": False, "readers": 0}
    r = await http.patch(WORLD, json={"title": "Le monde", "time_zone": None}, headers=admin)
    assert r.status_code == 200, r.text
    got = (await http.get(WORLD)).json()
    assert (got["title"], got["lang"], got["time_zone"]) == ("Le monde", "fr", None)
    r = await http.put(WORLD, json={"lang": "de"}, headers=admin)  # PUT replaces: title unset
    assert r.status_code == 200 and r.json()["title"] is None and r.json()["lang"] == "de"
    assert (await http.delete(WORLD, headers=admin)).status_code == 204
    assert (await http.get(WORLD)).status_code == 404
    r = await http.patch(WORLD, json={"title": "x"}, headers=admin)
    assert r.status_code == 404 and "ticker channels create world" in r.json()["detail"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"title": ""}, "title", "1 to 200 characters"),
    ({"title": "x" * 201}, "title", "1 to 200 characters"),
    ({"title": "two\nlines"}, "title", "control characters"),
    ({"title": "   "}, "title", "blank"),
    ({"lang": "123"}, "lang", "language tag"),
    ({"time_zone": "Mars/Olympus"}, "time_zone", "IANA time zone"),
    ({"time_zone": "posixrules"}, "time_zone", "IANA time zone"),
    ({"private": "yes"}, "private", "true"),
    ({"secret": True}, "secret", "Unknown field"),
])
async def test_invalid_channel_values_are_refused_with_a_sentence(
    service: Service, redis_client: aioredis.Redis, body: dict[str, Any], field: str,
    words: str,
) -> None:
    admin = await _admin(redis_client)
    r = await service.http.put(WORLD, json=body, headers=admin)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field and words in problem["detail"], problem
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await redis_client.hlen(SINGLE.channel_objects) == 0


async def test_a_bad_name_or_body_is_a_problem(
    service: Service, redis_client: aioredis.Redis
) -> None:
    admin = await _admin(redis_client)
    r = await service.http.put("/v1/channels/World!", json={}, headers=admin)
    assert r.status_code == 400 and "lowercase" in r.json()["detail"]
    r = await service.http.put(WORLD, json=["a list"], headers=admin)
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]
    r = await service.http.delete(f"{WORLD}?force=maybe", headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "force"


async def test_only_an_admin_key_manages_channels_and_reads_the_audit(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    publisher = {"Authorization": f"Bearer {await keys.create('desk', ['world'])}"}
    reader = {"Authorization": f"Bearer {await keys.create('site', ['world'], role='reader')}"}
    http = service.http
    for headers, status in ((publisher, 403), (reader, 403), ({}, 401)):
        for r in (
            await http.put(WORLD, json={"title": "T"}, headers=headers),
            await http.patch(WORLD, json={"title": "T"}, headers=headers),
            await http.delete(WORLD, headers=headers),
            await http.get("/v1/audit", headers=headers),
        ):
            assert r.status_code == status, r.text
            assert r.json()["detail"]
    assert await redis_client.hlen(SINGLE.channel_objects) == 0


async def test_delete_is_refused_while_briefs_are_retained_and_force_tells_subscribers(
    service: Service, redis_client: aioredis.Redis
) -> None:
    admin = await _admin(redis_client)
    await service.publish("world", "kept")
    await service.publish("sport", "other")
    only = await service.subscriber()
    await only.subscribe("world")
    assert (await only.recv())["type"] == "snapshot"
    both = await service.subscriber()
    await both.subscribe("world")
    await both.subscribe("sport")
    assert [m["type"] for m in await both.recv_until(2)] == ["snapshot", "snapshot"]
    r = await service.http.delete(WORLD, headers=admin)
    assert r.status_code == 409, r.text
    assert "retains 1 briefs" in r.json()["detail"] and "--force" in r.json()["detail"]
    assert await redis_client.hlen(SINGLE.briefs("world")) == 1
    r = await service.http.delete(f"{WORLD}?force=true", headers=admin)
    assert r.status_code == 204, r.text
    for key in (SINGLE.log("world"), SINGLE.briefs("world"), SINGLE.meta("world"),
                SINGLE.history("world")):
        assert not await redis_client.exists(key), key
    assert not await redis_client.sismember(SINGLE.channels, "world")
    # Its only channel gone, the connection gets an error, then close 4004.
    messages, code, reason = await until_closed(only)
    assert [m["code"] for m in messages] == ["channel_deleted"], messages
    assert code == 4004 and "world" in reason
    # Subscribed to another channel too: the error, and the connection stays for that one.
    error = await both.recv()
    assert error["type"] == "error" and error["code"] == "channel_deleted"
    assert error["channel"] == "world" and "was deleted" in error["message"]
    await service.publish("sport", "still here")
    assert (await both.recv())["brief"]["text"] == "still here"
    await both.close()
    # A publish afterwards starts a new channel (auto_create_channels).
    await service.publish("world", "again")
    assert (await service.http.get(WORLD)).status_code == 200


async def test_a_publish_racing_a_delete_is_never_lost_once_accepted(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """Delete (without force) and publish at once, many times: whichever comes first, a
    brief that was accepted (201) is still there. The count of retained briefs and the
    delete are one script (``_DELETE``): a count, then a publish, then the delete would
    lose it. (That window is one Redis round trip, which this loop seldom hits: the
    script is what guarantees it; the loop guards against a longer window coming back.)"""
    admin = await _admin(redis_client)
    raced = 0
    for i in range(40):
        name = f"race-{i}"
        assert (await service.http.put(f"/v1/channels/{name}", json={},
                                        headers=admin)).status_code == 201
        deleted, *published = await asyncio.gather(
            service.http.delete(f"/v1/channels/{name}", headers=admin),
            *(service.http.post(f"/v1/channels/{name}/briefs", json={"text": f"brief {j}"},
                                headers=service.auth()) for j in range(8)),
        )
        assert deleted.status_code in (204, 409), deleted.text
        raced += deleted.status_code == 204
        for answer in published:
            assert answer.status_code == 201, answer.text
            r = await service.http.get(f"/v1/channels/{name}/briefs/{answer.json()['id']}")
            assert r.status_code == 200, (i, deleted.status_code, r.text)
    assert raced, "the delete never came first: the race was not run"


async def test_a_first_publish_creates_the_channel_unless_auto_create_is_off(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with() as service:
        await service.publish("world", "first")
        record = orjson.loads(await redis_client.hget(SINGLE.channel_objects, "world"))
        assert record["title"] is None and record["created_at"] == record["updated_at"]
    await redis_client.flushall()
    async with serve_with(auto_create_channels=False) as service:
        admin = await _admin(redis_client)
        r = await service.http.post(f"{WORLD}/briefs", json={"text": "x"},
                                    headers=service.auth())
        assert r.status_code == 409, r.text
        assert "ticker channels create world" in r.json()["detail"]
        assert not await redis_client.exists(SINGLE.log("world"))
        assert not await redis_client.sismember(SINGLE.channels, "world")
        r = await service.http.put(WORLD, json={"title": "World"}, headers=admin)
        assert r.status_code == 201
        await service.publish("world", "now it exists")
        # A channel of an older store: briefs, no object. It keeps working.
        await redis_client.sadd(SINGLE.channels, "legacy")
        await service.publish("legacy", "still publishes")
        assert not await redis_client.hexists(SINGLE.channel_objects, "legacy")
        got = (await service.http.get("/v1/channels/legacy")).json()
        assert got["name"] == "legacy" and got["title"] is None
        r = await service.http.patch("/v1/channels/legacy", json={"title": "Old"},
                                     headers=admin)
        assert r.status_code == 200 and r.json()["title"] == "Old", r.text


async def test_the_cli_manages_channels_and_the_audit_says_who(
    service: Service, redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    env = {"REDIS_URL": redis_server.url}
    code, out = await ticker_cli("channels", "create", "world", "--title", "World news",
                                 "--lang", "fr", "--time-zone", "Europe/Paris", env=env)
    assert code == 0 and "Created channel 'world'" in out, out
    code, out = await ticker_cli("channels", "create", "world", env=env)
    assert code == 1 and "exists already" in out and "ticker channels update" in out, out
    code, out = await ticker_cli("channels", "create", "bad", "--time-zone", "Nowhere", env=env)
    assert code == 1 and "IANA time zone" in out, out
    code, out = await ticker_cli("channels", "update", "world", "--title", "Monde",
                                 "--clear", "time-zone", env=env)
    assert code == 0, out
    await service.publish("world", "a brief")
    code, out = await ticker_cli("channels", "list", env=env)
    assert code == 0 and "world\tMonde\tfr\t-\t" in out, out
    code, out = await ticker_cli("channels", "delete", "world", env=env)
    assert code == 1 and "--force" in out, out
    code, out = await ticker_cli("channels", "delete", "world", "--force", env=env)
    assert code == 0 and "with its 1 retained briefs" in out, out
    code, out = await ticker_cli("keys", "create", "--name", "cms", "--channel", "world", env=env)
    assert code == 0
    secret = out.splitlines()[0]
    code, out = await ticker_cli("audit", "--limit", "4", env=env)
    assert code == 0, out
    lines = [line.split("\t") for line in out.splitlines()]
    assert [line[1] for line in lines] == [
        "key.create", "channel.delete", "channel.update", "channel.create"
    ], out
    me = f"cli:{getpass.getuser()}"
    assert {line[3] for line in lines} == {me}
    assert lines[1][2] == "world" and orjson.loads(lines[1][4]) == {"force": True, "briefs": 1}
    assert secret not in out and digest_of(secret) not in out
    # The server-listing form of 'ticker channels' is still there.
    code, out = await ticker_cli("channels", "--server", service.base, env=env)
    assert code == 0, out


async def test_every_management_action_is_audited_without_secrets(
    service: Service, redis_client: aioredis.Redis
) -> None:
    admin = await _admin(redis_client)
    keys = KeyStore(redis_client)
    secret = await keys.create("cms", ["world"], by="cli:ops")
    rotated, _ = await keys.rotate("cms", 0, by="cli:ops")
    assert await keys.revoke("cms", by="cli:ops")
    http = service.http
    assert (await http.put(WORLD, json={"title": "W"}, headers=admin)).status_code == 201
    assert (await http.patch(WORLD, json={"lang": "fr"}, headers=admin)).status_code == 200
    assert (await http.delete(WORLD, headers=admin)).status_code == 204
    r = await http.get("/v1/audit", headers=admin)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    entries = r.json()["entries"]
    got = [(e["action"], e["target"], e["by"]) for e in entries]
    assert got[:6] == [
        ("channel.delete", "world", "boss"), ("channel.update", "world", "boss"),
        ("channel.create", "world", "boss"), ("key.revoke", "cms", "cli:ops"),
        ("key.rotate", "cms", "cli:ops"), ("key.create", "cms", "cli:ops"),
    ], got
    assert entries[1]["details"] == {"lang": "fr"}
    assert entries[5]["details"] == {"role": "publisher", "channels": ["world"]}
    # Paginated by entry id, newest first.
    page = (await http.get("/v1/audit?limit=2", headers=admin)).json()
    assert [e["action"] for e in page["entries"]] == ["channel.delete", "channel.update"]
    after = (await http.get(f"/v1/audit?limit=2&before={page['next']}", headers=admin)).json()
    assert [e["action"] for e in after["entries"]] == ["channel.create", "key.revoke"]
    r = await http.get("/v1/audit?before=yesterday", headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "before"
    raw = repr(await redis_client.xrange(SINGLE.audit)).encode()
    for s in (secret, rotated):
        assert s.encode() not in raw and digest_of(s).encode() not in raw



async def test_a_title_change_reaches_a_running_servers_kept_pages(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """A change of a channel's object rings its bell: the server drops what it kept."""
    admin = await _admin(redis_client)
    await service.http.put(WORLD, json={"title": "Before"}, headers=admin)
    await service.publish("world", "a brief")
    page = await service.http.get("/embed/world")
    assert "<title>Before</title>" in page.text
    await redis_client.hset(SINGLE.channel_objects, "world", orjson.dumps(
        {"title": "Behind its back", "lang": None, "time_zone": None}))
    assert "<title>Before</title>" in (await service.http.get("/embed/world")).text  # kept
    await service.http.patch(WORLD, json={"title": "After"}, headers=admin)
    for _ in range(200):
        if "<title>After</title>" in (await service.http.get("/embed/world")).text:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the page kept the old title")


async def test_embed_and_feeds_use_the_channels_defaults_unless_the_request_says(
    service: Service, redis_client: aioredis.Redis
) -> None:
    admin = await _admin(redis_client)
    body = {"title": "Le fil <monde>", "lang": "fr", "time_zone": "Asia/Tokyo"}
    assert (await service.http.put(WORLD, json=body, headers=admin)).status_code == 201
    await service.publish("world", "a brief", time="2026-02-14T16:30:00Z")
    page = (await service.http.get("/embed/world")).text
    assert "<title>Le fil &lt;monde&gt;</title>" in page and '<html lang="fr">' in page
    assert 'time-zone="Asia/Tokyo"' in page and 'lang="fr"' in page
    assert ">15/02</time>" in page  # 01:30 the next day in Tokyo
    asked = (await service.http.get("/embed/world?lang=en-US&tz=UTC")).text
    assert '<html lang="en-US">' in asked and 'time-zone="UTC"' in asked
    assert ">02/14</time>" in asked
    rss = (await service.http.get(f"{WORLD}/feed.rss")).text
    assert "<title>Le fil &lt;monde&gt;</title>" in rss and "<language>fr</language>" in rss
    assert "+0900" in rss
    atom = (await service.http.get(f"{WORLD}/feed.atom")).text
    assert "Le fil &lt;monde&gt;" in atom and "+09:00" in atom
    feed = (await service.http.get(f"{WORLD}/feed.json")).json()
    assert feed["title"] == "Le fil <monde>" and feed["language"] == "fr"


async def test_a_channel_without_an_object_keeps_the_old_defaults(service: Service) -> None:
    await service.publish("world", "a brief")
    page = (await service.http.get("/embed/world")).text
    assert "<title>Live: world</title>" in page and '<html lang="en">' in page
    feed = (await service.http.get(f"{WORLD}/feed.json")).json()
    assert feed["title"] == "ticker: world" and "language" not in feed


async def test_migrate_copies_channel_objects_and_the_audit_stream(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    channels = ChannelStore(redis_client, SINGLE)
    await channels.create("world", {"title": "World", "lang": "fr"}, "cli:ops")
    await KeyStore(redis_client).create("cms", ["world"], by="cli:ops")
    target = aioredis.Redis.from_url(redis_server.url, db=1)
    try:
        await target.flushdb()
        copied = await migrate(redis_client, SINGLE, target, SINGLE)
        assert (copied.channel_objects, copied.audit_entries) == (1, 2)
        assert await target.hgetall(SINGLE.channel_objects) == await redis_client.hgetall(
            SINGLE.channel_objects)
        assert await target.xrange(SINGLE.audit) == await redis_client.xrange(SINGLE.audit)
        with pytest.raises(MigrateError, match="already holds 1 channels"):
            await migrate(redis_client, SINGLE, target, SINGLE)
    finally:
        await target.flushdb()
        await target.aclose()
