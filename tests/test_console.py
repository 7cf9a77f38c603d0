"""The editor console's HTTP side: ``GET /console`` under its own strict headers, its
files, and ``GET /v1/keys/self``, which the console signs in with (docs/console.md)."""

from __future__ import annotations

import asyncio
import re

import redis.asyncio as aioredis

from tests.conftest import Service
from ticker.auth import KeyStore
from ticker.routes import console


async def test_console_page_has_a_strict_csp_and_is_never_cached(service: Service) -> None:
    r = await service.http.get("/console")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == f"'self' ws://127.0.0.1:{service.port}"
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    # No inline script or style in the page, and its files are versioned links to here.
    page = r.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page
    assert not re.search(r"<[^>]*\s(on[a-z]+|style)=", page), "an inline handler or style"
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert scripts == [f"/console.js?v={console.asset('console.js').version}"]
    assert sheets == [f"/console.css?v={console.asset('console.css').version}"]
    for path, kind in ((scripts[0], "text/javascript"), (sheets[0], "text/css")):
        f = await service.http.get(path)
        assert f.status_code == 200 and f.headers["content-type"].startswith(kind)
        assert f.headers["x-content-type-options"] == "nosniff" and "etag" in f.headers


async def test_the_csp_names_the_websocket_of_public_url() -> None:
    assert "connect-src 'self' wss://ticker.example.org;" in console.console_csp(
        "https://ticker.example.org"
    )


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
    assert body["actions"] == ["publish", "correct", "retract", "pin", "history", "read"]
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
