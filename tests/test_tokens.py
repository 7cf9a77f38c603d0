"""Private channels and reader tokens (``ticker.tokens``, ``ticker.access``), against a
real uvicorn and a real Redis, on both ways subscribers are served (``ticker serve``'s own
WebSocket and event-stream protocols, and the ASGI endpoints).

Tokens: valid, expired, wrong signature, wrong channel, ``none``, tampered claims, wrong
audience, too large, in the wrong place. A private channel: refused on every read path
without a token and opened with one, never served from ``ticker.answers`` without one.
Live subscriptions: ``token-expiring``, then ``token_expired``, then an exact resume with
a new token; a revoked secret ends what it opened; minting by role."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service, until
from tests.test_auth import ticker_cli
from tests.test_sse import open_stream
from ticker import redact
from ticker.audit import AuditLog
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis
from ticker.errors import ConfigError
from ticker.keys import SINGLE
from ticker.tokens import AUDIENCE, SecretCache, Tokens

PREMIUM = "/v1/channels/premium"


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _key(redis_client: aioredis.Redis, role: str, channels: list[str],
               name: str | None = None) -> dict[str, str]:
    key = await KeyStore(redis_client).create(name or f"{role}-{len(channels)}-{channels[0]}",
                                              channels, role=role, by="test-setup")
    return {"Authorization": f"Bearer {key}"}


async def _private(service: Service, redis_client: aioredis.Redis) -> dict[str, str]:
    """A private channel 'premium' with one brief; returns a reader key's headers."""
    admin = await _key(redis_client, "admin", ["*"], "boss")
    r = await service.http.put(PREMIUM, json={"private": True, "title": "Premium"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["private"] is True
    await service.publish("premium", "for subscribers only")
    return await _key(redis_client, "reader", ["premium"], "site")


async def _mint(service: Service, reader: dict[str, str], channel: str = "premium",
                **body: Any) -> str:
    r = await service.http.post(f"/v1/channels/{channel}/tokens", json=body, headers=reader)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    token: str = r.json()["token"]
    return token


async def _secret(redis_client: aioredis.Redis, token: str) -> tuple[str, bytes]:
    kid = jwt.get_unverified_header(token)["kid"]
    raw = await redis_client.hget(SINGLE.token_secrets, kid)
    return kid, base64.urlsafe_b64decode(orjson.loads(raw)["secret"])


def _forge(secret: bytes, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"aud": AUDIENCE, "channels": ["premium"], "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, secret, algorithm="HS256", headers={"kid": kid})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_minted_token_holds_the_documented_claims(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    r = await service.http.post(f"{PREMIUM}/tokens", json={"ttl": 120, "sub": "reader-42"},
                                headers=reader)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"].startswith("s")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == AUDIENCE and claims["channels"] == ["premium"]
    assert claims["sub"] == "reader-42" and claims["exp"] - claims["iat"] == 120
    assert r.json()["expires_at"].endswith("Z")
    # An empty body: the default lifetime.
    r = await service.http.post(f"{PREMIUM}/tokens", headers=reader)
    assert r.status_code == 201, r.text
    claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600


async def test_minting_by_role(service: Service, redis_client: aioredis.Redis) -> None:
    await _private(service, redis_client)
    http = service.http
    admin = await _key(redis_client, "admin", ["*"], "boss2")
    other_reader = await _key(redis_client, "reader", ["sport"])
    publisher = await _key(redis_client, "publisher", ["sport"])
    own_publisher = await _key(redis_client, "publisher", ["premium"])
    assert (await http.post(f"{PREMIUM}/tokens", json={}, headers=admin)).status_code == 201
    for refused in (other_reader, publisher, own_publisher):
        r = await http.post(f"{PREMIUM}/tokens", json={}, headers=refused)
        assert r.status_code == 403, r.text
        assert r.json()["detail"][0].isupper()
    assert (await http.post(f"{PREMIUM}/tokens", json={})).status_code == 401
    reader = await _key(redis_client, "reader", ["premium"], "site2")
    for body, field in (({"ttl": 0}, "ttl"), ({"ttl": 86_401}, "ttl"), ({"ttl": "1h"}, "ttl"),
                        ({"sub": "x" * 201}, "sub"), ({"channels": ["x"]}, "channels")):
        r = await http.post(f"{PREMIUM}/tokens", json=body, headers=reader)
        assert r.status_code == 422 and r.json()["field"] == field, r.text


async def test_tokens_are_checked_and_refused_with_a_sentence(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    http = service.http
    url = f"{PREMIUM}/briefs"
    token = await _mint(service, reader)
    kid, secret = await _secret(redis_client, token)
    assert (await http.get(url, headers=_bearer(token))).status_code == 200
    # A publisher key reads its own private channels (the desk that writes them), not others.
    own_desk = await _key(redis_client, "publisher", ["premium"], "premium-desk")
    assert (await http.get(url, headers=own_desk)).status_code == 200
    sport_desk = (await _key(redis_client, "publisher", ["sport"], "sport-desk"))[
        "Authorization"].removeprefix("Bearer ")
    assert (await http.get(url, params={"token": token})).status_code == 200
    assert (await http.get(url, headers=reader)).status_code == 200  # a reader key, server-side

    head, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    tampered = base64.urlsafe_b64encode(orjson.dumps(
        {**claims, "channels": ["premium", "sport"]})).rstrip(b"=").decode()
    none = jwt.encode({**claims}, None, algorithm="none")  # type: ignore[arg-type]
    none_kid = base64.urlsafe_b64encode(b'{"alg":"none","kid":"' + kid.encode() + b'"}')
    cases = {
        "no token": (None, 401, "token-required"),
        "expired": (_forge(secret, kid, exp=int(time.time()) - 30), 401, "token-expired"),
        "wrong signature": (_forge(b"another secret that is long enough!!", kid), 401,
                            "invalid-token"),
        "wrong channel": (_forge(secret, kid, channels=["sport"]), 403, "token-wrong-channel"),
        "none algorithm": (none, 401, "invalid-token"),
        "none with kid": (none_kid.rstrip(b"=").decode() + "." + payload + ".", 401,
                          "invalid-token"),
        "tampered claims": (f"{head}.{tampered}.{signature}", 401, "invalid-token"),
        "wrong audience": (_forge(secret, kid, aud="somebody-else"), 401, "invalid-token"),
        "no expiry": (jwt.encode({"aud": AUDIENCE, "channels": ["premium"]}, secret,
                                 headers={"kid": kid}), 401, "invalid-token"),
        "wildcard": (_forge(secret, kid, channels=["*"]), 401, "invalid-token"),
        "unknown kid": (_forge(secret, "s000000000000"), 401, "token-revoked"),
        "too large": (_forge(secret, kid, sub="x" * 5000), 401, "invalid-token"),
        "garbage": ("not.a.jwt", 401, "invalid-token"),
        "other desk's key": (sport_desk, 403, "forbidden"),
    }
    for name, (bad, status, kind) in cases.items():
        r = await http.get(url, headers=_bearer(bad) if bad else {})
        assert r.status_code == status, (name, r.text)
        problem = r.json()
        assert problem["type"].endswith(kind), (name, problem)
        if kind != "forbidden":  # a reader token's refusal: the WebSocket's code too
            assert problem["code"] == kind.replace("-", "_"), (name, problem)
        assert problem["detail"][0].isupper() and problem["detail"].endswith("."), problem
        assert "for subscribers only" not in r.text
    # An API key in a URL is refused: URLs end up in logs.
    r = await http.get(url, params={"token": service.key})
    assert r.status_code == 401 and "Authorization header" in r.json()["detail"]
    # A reader token in the place of an API key opens nothing else.
    r = await http.post(url, json={"text": "x"}, headers=_bearer(token))
    assert r.status_code == 401, r.text
    r = await http.post(f"{PREMIUM}/tokens", json={}, headers=_bearer(token))
    assert r.status_code == 401, r.text


async def test_every_http_read_of_a_private_channel_needs_a_token(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    http = service.http
    token = await _mint(service, reader)
    listed = await http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
    brief = listed.json()["briefs"][0]
    cursor = listed.json()["cursor"]
    other = await _mint(service, await _key(redis_client, "admin", ["*"], "boss2"), "sport")
    paths = [
        f"{PREMIUM}/briefs", f"{PREMIUM}/briefs?since=0-0", f"{PREMIUM}/briefs?format=ninjs",
        f"{PREMIUM}/briefs/{brief['id']}", f"{PREMIUM}/briefs/{brief['id']}?format=ninjs",
        f"{PREMIUM}/feed.rss", f"{PREMIUM}/feed.atom", f"{PREMIUM}/feed.json",
        "/embed/premium", "/embed/premium?fragment=1", f"{PREMIUM}/briefs?since={cursor}",
    ]
    for path in paths:
        r = await http.get(path)
        assert r.status_code == 401, (path, r.text)
        assert "for subscribers only" not in r.text
        r = await http.get(path, headers=_bearer(token))
        assert r.status_code == 200, (path, r.text)
        assert r.headers["cache-control"] == "private, no-store", path
        sep = "&" if "?" in path else "?"
        assert (await http.get(f"{path}{sep}token={token}")).status_code == 200, path
        assert (await http.get(path, headers=_bearer(other))).status_code == 403, path
    # The channel's object says so; its name is listed, its briefs are not.
    info = (await http.get(PREMIUM)).json()
    assert info["private"] is True
    names = [c["name"] for c in (await http.get("/v1/channels")).json()["channels"]]
    assert "premium" in names


async def test_a_private_channel_is_never_answered_from_kept_answers(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    http = service.http
    token = await _mint(service, reader)
    for path in (f"{PREMIUM}/briefs", "/embed/premium", f"{PREMIUM}/feed.json"):
        for _ in range(2):
            assert (await http.get(path, headers=_bearer(token))).status_code == 200
        assert (await http.get(path)).status_code == 401, path
    state = service.hub.channels["premium"]
    assert not state.answers


async def test_a_channel_made_private_stops_serving_what_was_kept(
    service: Service, redis_client: aioredis.Redis
) -> None:
    await service.publish("world", "public for now")
    http = service.http
    for _ in range(3):
        assert (await http.get("/v1/channels/world/briefs")).status_code == 200
    await until(lambda: bool(service.hub.channels["world"].answers), "an answer kept")
    sub = await service.subscriber()
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    admin = await _key(redis_client, "admin", ["*"], "boss")
    r = await http.patch("/v1/channels/world", json={"private": True}, headers=admin)
    assert r.status_code == 200 and r.json()["private"] is True
    # Every process hears it through the doorbell; the live subscriber is ended too.
    message = await sub.recv()
    assert message["type"] == "error" and message["code"] == "token_required", message
    r = await http.get("/v1/channels/world/briefs")
    assert r.status_code == 401, r.text
    await sub.close()


async def test_websocket_subscriptions_need_a_token_for_that_channel(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    await service.publish("world", "public")
    token = await _mint(service, reader)
    sport = await _mint(service, await _key(redis_client, "admin", ["*"], "boss2"), "sport")
    sub = await service.subscriber()
    await sub.subscribe("premium")
    refused = await sub.recv()
    assert refused["type"] == "error" and refused["code"] == "token_required"
    assert refused["channel"] == "premium" and "private" in refused["message"]
    await sub.subscribe("premium", token=sport)
    refused = await sub.recv()
    assert refused["code"] == "token_wrong_channel", refused
    for bad in (12, "", ["a"]):
        await sub.subscribe("premium", token=bad)
        assert (await sub.recv())["code"] == "bad_token"
    # The connection goes on for its other channels, and opens premium with its token.
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    await sub.subscribe("premium", token=token)
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot" and snapshot["briefs"][0]["text"] == "for subscribers only"
    await service.publish("premium", "more")
    assert (await sub.recv())["brief"]["text"] == "more"
    await sub.close()


async def expires_live_then_resumes_exactly(
    service: Service, token: str, renewed: Callable[[], Awaitable[str]]
) -> None:
    """A subscription opened with ``token`` (2 s of life) on 'premium': a brief, then
    ``token-expiring`` 1 s before ``exp`` and ``token_expired`` at it; a brief while no
    token holds it; a subscribe with the token ``renewed()`` gives and the cursor resumes
    exactly (that brief, then live, nothing twice)."""
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    sub = await service.subscriber()
    await sub.subscribe("premium", token=token)
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot"
    first = await service.publish("premium", "one")
    got = await sub.recv()
    assert got["brief"]["id"] == first["id"]
    cursor, epoch = got["cursor"], snapshot["epoch"]
    warning = await sub.recv(timeout=4)
    assert warning == {"type": "token-expiring", "channel": "premium", "in": 1}
    assert time.time() < expires
    ended = await sub.recv(timeout=4)
    assert ended["type"] == "error" and ended["code"] == "token_expired", ended
    assert ended["channel"] == "premium" and time.time() >= expires - 0.05
    missed = await service.publish("premium", "two")  # while no token holds it
    assert await sub.nothing_within(0.2)
    await sub.subscribe("premium", token=await renewed(), since=cursor, epoch=epoch)
    assert (await sub.recv()) == {"type": "subscribed", "channel": "premium", "recovered": True,
                                  "epoch": epoch}
    again = await sub.recv()
    assert again["brief"]["id"] == missed["id"]
    last = await service.publish("premium", "three")
    assert (await sub.recv())["brief"]["id"] == last["id"]
    assert await sub.nothing_within(0.2)
    await sub.close()


async def test_a_token_expires_on_a_live_subscription_and_a_new_one_resumes_exactly(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    await expires_live_then_resumes_exactly(
        service, await _mint(service, reader, ttl=2), lambda: _mint(service, reader)
    )


async def test_a_revoked_secret_ends_what_it_opened(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    token = await _mint(service, reader)
    kid, _ = await _secret(redis_client, token)
    sub = await service.subscriber()
    await sub.subscribe("premium", token=token)
    assert (await sub.recv())["type"] == "snapshot"
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    await Tokens(redis_client, SINGLE, "", SecretCache()).revoke(kid, "test")
    ended = await sub.recv()
    assert ended["type"] == "error" and ended["code"] == "token_revoked", ended
    r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
    assert r.status_code == 401 and r.json()["type"].endswith("token-revoked")
    # The next mint makes a new secret, and the connection still has world.
    fresh = await _mint(service, reader)
    assert jwt.get_unverified_header(fresh)["kid"] != kid
    await service.publish("world", "still here")
    assert (await sub.recv())["brief"]["text"] == "still here"
    await sub.close()


async def test_event_streams_of_a_private_channel(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    http = service.http
    for headers, params in (({}, {}), (_bearer("bad.to.ken"), {}), ({}, {"token": "x.y.z"})):
        r = await http.get(f"{PREMIUM}/events", headers=headers, params=params)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    token = await _mint(service, reader, ttl=2)
    async with open_stream(service, "premium", headers=_bearer(token)) as stream:
        snapshot = await stream.next()
        assert snapshot.event == "snapshot"
        warning = await stream.next(timeout=4)
        assert warning.event == "token-expiring"
        rest = await stream.until_end(timeout=4)
        assert rest[-1].event == "close", rest
        assert rest[-1].json()["code"] == 4010 and "expired" in rest[-1].json()["reason"]
    async with open_stream(service, "premium", token=await _mint(service, reader)) as stream:
        assert (await stream.next()).event == "snapshot"


async def test_the_cli_makes_channels_private_and_rotates_and_revokes_secrets(
    service: Service, redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    env = {"REDIS_URL": redis_server.url}
    code, out = await ticker_cli("channels", "create", "premium", "--private", env=env)
    assert code == 0, out
    await service.publish("premium", "for subscribers only")
    assert (await service.http.get(f"{PREMIUM}/briefs")).status_code == 401
    code, out = await ticker_cli("channels", "list", env=env)
    assert code == 0 and "premium\t" in out and "\tprivate" in out, out
    reader = await _key(redis_client, "reader", ["premium"], "site")
    old = await _mint(service, reader)
    code, out = await ticker_cli("tokens", "rotate-secret", env=env)
    assert code == 0, out
    new_kid = out.split()[0]
    new = await _mint(service, reader)
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    old_kid = jwt.get_unverified_header(old)["kid"]
    code, out = await ticker_cli("tokens", "list-secrets", env=env)
    assert code == 0 and f"{new_kid}\t" in out and f"{old_kid}\t" in out, out
    assert "secret\"" not in out
    # Both work until the old one is revoked; then only the new one.
    for token in (old, new):
        assert (await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))).status_code == 200
    code, out = await ticker_cli("tokens", "revoke-secret", old_kid, env=env)
    assert code == 0 and "Revoked" in out, out
    await until(lambda: service.hub.secrets.get(old_kid) is None, "the secret forgotten")
    r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(old))
    assert r.status_code == 401, r.text
    assert (await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(new))).status_code == 200
    code, out = await ticker_cli("tokens", "revoke-secret", old_kid, env=env)
    assert code == 1 and "no signing secret" in out, out
    code, out = await ticker_cli("channels", "update", "premium", "--public", env=env)
    assert code == 0, out
    await until_ok(service, f"{PREMIUM}/briefs")
    actions = [e.action for e in await AuditLog(redis_client, SINGLE).read(20)]
    assert "token-secret.revoke" in actions and "token-secret.rotate" in actions


async def until_ok(service: Service, path: str) -> None:
    for _ in range(200):
        if (await service.http.get(path)).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} still refused")


async def test_tokens_in_urls_never_reach_the_access_log(
    service: Service, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    reader = await _private(service, redis_client)
    token = await _mint(service, reader)
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    # uvicorn's access logger does not propagate: caplog's handler goes on it directly.
    access = logging.getLogger("uvicorn.access")
    access.addHandler(caplog.handler)
    request.addfinalizer(lambda: access.removeHandler(caplog.handler))
    for path in (f"{PREMIUM}/briefs?token={token}", f"/embed/premium?fragment=1&token={token}"):
        assert (await service.http.get(path)).status_code == 200
    assert (await service.http.get(f"{PREMIUM}/briefs?token=bad.token.here")).status_code == 401
    text = caplog.text
    assert "token=[redacted]" in text, text
    assert token not in text and "bad.token.here" not in text
    assert redact.redact("/a?x=1&token=abc&y=2") == "/a?x=1&token=[redacted]&y=2"


def test_a_configured_secret_must_be_long_and_is_never_shown() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings(reader_token_secret="short").with_overrides()
    settings = Settings().with_overrides(reader_token_secret="s" * 40)
    assert "s" * 40 not in repr(settings)


async def test_a_reader_key_opens_a_live_subscription_until_it_is_revoked(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    key = reader["Authorization"].removeprefix("Bearer ")
    sub = await service.subscriber()
    await sub.subscribe("premium", token=key)
    assert (await sub.recv())["type"] == "snapshot"
    async with open_stream(service, "premium", headers=reader) as stream:
        assert (await stream.next()).event == "snapshot"
        await KeyStore(redis_client).revoke("site")
        ended = await sub.recv()
        assert ended["type"] == "error" and ended["code"] == "token_revoked", ended
        rest = await stream.until_end()
        assert rest[-1].event == "close" and rest[-1].json()["code"] == 4003, rest
    await sub.close()


async def test_an_event_stream_resumes_exactly_with_a_new_token_and_ends_if_made_private(
    service: Service, redis_client: aioredis.Redis
) -> None:
    reader = await _private(service, redis_client)
    async with open_stream(service, "premium", headers=_bearer(await _mint(service, reader,
                                                                           ttl=2))) as stream:
        assert (await stream.next()).event == "snapshot"
        first = await service.publish("premium", "one")
        got = await stream.next()
        assert got.json()["brief"]["id"] == first["id"]
        last_id = got.id
        assert (await stream.next(timeout=4)).event == "token-expiring"
        assert (await stream.until_end(timeout=4))[-1].json()["code"] == 4010
    missed = await service.publish("premium", "two")
    fresh = {**_bearer(await _mint(service, reader)), "Last-Event-ID": str(last_id)}
    async with open_stream(service, "premium", headers=fresh) as stream:
        assert (await stream.next()).json()["recovered"] is True
        assert (await stream.next()).json()["brief"]["id"] == missed["id"]
        assert await stream.nothing_within(0.2)
    # A public channel's stream (no token) ends when the channel becomes private.
    await service.publish("world", "public")
    async with open_stream(service, "world") as stream:
        assert (await stream.next()).event == "snapshot"
        admin = await _key(redis_client, "admin", ["*"], "boss2")
        r = await service.http.patch("/v1/channels/world", json={"private": True}, headers=admin)
        assert r.status_code == 200, r.text
        closing = (await stream.until_end())[-1]
        assert closing.event == "close" and closing.json()["code"] == 4001, closing
