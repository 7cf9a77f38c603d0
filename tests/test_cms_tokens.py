"""Reader tokens signed by a site's CMS with its own key (ES256, RS256), verified with the
public keys of the setting ``reader_token_public_keys`` (``ticker.jwks``,
``ticker.tokens``), against a real uvicorn and a real Redis.

Keys are made here with ``cryptography`` (EC P-256, RSA 2048) and the service is started
with their JWK Set. Covered: a CMS token opens a private channel on every read path (the
WebSocket subscribe, the event stream with the header or ``?token=``, the list); what is
refused and with which code (another key with the same kid, an unknown kid, HS256 with
the public key as its secret, another asymmetric algorithm than the key's, ``none``,
expired, another channel); a live expiry and an exact resume with a new CMS token; the
CLI's listing and its refusal to revoke a public key; and every mistake in the setting
refused at start with a sentence."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import Service
from tests.test_auth import ticker_cli
from tests.test_sse import open_stream
from tests.test_tokens import _bearer, _mint, _private, expires_live_then_resumes_exactly
from ticker import jwks
from ticker.config import Settings, load_settings
from ticker.embedded import EmbeddedRedis
from ticker.errors import ConfigError
from ticker.tokens import AUDIENCE, CMS_KID

REPO = Path(__file__).resolve().parent.parent
PREMIUM = "/v1/channels/premium"
EC_KID, RSA_KID = "cms-ec-2026-01", "cms-rsa-2026-01"

EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())  # an attacker's, claiming EC_KID
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(params=["ticker", "asgi"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str,
               **extra: Any) -> dict[str, Any]:
    """The public half of ``key`` as a JWK, as a CMS publishes it."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    else:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    return {**jwk, "kid": kid, "alg": alg, "use": "sig", **extra}


def private_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The whole key pair as a JWK: what an operator must never paste into the setting."""
    algorithm = ECAlgorithm if isinstance(key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    return {**algorithm.to_jwk(key, as_dict=True), "kid": kid}


JWKS = {"keys": [public_jwk(EC_KEY, EC_KID), public_jwk(RSA_KEY, RSA_KID)]}


def cms_token(key: Any, kid: str, alg: str, channels: list[str] | None = None,
              ttl: int = 60, **claims: Any) -> str:
    """A reader token as the CMS signs it (docs/security.md, "Tokens signed by your CMS")."""
    now = int(time.time())
    body = {"aud": AUDIENCE, "channels": channels or ["premium"], "iat": now,
            "exp": now + ttl, "sub": "reader-42", **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def es256(**claims: Any) -> str:
    return cms_token(EC_KEY, EC_KID, "ES256", **claims)


def rs256(**claims: Any) -> str:
    return cms_token(RSA_KEY, RSA_KID, "RS256", **claims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT made by hand (PyJWT refuses to HMAC with a PEM key: an attacker does not),
    HMAC-SHA256 with ``secret``, or unsigned when it is None."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _claims(**more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"aud": AUDIENCE, "channels": ["premium"], "iat": now, "exp": now + 60, **more}


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "cms-keys.json"
    path.write_bytes(orjson.dumps(JWKS))
    return path


@pytest.fixture
async def cms(serve_with: Any, jwks_file: Path, redis_client: aioredis.Redis
              ) -> AsyncIterator[tuple[Service, dict[str, str]]]:
    """A service that trusts the CMS's keys (the setting names a file), with a private
    channel 'premium' holding one brief; and a reader key's headers for it."""
    async with serve_with(reader_token_public_keys=str(jwks_file)) as service:
        reader = await _private(service, redis_client)
        yield service, reader


# What a CMS token opens


async def test_an_es256_token_of_the_cms_opens_every_read_path(
    cms: tuple[Service, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = cms
    # The keys were parsed at start: nothing parses a key while requests are served.
    def no_parsing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a key was parsed while serving")
    monkeypatch.setattr(jwks, "PyJWK", no_parsing)
    monkeypatch.setattr(jwks, "load", no_parsing)
    assert service.app.state.services.tokens.public_keys.keys() == {EC_KID, RSA_KID}

    token = es256()
    r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["briefs"][0]["text"] == "for subscribers only"
    assert r.headers["cache-control"] == "private, no-store"
    r = await service.http.get(f"{PREMIUM}/briefs", params={"token": token})
    assert r.status_code == 200, r.text

    sub = await service.subscriber()
    await sub.subscribe("premium", token=token)
    snapshot = await sub.recv()
    assert snapshot["type"] == "snapshot", snapshot
    assert snapshot["briefs"][0]["text"] == "for subscribers only"
    (granted,) = service.hub.granted
    assert granted.grant.kid == CMS_KID + EC_KID and granted.grant.sub == "reader-42"
    await service.publish("premium", "more")
    assert (await sub.recv())["brief"]["text"] == "more"

    async with open_stream(service, "premium", headers=_bearer(token)) as stream:
        assert (await stream.next()).event == "snapshot"
    async with open_stream(service, "premium", token=token) as stream:
        assert (await stream.next()).event == "snapshot"

    # A reader that may have missed doorbell entries checks the store's secrets of its
    # live subscriptions again; a CMS key is not one of them and its subscription goes on.
    service.hub.secrets_unknown()
    await asyncio.sleep(0.1)
    await service.publish("premium", "still open")
    assert (await sub.recv())["brief"]["text"] == "still open"
    await sub.close()


async def test_an_rs256_token_of_the_cms_opens_the_channel(
    cms: tuple[Service, dict[str, str]]
) -> None:
    service, _ = cms
    token = rs256()
    r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
    assert r.status_code == 200, r.text
    sub = await service.subscriber()
    await sub.subscribe("premium", token=token)
    assert (await sub.recv())["type"] == "snapshot"
    await sub.close()
    async with open_stream(service, "premium", token=token) as stream:
        assert (await stream.next()).event == "snapshot"


async def test_ticker_still_mints_and_accepts_its_own_tokens_beside_the_cms(
    cms: tuple[Service, dict[str, str]]
) -> None:
    service, reader = cms
    minted = await _mint(service, reader)
    header = jwt.get_unverified_header(minted)
    assert header["alg"] == "HS256" and header["kid"].startswith("s")
    for token in (minted, es256(), rs256()):
        r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
        assert r.status_code == 200, r.text


# What is refused


async def test_cms_tokens_are_refused_with_the_right_code(
    cms: tuple[Service, dict[str, str]]
) -> None:
    service, _ = cms
    now = int(time.time())
    ec_pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ec_jwk = orjson.dumps(public_jwk(EC_KEY, EC_KID))
    hs256 = {"alg": "HS256", "typ": "JWT"}
    cases: dict[str, tuple[str, int, str]] = {
        "another key, same kid": (cms_token(OTHER_EC_KEY, EC_KID, "ES256"), 401, "invalid_token"),
        "unknown kid": (cms_token(EC_KEY, "cms-retired", "ES256"), 401, "token_revoked"),
        "no kid": (jwt.encode(_claims(), EC_KEY, algorithm="ES256"), 401, "invalid_token"),
        # Algorithm confusion: HS256 with the public key (known to all) as the secret.
        "HS256 with the EC PEM": (hand_signed({**hs256, "kid": EC_KID}, _claims(), ec_pem),
                                  401, "invalid_token"),
        "HS256 with the RSA PEM": (hand_signed({**hs256, "kid": RSA_KID}, _claims(), rsa_pem),
                                   401, "invalid_token"),
        "HS256 with the JWK": (hand_signed({**hs256, "kid": EC_KID}, _claims(), ec_jwk),
                               401, "invalid_token"),
        "RS256 on the EC kid": (cms_token(RSA_KEY, EC_KID, "RS256"), 401, "invalid_token"),
        "ES256 on the RSA kid": (cms_token(EC_KEY, RSA_KID, "ES256"), 401, "invalid_token"),
        "ES384 on the EC kid": (cms_token(ec.generate_private_key(ec.SECP384R1()), EC_KID,
                                          "ES384"), 401, "invalid_token"),
        "none": (hand_signed({"alg": "none", "kid": EC_KID}, _claims(), None), 401,
                 "invalid_token"),
        "ES256 on a kid of ticker's": (cms_token(EC_KEY, "s0123456789ab", "ES256"), 401,
                                       "invalid_token"),
        "expired": (es256(exp=now - 30), 401, "token_expired"),
        "expired RS256": (rs256(exp=now - 30), 401, "token_expired"),
        "wrong audience": (es256(aud="someone-else"), 401, "invalid_token"),
        "no expiry": (jwt.encode({"aud": AUDIENCE, "channels": ["premium"]}, EC_KEY,
                                 algorithm="ES256", headers={"kid": EC_KID}), 401,
                      "invalid_token"),
        "wildcard": (es256(channels=["*"]), 401, "invalid_token"),
        "too large": (es256(sub="x" * 5000), 401, "invalid_token"),
        "another channel": (es256(channels=["sport"]), 403, "token_wrong_channel"),
        "another channel, RS256": (rs256(channels=["sport"]), 403, "token_wrong_channel"),
    }
    # The signature of a good token moved onto other claims (a wider list).
    head, _, signature = es256().split(".")
    cases["tampered claims"] = (
        f"{head}.{_b64(orjson.dumps(_claims(channels=['premium', 'sport'])))}.{signature}",
        401, "invalid_token")
    sub = await service.subscriber()
    for name, (token, status, code) in cases.items():
        r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(token))
        assert r.status_code == status, (name, r.text)
        problem = r.json()
        assert problem["type"].endswith(code.replace("_", "-")), (name, problem)
        assert problem["detail"][0].isupper() and problem["detail"].endswith("."), problem
        assert "for subscribers only" not in r.text
        if len(token) < 3000:  # (a larger one does not fit in a subscribe message)
            await sub.subscribe("premium", token=token)
            refused = await sub.recv()
            assert refused["type"] == "error" and refused["code"] == code, (name, refused)
        r = await service.http.get(f"{PREMIUM}/events", params={"token": token})
        assert r.status_code == status, (name, r.text)
    await sub.close()
    # The token of the CMS is refused where an API key is needed.
    r = await service.http.post(f"{PREMIUM}/briefs", json={"text": "x"}, headers=_bearer(es256()))
    assert r.status_code == 401, r.text


async def test_a_cms_token_expires_on_a_live_subscription_and_a_new_one_resumes_exactly(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    # The JWK Set given inline this time (the other tests name a file).
    async with serve_with(reader_token_public_keys=orjson.dumps(JWKS).decode()) as service:
        await _private(service, redis_client)

        async def from_the_cms() -> str:  # a new token from the site's CMS, RS256 this time
            return rs256()

        await expires_live_then_resumes_exactly(service, es256(ttl=2), from_the_cms)

        # An event stream likewise: close 4010, then Last-Event-ID with a new token.
        async with open_stream(service, "premium", token=rs256(ttl=2)) as stream:
            assert (await stream.next()).event == "snapshot"
            first = await service.publish("premium", "four")
            got = await stream.next()
            assert got.json()["brief"]["id"] == first["id"]
            assert (await stream.next(timeout=4)).event == "token-expiring"
            assert (await stream.until_end(timeout=4))[-1].json()["code"] == 4010
        missed = await service.publish("premium", "five")
        resume = {**_bearer(es256()), "Last-Event-ID": str(got.id)}
        async with open_stream(service, "premium", headers=resume) as stream:
            assert (await stream.next()).json()["recovered"] is True
            assert (await stream.next()).json()["brief"]["id"] == missed["id"]
            assert await stream.nothing_within(0.2)


# The CLI


async def test_the_cli_lists_the_public_kids_and_will_not_revoke_them(
    cms: tuple[Service, dict[str, str]], redis_server: EmbeddedRedis, jwks_file: Path,
    redis_client: aioredis.Redis,
) -> None:
    service, reader = cms
    await _mint(service, reader)  # one secret of ticker's in the store too
    env = {"REDIS_URL": redis_server.url, "TICKER_READER_TOKEN_PUBLIC_KEYS": str(jwks_file)}
    code, out = await ticker_cli("tokens", "list-secrets", env=env)
    assert code == 0, out
    assert f"{EC_KID}\t-\tpublic ES256 (EC P-256)" in out, out
    assert f"{RSA_KID}\t-\tpublic RS256 (RSA 2048 bits)" in out, out
    assert "\tcurrent" in out and "restart every node" in out, out
    assert '"x"' not in out and '"n"' not in out
    code, out = await ticker_cli("tokens", "revoke-secret", EC_KID, env=env)
    assert code == 1, out
    assert "remove it from that setting and restart every node" in out, out
    # Nothing was revoked: its tokens still open the channel.
    r = await service.http.get(f"{PREMIUM}/briefs", headers=_bearer(es256()))
    assert r.status_code == 200, r.text


async def test_serve_refuses_to_start_with_a_private_key_in_the_setting(tmp_path: Path) -> None:
    keys = {"keys": [private_jwk(EC_KEY, EC_KID)]}
    env = {**os.environ, "TICKER_READER_TOKEN_PUBLIC_KEYS": orjson.dumps(keys).decode(),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("TICKER_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ticker", "serve", "--port", "0", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out
    text = out.decode()
    assert text.startswith("ticker: Setting 'reader_token_public_keys': key 1 (kid "
                           f"'{EC_KID}') is a private key"), text
    assert "make a new key pair" in text and EC_KEY.private_numbers().private_value.to_bytes(
        32, "big").hex() not in text
    assert not (tmp_path / "var").exists()  # refused before anything was started


# The setting, checked at start


def _refused(value: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings({"TICKER_READER_TOKEN_PUBLIC_KEYS": value})
    return str(info.value)


def _set(*keys: Any) -> str:
    return orjson.dumps({"keys": list(keys)}).decode()


def test_the_setting_takes_a_jwk_set_inline_or_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = load_settings({"TICKER_READER_TOKEN_PUBLIC_KEYS": orjson.dumps(JWKS).decode()})
    assert {k: (v.algorithm, v.description) for k, v in inline.public_keys.items()} == {
        EC_KID: ("ES256", "EC P-256"), RSA_KID: ("RS256", "RSA 2048 bits")}
    assert inline.public_keys is inline.public_keys  # parsed once, at load
    # A path in the configuration file, relative to the working directory.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cms.json").write_bytes(orjson.dumps(JWKS))
    config = tmp_path / "ticker.toml"
    config.write_text('[ticker]\nreader_token_public_keys = "keys/cms.json"\n')
    from_file = load_settings({}, config)
    assert from_file.reader_token_public_keys == "keys/cms.json"
    assert from_file.public_keys.keys() == {EC_KID, RSA_KID}
    # The JWK Set itself in the file, as a TOML literal string; alg and use may be left out.
    bare = {k: v for k, v in public_jwk(EC_KEY, EC_KID).items() if k not in ("alg", "use")}
    config.write_text(f"reader_token_public_keys = '''{_set(bare)}'''\n")
    assert load_settings({}, config).public_keys[EC_KID].algorithm == "ES256"
    # Empty: no key; the settings compare as before (the parsed keys are not a setting).
    assert load_settings({}).public_keys == {} and load_settings({}) == Settings()
    assert "reader_token_public_keys=''" in repr(load_settings({}))
    # with_overrides checks it again.
    with pytest.raises(ConfigError, match="no 'kid'"):
        Settings().with_overrides(reader_token_public_keys=_set({"kty": "EC"}))


def test_every_mistake_in_the_setting_is_refused_at_start_with_what_to_fix(
    tmp_path: Path,
) -> None:
    ec_public = public_jwk(EC_KEY, EC_KID)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    no_kid = {k: v for k, v in ec_public.items() if k != "kid"}
    # A private key: the operator pasted the wrong half of the pair.
    message = _refused(_set(private_jwk(EC_KEY, EC_KID)))
    assert f"(kid '{EC_KID}') is a private key (it has 'd')" in message
    assert "public key only" in message and "make a new key pair" in message
    assert str(EC_KEY.private_numbers().private_value) not in message
    message = _refused(_set(ec_public, private_jwk(RSA_KEY, RSA_KID)))
    assert f"key 2 (kid '{RSA_KID}') is a private key" in message
    assert "no 'kid'" in _refused(_set(no_kid))
    assert "kid of the key it signs with in each token's header" in _refused(_set(no_kid))
    assert "RSA key of 1024 bits: at least 2048" in _refused(_set(public_jwk(small, "old")))
    assert "is not valid JSON" in _refused('{"keys": [')
    assert "is not valid JSON" in _refused("{nope}")
    missing = tmp_path / "nowhere" / "cms.json"
    message = _refused(str(missing))
    assert f"names the file '{missing}', which does not exist" in message
    assert "JWK Set itself" in message
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("-----BEGIN PUBLIC KEY-----\n")
    assert f"The file '{bad_file}' (setting 'reader_token_public_keys') is not valid JSON" in (
        _refused(str(bad_file)))
    expectations = {
        "two keys with kid": _set(ec_public, {**public_jwk(RSA_KEY, EC_KID)}),
        "reserved for ticker's own signing secrets": _set({**ec_public, "kid": "config"}),
        "reserved for ticker": _set({**ec_public, "kid": "s0a1b2c3d4e5f"}),
        "reserved": _set({**ec_public, "kid": "key:abc"}),
        "only P-256 (ES256)": _set({**public_jwk(ec.generate_private_key(ec.SECP384R1()),
                                                "p384"), "alg": "ES384"}),
        "verifies ES256 only": _set({**ec_public, "alg": "RS256"}),
        "verifies RS256 only": _set({**public_jwk(RSA_KEY, RSA_KID), "alg": "PS256"}),
        "shared secret (kty 'oct')": _set({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
        "key type 'OKP'": _set({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AA"}),
        "not a valid EC public key": _set({**ec_public, "x": "AAAA"}),
        "use 'sig'": _set({**ec_public, "use": "enc"}),
        "holds one key, not a JWK Set": orjson.dumps(ec_public).decode(),
        "has no keys": _set(),
        "must be a JWK Set": '{"kty_list": []}',
        "not a JSON object": _set("a key"),
    }
    for expected, value in expectations.items():
        message = _refused(value)
        assert expected in message, (expected, message)
        assert message[0].isupper() and message.endswith("."), message
