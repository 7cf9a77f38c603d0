"""``GET /v1/keys/self``, which the editor console signs in with (docs/console.md)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.conftest import Service
from ticker.auth import KeyStore


async def test_keys_self_describes_the_key_but_never_its_secret(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    desk = await keys.create("desk", ["world", "sport"], expires_in=3600)
    r = await service.http.get("/v1/keys/self", headers=service.auth(desk))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["name"] == "desk" and body["role"] == "publisher"
    assert body["channels"] == ["sport", "world"]
    assert body["actions"] == ["publish", "correct", "retract", "pin", "history"]
    assert body["expires_at"] and body["valid_until"] is None
    assert desk not in r.text and "digest" not in body

    admin = await keys.create("ops", [], role="admin")
    body = (await service.http.get("/v1/keys/self", headers=service.auth(admin))).json()
    assert body["channels"] == ["*"] and "administer" in body["actions"]
    reader = await keys.create("site", ["world"], role="reader")
    body = (await service.http.get("/v1/keys/self", headers=service.auth(reader))).json()
    assert body["role"] == "reader" and body["actions"] == ["read", "mint-token"]


async def test_keys_self_refuses_a_missing_bad_revoked_or_expired_key(
    service: Service, redis_client: aioredis.Redis
) -> None:
    keys = KeyStore(redis_client)
    r = await service.http.get("/v1/keys/self")
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    r = await service.http.get("/v1/keys/self", headers=service.auth("tk_nope"))
    assert r.status_code == 401 and r.json()["detail"] == "This API key is unknown or was revoked."
    gone = await keys.create("gone", ["world"])
    await keys.revoke("gone")
    r = await service.http.get("/v1/keys/self", headers=service.auth(gone))
    assert r.status_code == 401 and "unknown or was revoked" in r.json()["detail"]
    short = await keys.create("short", ["world"], expires_in=0.2)
    await asyncio.sleep(0.3)
    r = await service.http.get("/v1/keys/self", headers=service.auth(short))
    assert r.status_code == 401 and "'short' expired at" in r.json()["detail"]
    assert r.headers["content-type"] == "application/problem+json"
