"""API key roles, expiry and rotation (``ticker.auth``): each role against each endpoint,
keys that expire and secrets rotated with a grace, on a real server with its key cache,
records written before roles existed, and the CLI's answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service
from tests.test_auth import REVOKE_BOUND, anchored, key_cache, ticker_cli
from ticker.auth import ACTIONS, ApiKey, KeyAdminError, KeyStore, digest_of
from ticker.cli import main
from ticker.embedded import EmbeddedRedis
from ticker.keys import SINGLE
from ticker.migrate import migrate

WORLD = "/v1/channels/world/briefs"

# Each endpoint, and what each key gets from it. 'pin' is a correction with `pinned`;
# 'private' reads the private channel 'vip'; the channel endpoints act on a channel of
# the caller's own ('made-*', 'gone-*'), so that one caller's success changes nothing
# for the next.
ENDPOINTS = ("publish", "correct", "pin", "retract", "history", "list", "get", "channels",
             "private", "mint", "channel-get", "channel-put", "channel-patch",
             "channel-delete", "audit", "keys-self")
TABLE: dict[str, tuple[int, ...]] = {
    #                  publish correct pin retract history list get channels
    #                  private mint ch-get ch-put ch-patch ch-delete audit keys-self
    "publisher":       (201, 200, 200, 204, 200, 200, 200, 200,
                        200, 403, 200, 403, 403, 403, 403, 200),
    "publisher-sport": (403, 403, 403, 403, 403, 200, 200, 200,
                        403, 403, 200, 403, 403, 403, 403, 200),
    "admin":           (201, 200, 200, 204, 200, 200, 200, 200,
                        200, 201, 200, 201, 200, 204, 200, 200),
    "reader":          (403, 403, 403, 403, 403, 200, 200, 200,
                        200, 201, 200, 403, 403, 403, 403, 200),
    "no key":          (401, 401, 401, 401, 401, 200, 200, 200,
                        401, 401, 200, 401, 401, 401, 401, 401),
}


async def _call(http: httpx.AsyncClient, endpoint: str, brief_id: str,
                headers: dict[str, str], who: str) -> httpx.Response:
    one = f"{WORLD}/{brief_id}"
    mine = who.replace(" ", "-")
    if endpoint == "publish":
        return await http.post(WORLD, json={"text": "from the table"}, headers=headers)
    if endpoint == "correct":
        return await http.patch(one, json={"text": "corrected"}, headers=headers)
    if endpoint == "pin":
        return await http.patch(one, json={"pinned": True}, headers=headers)
    if endpoint == "retract":
        return await http.delete(one, headers=headers)
    if endpoint == "history":
        return await http.get(f"{one}/history", headers=headers)
    if endpoint == "list":
        return await http.get(WORLD, headers=headers)
    if endpoint == "get":
        return await http.get(one, headers=headers)
    if endpoint == "channels":
        return await http.get("/v1/channels", headers=headers)
    if endpoint == "private":
        return await http.get("/v1/channels/vip/briefs", headers=headers)
    if endpoint == "mint":
        return await http.post("/v1/channels/world/tokens", json={"ttl": 60}, headers=headers)
    if endpoint == "channel-get":
        return await http.get("/v1/channels/vip", headers=headers)
    if endpoint == "channel-put":
        return await http.put(f"/v1/channels/made-{mine}", json={"title": "T"}, headers=headers)
    if endpoint == "channel-patch":
        return await http.patch("/v1/channels/vip", json={"title": "VIP"}, headers=headers)
    if endpoint == "channel-delete":
        return await http.delete(f"/v1/channels/gone-{mine}", headers=headers)
    if endpoint == "audit":
        return await http.get("/v1/audit", headers=headers)
    return await http.get("/v1/keys/self", headers=headers)


async def test_each_role_against_each_endpoint(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    secrets = {
        "publisher": await keys.create("desk", ["world", "vip"]),
        "publisher-sport": await keys.create("sport-desk", ["sport"]),
        "admin": await keys.create("boss", [], role="admin"),
        "reader": await keys.create("site", ["world", "vip"], role="reader"),
    }
    setup = service.auth(await keys.create("setup", [], role="admin"))
    r = await service.http.put("/v1/channels/vip", json={"private": True}, headers=setup)
    assert r.status_code == 201, r.text
    await service.publish("vip", "members only")
    wrong = []
    for who, expected in TABLE.items():
        r = await service.http.put(f"/v1/channels/gone-{who.replace(' ', '-')}", json={},
                                   headers=setup)
        assert r.status_code == 201, r.text
        brief = await service.publish("world", f"a brief for {who}")  # the fixture's key
        headers = service.auth(secrets[who]) if who in secrets else {}
        for endpoint, status in zip(ENDPOINTS, expected, strict=True):
            r = await _call(service.http, endpoint, brief["id"], headers, who)
            if r.status_code != status:
                wrong.append(f"{who} {endpoint}: {r.status_code} {r.text[:200]}, not {status}")
            elif status == 403 and who == "reader":
                assert "is a reader key: its role cannot" in r.json()["detail"], r.text
            elif status == 403 and endpoint in ("mint", "channel-put", "channel-patch",
                                                "channel-delete", "audit"):
                assert "its role cannot" in r.json()["detail"], r.text
            elif status == 403:
                assert "may not" in r.json()["detail"] and "'" in r.json()["detail"]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ["publisher", "reader", "admin", "auditor"])
def test_may_decides_every_action_for_every_role(role: str) -> None:
    key = ApiKey("k", ("world",) if role != "admin" else ("*",), "2026-01-01T00:00:00Z", "d",
                 role=role)
    for action in ACTIONS:
        writes = action in ("publish", "correct", "retract", "pin", "history", "read")
        reads = action in ("read", "mint-token")
        allowed = {"publisher": writes, "reader": reads, "admin": True, "auditor": False}[role]
        assert key.may(action, "world") is allowed, (role, action)
        assert key.may(action, "sport") is (allowed and role == "admin"), (role, action)
        assert (key.refusal(action, "world") is None) is allowed, (role, action)
    if role != "admin":
        assert not key.may("administer")


async def test_a_record_written_before_roles_is_a_publisher_key(
    service: Service, redis_client: aioredis.Redis
) -> None:
    """As the code before roles wrote it: name, channels, created_at, nothing else."""
    secret = "tk_" + "o" * 43
    digest = digest_of(secret)
    await redis_client.hset("ticker:apikey-names", "legacy", digest)
    await redis_client.hset("ticker:apikeys", digest, orjson.dumps(
        {"name": "legacy", "channels": ["world"], "created_at": "2026-11-01T10:00:00Z"}
    ))
    r = await service.http.post(WORLD, json={"text": "old key"}, headers=service.auth(secret))
    assert r.status_code == 201, r.text
    r = await service.http.post("/v1/channels/sport/briefs", json={"text": "x"},
                                headers=service.auth(secret))
    assert r.status_code == 403 and "may not publish to channel 'sport'" in r.text
    keys = KeyStore(redis_client)
    [legacy] = [k for k in await keys.list() if k.name == "legacy"]
    assert legacy.role == "publisher" and legacy.expires_at is None and legacy.ends is None
    new, _ = await keys.rotate("legacy", grace=60)
    current = orjson.loads(await redis_client.hget("ticker:apikeys", digest_of(new)))
    assert current["role"] == "publisher" and current["channels"] == ["world"]
    for key in (new, secret):  # the new secret, and the old one in its grace
        r = await service.http.post(WORLD, json={"text": "x"}, headers=service.auth(key))
        assert r.status_code == 201, r.text


async def test_an_expired_key_is_refused_even_from_the_cache(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await anchored(service)
    key = await KeyStore(redis_client).create("short", ["world"], expires_in=0.6)
    r = await service.http.post(WORLD, json={"text": "in time"}, headers=service.auth(key))
    assert r.status_code == 201, r.text
    cache = key_cache(service)
    assert cache.get(digest_of(key)) is not None  # served from memory from now on
    record = orjson.loads(await redis_client.hget("ticker:apikeys", digest_of(key)))
    await asyncio.sleep(0.7)
    for _ in range(2):  # the cached entry, then a read from Redis (not kept)
        r = await service.http.post(WORLD, json={"text": "late"}, headers=service.auth(key))
        assert r.status_code == 401, r.text
        assert r.json()["detail"] == (
            f"API key 'short' expired at {record['expires_at']}: ask an operator for a new "
            "one ('ticker keys create')."
        )
        assert r.headers["www-authenticate"] == 'Bearer realm="ticker", error="invalid_token"'
        assert cache.get(digest_of(key)) is None


async def test_a_rotated_secret_works_for_its_grace_then_says_it_was_rotated(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await anchored(service)
    keys = KeyStore(redis_client)
    old = await keys.create("cms", ["world"])
    r = await service.http.post(WORLD, json={"text": "before"}, headers=service.auth(old))
    assert r.status_code == 201  # now cached, without an end
    new, valid_until = await keys.rotate("cms", grace=1.0)
    rotated_at = orjson.loads(await redis_client.hget("ticker:apikeys", digest_of(old)))[
        "rotated_at"]
    for key in (new, old):
        r = await service.http.post(WORLD, json={"text": "in grace"}, headers=service.auth(key))
        assert r.status_code == 201, r.text
    await asyncio.sleep(1.1)
    r = await service.http.post(WORLD, json={"text": "after"}, headers=service.auth(old))
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == (
        f"API key 'cms' was rotated at {rotated_at}; this old secret stopped working at "
        f"{valid_until}: use the key's new secret."
    )
    assert r.headers["www-authenticate"] == 'Bearer realm="ticker", error="invalid_token"'
    r = await service.http.post(WORLD, json={"text": "new"}, headers=service.auth(new))
    assert r.status_code == 201, r.text
    # A second rotation deletes the first old secret (its grace is over): it is unknown now.
    newer, _ = await keys.rotate("cms", grace=60)
    assert await redis_client.hget("ticker:apikeys", digest_of(old)) is None
    assert {k.digest for k in await keys.list() if k.name == "cms"} == {
        digest_of(new), digest_of(newer)
    }


async def test_revoke_removes_every_secret_of_a_rotated_key_from_every_cache(
    service: Service, redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    await anchored(service)
    keys = KeyStore(redis_client)
    old = await keys.create("cms", ["world"])
    code, out = await ticker_cli("keys", "rotate", "cms", env={"REDIS_URL": redis_server.url})
    assert code == 0, out
    new = out.splitlines()[0]
    assert new.startswith("tk_") and "The old secret works until" in out, out
    code, listed = await ticker_cli("keys", "list", env={"REDIS_URL": redis_server.url})
    [line] = [line.split("\t") for line in listed.splitlines() if line.startswith("cms\t")]
    assert code == 0 and line[1:3] == ["publisher", "world"] and line[4] == "never", listed
    assert 86_390 <= _epoch(line[5]) - time.time() <= 86_400, listed  # the default grace
    cache = key_cache(service)
    for key in (old, new):
        r = await service.http.post(WORLD, json={"text": "both"}, headers=service.auth(key))
        assert r.status_code == 201, r.text
        assert cache.get(digest_of(key)) is not None
    assert await keys.revoke("cms") is True
    started = time.monotonic()
    while cache.get(digest_of(old)) is not None or cache.get(digest_of(new)) is not None:
        assert time.monotonic() - started < REVOKE_BOUND, "the revoke never reached the cache"
        await asyncio.sleep(0.01)
    for key in (old, new):
        r = await service.http.post(WORLD, json={"text": "gone"}, headers=service.auth(key))
        assert r.status_code == 401 and "unknown or was revoked" in r.text
    assert not [k for k in await keys.list() if k.name == "cms"]
    assert await keys.revoke("cms") is False


async def test_a_rotation_with_no_grace_refuses_the_old_secret_at_once(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    old = await keys.create("leaked", ["world"])
    r = await service.http.post(WORLD, json={"text": "x"}, headers=service.auth(old))
    assert r.status_code == 201
    await keys.rotate("leaked", grace=0)
    r = await service.http.post(WORLD, json={"text": "x"}, headers=service.auth(old))
    assert r.status_code == 401 and "'leaked' was rotated at" in r.json()["detail"], r.text


async def test_the_store_refuses_what_makes_no_key(redis_client: aioredis.Redis) -> None:
    keys = KeyStore(redis_client)
    with pytest.raises(KeyAdminError, match="An admin key is for every channel"):
        await keys.create("boss", ["world"], role="admin")
    with pytest.raises(KeyAdminError, match="not a role"):
        await keys.create("who", ["world"], role="owner")
    with pytest.raises(KeyAdminError, match="Give at least one --channel"):
        await keys.create("site", [], role="reader")
    with pytest.raises(KeyAdminError, match="lifetime"):
        await keys.create("never", ["world"], expires_in=0)
    admin = await keys.create("boss", ["*"], role="admin")
    assert (await keys.authenticate(admin)) is not None
    assert [k.channels for k in await keys.list()] == [("*",)]
    with pytest.raises(KeyAdminError, match="There is no key named 'nobody'"):
        await keys.rotate("nobody")
    with pytest.raises(KeyAdminError, match="grace"):
        await keys.rotate("boss", grace=-1)
    await keys.create("brief", ["world"], expires_in=0.2)
    await asyncio.sleep(0.25)
    with pytest.raises(KeyAdminError, match=r"expired at .* create a new one"):
        await keys.rotate("brief")


async def test_the_cli_creates_lists_and_expires_keys(
    service: Service, redis_server: EmbeddedRedis
) -> None:
    env = {"REDIS_URL": redis_server.url}
    code, out = await ticker_cli("keys", "create", "--name", "boss", "--role", "admin",
                                 "--expires-in", "3s", env=env)
    assert code == 0 and "Created admin key 'boss' for every channel" in out, out
    key = out.splitlines()[0]
    code, out = await ticker_cli("keys", "list", env=env)
    lines = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert code == 0 and lines["test"][1:3] == ["publisher", "*"], out
    _, role, channels, created, expires, grace = lines["boss"]
    assert (role, channels, grace) == ("admin", "*", "-"), out
    assert 2.5 <= _epoch(expires) - _epoch(created) <= 3.5, out
    assert "tk_" not in out
    r = await service.http.post(WORLD, json={"text": "x"}, headers=service.auth(key))
    assert r.status_code == 201, r.text  # (two CLI runs take about a second of its 3)
    await asyncio.sleep(max(0.0, _epoch(expires) - time.time()) + 0.05)
    r = await service.http.post(WORLD, json={"text": "x"}, headers=service.auth(key))
    assert r.status_code == 401 and f"'boss' expired at {expires}" in r.text, r.text


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--name", "a", "--channel", "world", "--expires-in", "90x"],
     "argument --expires-in: '90x' is not a duration: write a whole number and a unit, s, m, "
     "h or d (e.g. 45s, 30m, 12h, 90d), from 1s to 3650d."),
    (["create", "--name", "a", "--channel", "world", "--expires-in", "0s"],
     "argument --expires-in: '0s' is out of bounds: give a duration from 1s to 3650d."),
    (["create", "--name", "a", "--channel", "world", "--expires-in", "1h30m"],
     "is not a duration"),
    (["create", "--name", "a", "--channel", "world", "--role", "owner"],
     "argument --role: invalid choice: 'owner'"),
    (["rotate", "a", "--grace", "31d"],
     "argument --grace: '31d' is out of bounds: give a duration from 0s to 30d."),
])
def test_the_cli_refuses_bad_durations_and_roles_with_the_format(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cli_says_what_to_do_when_a_key_cannot_be_made(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert main(["keys", "create", "--name", "cli-boss", "--role", "admin",
                 "--channel", "world"]) == 1
    assert "An admin key is for every channel: leave out --channel" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "cli-site", "--role", "reader"]) == 1
    assert "Give at least one --channel" in capsys.readouterr().err
    assert main(["keys", "rotate", "cli-nobody"]) == 1
    assert "There is no key named 'cli-nobody' ('ticker keys list'" in capsys.readouterr().err


def test_the_rotate_help_gives_the_default_grace(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["keys", "rotate", "--help"])
    out = capsys.readouterr().out
    assert "default 24h" in out and "--grace 0s" in out


async def test_migrate_copies_roles_expiry_and_secrets_in_their_grace(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    """``ticker migrate`` copies the key records whole: on the destination every secret
    (a rotated one in its grace included) authenticates with its role and expiry, and a
    revoke there still removes them all."""
    keys = KeyStore(redis_client)
    site = await keys.create("site", ["world"], role="reader", expires_in=3600)
    boss = await keys.create("boss", [], role="admin")
    new, _ = await keys.rotate("boss", grace=3600)
    target = aioredis.Redis.from_url(redis_server.url, db=1)
    try:
        await target.flushdb()
        copied = await migrate(redis_client, SINGLE, target, SINGLE)
        assert copied.api_keys == 3
        moved = KeyStore(target)
        assert await moved.list() == await keys.list()
        for secret, role in ((site, "reader"), (boss, "admin"), (new, "admin")):
            found = await moved.authenticate(secret)
            assert found is not None and found.role == role and found.ended(time.time()) is None
        assert await moved.revoke("boss") is True
        assert await moved.authenticate(boss) is None and await moved.authenticate(new) is None
    finally:
        await target.flushdb()
        await target.aclose()



async def test_a_rotation_or_revoke_raced_by_a_rotation_reads_again(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reads the name's records, then swaps them only if the name's current secret
    is still the one it read, else reads again: a rotation made (by another process)
    between the read and the swap is neither lost nor left alive by a revoke."""
    keys = KeyStore(redis_client)
    other = KeyStore(redis_client)
    first = await keys.create("cms", ["world"])
    raced: list[str] = []
    read = keys._records

    async def read_then_race(name: str) -> Any:
        found = await read(name)
        if len(raced) < 1:
            raced.append((await other.rotate(name, 60))[0])
        return found

    monkeypatch.setattr(keys, "_records", read_then_race)
    mine, _ = await keys.rotate("cms", 60)
    current = await redis_client.hget("ticker:apikey-names", "cms")
    assert current == digest_of(mine).encode()
    for secret in (first, raced[0], mine):  # both old secrets in their grace
        found = await keys.authenticate(secret)
        assert found is not None and found.ended(time.time()) is None
    raced.clear()
    assert await keys.revoke("cms") is True
    assert len(raced) == 1  # a fourth secret came between the revoke's read and its swap
    assert not [k for k in await keys.list() if k.name == "cms"]
    assert await redis_client.hget("ticker:apikey-names", "cms") is None
