"""Reader tokens: signed JWTs (PyJWT) that open private channels to one reader.

Why JWTs signed by ticker: a site's backend, which knows who is logged in and who pays,
asks ticker for a token (``POST /v1/channels/{channel}/tokens`` with a ``reader`` or
``admin`` key) and hands it to the reader's browser; ticker then checks it on every read
of a private channel without a Redis read per request and without knowing the site's
users. A token holds::

    header  {"alg": "HS256", "kid": "<the signing secret's id>", "typ": "JWT"}
    claims  {"aud": "ticker:reader", "channels": ["premium"], "exp": ..., "iat": ...,
             "sub"?: "reader-42"}

``aud`` is fixed so that no other JWT signed with the same secret (a site that reused it
for its sessions) opens anything; ``channels`` is a list of exact names (no wildcards, at
most ``MAX_CHANNELS``); ``exp`` is required. Tokens above ``MAX_TOKEN_BYTES`` are refused
before any decoding, and clocks may differ by ``LEEWAY`` seconds.

Or signed by the site's CMS with its own key: the setting ``reader_token_public_keys``
holds the CMS's public keys (a JWK Set, ``ticker.jwks``, parsed and checked once at
start), and a token whose header's ``kid`` names one of them is verified with that key
and with its one algorithm only: ES256 for an EC P-256 key, RS256 for an RSA key. The
claims are those above, checked alike, so that everything derived from the ``Grant``
(``token-expiring``, the end at ``exp``, the exact resume) works the same. ticker never
holds the CMS's private key and mints only HS256 tokens; a CMS key is revoked by removing
it from the setting and restarting every node (its grants carry the kid ``CMS_KID`` +
kid, which the store's doorbell never names). The header chooses nothing: the kid picks
the key and the key its algorithm (``HS256`` for ticker's secrets); ``none``, any other
algorithm, and HS256 with a public key's kid (the algorithm confusion that would make a
public key a shared secret) are refused before the signature is checked.

Signing secrets: the setting ``reader_token_secret`` (kid ``config``), the same on every
node; or, when it is empty, secrets kept in the store (``Layout.token_secrets``: kid ->
its record, and ``CURRENT`` -> the kid that signs), the first one made when a token is
first minted. ``rotate`` makes a new current secret (tokens of the old one stay valid
until they expire or it is revoked); ``revoke`` deletes one and rings every doorbell
(``BELL_KEY`` with ``secret_bell(kid)``): every serving process forgets it at once and
ends the live subscriptions it opened (``Hub.secret_revoked``). Both are audited in the
step that does them (``ticker.audit``: the rotation's ``MULTI``, the revoke's script
``_REVOKE``), before the doorbells ring. A process keeps the secrets it read for
``SECRET_CACHE_SECONDS`` at most, as a safety net. The kids ticker gives its secrets
(``jwks.RESERVED``) are refused for a CMS key, so a kid names one key.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from typing import Any

import jwt
import orjson
import redis.asyncio as aioredis

from ticker.audit import LUA_APPEND, AuditLog
from ticker.errors import ProblemError, TickerError
from ticker.jwks import NO_KEYS, PublicKeys, is_reserved
from ticker.keys import Layout
from ticker.models import CHANNEL_RE, millis_rfc3339
from ticker.store import BELL_KEY, BELL_MAXLEN, unavailable_as_error

AUDIENCE = "ticker:reader"
SECRET_ALGORITHM = "HS256"  # ticker's own secrets (and reader_token_secret)
ALGORITHMS = ("HS256", "ES256", "RS256")  # a CMS's keys: ES256 or RS256, one per key
MAX_TOKEN_BYTES = 4096
MAX_CHANNELS = 32
MAX_SUBJECT = 200
LEEWAY = 5.0  # seconds of clock difference between the minter and the servers
DEFAULT_TTL = 3600
MAX_TTL = 86_400
CONFIG_KID = "config"  # the kid of the secret from the setting reader_token_secret
KEY_KID = "key:"  # a Grant's kid when an API key opened the channel (then its digest)
CMS_KID = "cms:"  # a Grant's kid when a CMS's key signed the token (then that key's kid)
CURRENT = "~current"  # the field of the store's hash naming the kid that signs
SECRET_CACHE_SECONDS = 60.0
_BELL_PREFIX = "token-secret:"

# Deletes a signing secret (and ``CURRENT`` if it names it) with the audit entry of the
# revoke, if it exists (else 0, and no entry). KEYS: the secrets hash, the audit stream
# (both in {ticker}). ARGV: the kid, ``CURRENT``, then the entry (``AuditLog.script_args``).
_REVOKE = LUA_APPEND + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[2]) end
audit_append(KEYS[2], 3)
return 1
"""


class TokenRefused(ProblemError):
    """A token that opens nothing here: 401 (``code`` says why, for the WebSocket's
    ``error``), or 403 when it is valid but not for this channel."""

    status = 401
    title = "Unauthorized"
    type_suffix = "invalid-token"

    def __init__(self, detail: str, code: str = "invalid_token", status: int = 401) -> None:
        # ``code`` in the problem too: the WebSocket protocol's code for the same refusal,
        # so that a client reads one name on every transport.
        super().__init__(detail, status=status,
                         title="Unauthorized" if status == 401 else "Forbidden",
                         type_suffix=code.replace("_", "-"),
                         headers={"WWW-Authenticate": 'Bearer realm="ticker"'}
                         if status == 401 else None, code=code)
        self.code = code


class SecretError(TickerError):
    """A signing secret cannot be rotated or revoked as asked (the CLI prints it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token opens: its channels until ``expires`` (Unix seconds)."""

    channels: frozenset[str]
    expires: float
    kid: str
    sub: str | None


def secret_bell(kid: str) -> str:
    """What a revoke rings the doorbell with (among revoked key digests, which it can
    never equal: those are 64 hex digits)."""
    return _BELL_PREFIX + kid


def revoked_kid(bell_value: str) -> str | None:
    return bell_value[len(_BELL_PREFIX):] if bell_value.startswith(_BELL_PREFIX) else None


class SecretCache:
    """The signing secrets this process read, by kid, each for ``SECRET_CACHE_SECONDS``
    at most; the readers drop a revoked one when the doorbell names it."""

    def __init__(self) -> None:
        self._secrets: dict[str, tuple[float, bytes]] = {}

    def get(self, kid: str) -> bytes | None:
        entry = self._secrets.get(kid)
        if entry is None or entry[0] <= time.monotonic():
            self._secrets.pop(kid, None)
            return None
        return entry[1]

    def put(self, kid: str, secret: bytes) -> None:
        if len(self._secrets) > 1000:
            self._secrets.clear()
        self._secrets[kid] = (time.monotonic() + SECRET_CACHE_SECONDS, secret)

    def forget(self, kid: str | None = None) -> None:
        """Drop ``kid`` (None: every secret)."""
        if kid is None:
            self._secrets.clear()
        else:
            self._secrets.pop(kid, None)


def check_ttl(value: Any) -> int:
    if value is None:
        return DEFAULT_TTL
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL:
        raise ProblemError(
            f"'ttl' must be a whole number of seconds from 1 to {MAX_TTL} (default {DEFAULT_TTL}).",
            status=422, title="Invalid token request", type_suffix="invalid-token-request",
            field="ttl",
        )
    return value


def check_subject(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SUBJECT or not value.isprintable():
        raise ProblemError(
            f"'sub' must be printable text of 1 to {MAX_SUBJECT} characters (who the reader is "
            "on your site), or left out.",
            status=422, title="Invalid token request", type_suffix="invalid-token-request",
            field="sub",
        )
    return value


class Tokens:
    """Minting and checking reader tokens, with the signing secrets of a store (or of
    the setting ``reader_token_secret``), and checking those of a CMS with its public
    keys (``public_keys``, from ``reader_token_public_keys``)."""

    def __init__(self, client: aioredis.Redis, layout: Layout, configured: str,
                 cache: SecretCache, public_keys: PublicKeys = NO_KEYS) -> None:
        self.redis = client
        self.layout = layout
        self.hash = layout.token_secrets
        self.configured = configured.encode() if configured else None
        self.cache = cache
        self.public_keys = public_keys  # parsed once, with the settings (ticker.jwks)
        self.audit = AuditLog(client, layout)
        self._revoke = client.register_script(_REVOKE)

    # Signing

    async def mint(self, channels: list[str], ttl: int, sub: str | None) -> tuple[str, float]:
        """A token opening ``channels`` for ``ttl`` seconds, and when it expires."""
        kid, secret = await self._signing()
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": AUDIENCE, "channels": channels, "iat": now, "exp": now + ttl,
        }
        if sub is not None:
            claims["sub"] = sub
        token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})
        return token, float(now + ttl)

    async def _signing(self) -> tuple[str, bytes]:
        if self.configured is not None:
            return CONFIG_KID, self.configured
        async with unavailable_as_error():
            current: Any = await self.redis.hget(self.hash, CURRENT)
            if current is None:
                await self._new_secret(only_if_none=True)
                current = await self.redis.hget(self.hash, CURRENT)
        kid = current.decode()
        secret = await self._secret(kid)
        if secret is None:  # revoked between the two reads: make another
            await self._new_secret(only_if_none=False)
            return await self._signing()
        return kid, secret

    async def _new_secret(self, only_if_none: bool, by: str | None = None) -> str:
        """A new secret, made current (``only_if_none``: only if none is); with ``by``, a
        rotation, audited in the same transaction."""
        kid = "s" + secrets.token_hex(6)
        record = {"secret": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                  "created_at": millis_rfc3339(int(time.time() * 1000))}
        async with unavailable_as_error(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash, kid, orjson.dumps(record))
            if only_if_none:
                pipe.hsetnx(self.hash, CURRENT, kid)
            else:
                pipe.hset(self.hash, CURRENT, kid)
            if by is not None:
                self.audit.add(pipe, "token-secret.rotate", kid, by, {})
            await pipe.execute()
        return kid

    async def _secret(self, kid: str) -> bytes | None:
        if kid == CONFIG_KID:
            return self.configured
        secret = self.cache.get(kid)
        if secret is not None:
            return secret
        if len(kid) > 64:
            return None
        async with unavailable_as_error():
            raw: Any = await self.redis.hget(self.hash, kid)
        if raw is None or kid == CURRENT:
            return None
        secret = base64.urlsafe_b64decode(orjson.loads(raw)["secret"])
        self.cache.put(kid, secret)
        return secret

    # Checking

    async def verify(self, token: str, channel: str) -> Grant:
        """The grant of ``token`` if it is valid and opens ``channel``; else TokenRefused
        (401; 403 for a valid token of other channels), with a sentence that says why."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused(
                f"The reader token is longer than {MAX_TOKEN_BYTES} bytes: it is not a "
                "reader token.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRefused("The reader token is not a well-formed JWT.") from None
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRefused(
                f"The reader token's algorithm must be {', '.join(ALGORITHMS[:-1])} or "
                f"{ALGORITHMS[-1]}.")
        if not isinstance(kid, str):
            raise TokenRefused("The reader token has no 'kid' header naming its signing key.")
        public = self.public_keys.get(kid)
        key: bytes | jwt.PyJWK
        if public is not None:
            # A CMS's key verifies its one algorithm, never HS256 with the public key as
            # the secret (algorithm confusion), nor another asymmetric algorithm.
            if alg != public.algorithm:
                raise TokenRefused(
                    f"The reader token's algorithm must be {public.algorithm} for key {kid!r}.")
            key, algorithm, grant_kid = public.jwk, public.algorithm, CMS_KID + kid
        elif alg != SECRET_ALGORITHM and is_reserved(kid):
            raise TokenRefused(
                f"The reader token's algorithm must be {SECRET_ALGORITHM} for key {kid[:64]!r}.")
        elif alg != SECRET_ALGORITHM:
            raise TokenRefused(
                f"The reader token was signed with a key that is not (or no longer) configured "
                f"here (kid {kid[:64]!r}): get a new token.", "token_revoked")
        else:
            secret = await self._secret(kid)
            if secret is None:
                raise TokenRefused(
                    "The reader token was signed with a secret that was revoked or is unknown: "
                    "get a new token.", "token_revoked")
            key, algorithm, grant_kid = secret, SECRET_ALGORITHM, kid
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=AUDIENCE, leeway=LEEWAY,
                options={"require": ["exp", "aud", "channels"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("The reader token has expired: get a new one.",
                               "token_expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(f"The reader token is not a ticker reader token (its audience "
                               f"must be {AUDIENCE!r}).") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("The reader token's signature is not valid.") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(f"The reader token is not valid: {str(exc)[:120]}.") from None
        names = claims["channels"]
        if (not isinstance(names, list) or not 1 <= len(names) <= MAX_CHANNELS
                or not all(isinstance(n, str) and CHANNEL_RE.fullmatch(n) for n in names)):
            raise TokenRefused(
                f"The reader token's 'channels' must list 1 to {MAX_CHANNELS} channel names.")
        if channel not in names:
            raise TokenRefused(f"The reader token does not open channel {channel!r}.",
                               "token_wrong_channel", status=403)
        sub = claims.get("sub")
        return Grant(frozenset(names), float(claims["exp"]), grant_kid,
                     sub if isinstance(sub, str) else None)

    # Management (``ticker tokens ...``)

    async def rotate(self, by: str) -> str:
        """A new current signing secret; tokens of the others stay valid until revoked."""
        if self.configured is not None:
            raise SecretError(
                "The signing secret comes from the setting 'reader_token_secret': change it "
                "there (and restart every node) to rotate it.")
        return await self._new_secret(only_if_none=False, by=by)

    async def list(self) -> tuple[str | None, list[tuple[str, str]]]:
        """The current kid and every (kid, created_at) kept in the store."""
        async with unavailable_as_error():
            raw: Any = await self.redis.hgetall(self.hash)
        current = raw.pop(CURRENT.encode(), None)
        found = [(k.decode(), orjson.loads(v).get("created_at", "")) for k, v in raw.items()]
        return (current.decode() if current else None), sorted(found, key=lambda x: x[1])

    async def revoke(self, kid: str, by: str) -> None:
        """Delete a secret: every token it signed stops working at once, on every node,
        live subscriptions included (the doorbell tells them)."""
        if kid in self.public_keys:
            raise SecretError(
                f"{kid!r} is a public key of your CMS, from the setting "
                "'reader_token_public_keys': to revoke it, remove it from that setting and "
                "restart every node (its tokens are refused from then on, and the "
                "subscriptions they opened end with the restart).")
        async with unavailable_as_error():
            # The secret, CURRENT if it names it (the next mint makes a new one) and the
            # audit entry: one script, in {ticker}; then the doorbells.
            deleted = kid != CURRENT and await self._revoke(
                keys=[self.hash, self.audit.key],
                args=[kid, CURRENT, *self.audit.script_args("token-secret.revoke", kid, by, {})],
            )
            if not deleted:
                raise SecretError(f"There is no signing secret {kid[:64]!r} ('ticker tokens "
                                  "list-secrets' shows them).")
            for partition in range(self.layout.bells):
                await self.redis.xadd(self.layout.bell(partition), {BELL_KEY: secret_bell(kid)},
                                      maxlen=BELL_MAXLEN, approximate=True)
        self.cache.forget(kid)
