"""API keys for publishing, and the Origin allowlist for browsers.

A key is ``tk_`` plus 43 random URL-safe characters (256 bits). Only its SHA-256 digest
is stored: a slow password hash adds nothing for a random key of that length. Keys are
found by digest and the digest is compared again with ``hmac.compare_digest``::

    ticker:apikeys        hash: digest -> {"name", "channels", "created_at"}
    ticker:apikey-names   hash: name -> digest

(On a Redis Cluster both carry the hash tag ``{ticker}``: ``ticker.keys``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from ticker.errors import ProblemError, TickerError
from ticker.keys import SINGLE, Layout
from ticker.models import CHANNEL_RE, now_rfc3339
from ticker.store import unavailable_as_error

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ANY_CHANNEL = "*"


class KeyAdminError(TickerError):
    """A key cannot be created or revoked as asked (the CLI prints the message)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    channels: tuple[str, ...]
    created_at: str
    digest: str

    def allows(self, channel: str) -> bool:
        return ANY_CHANNEL in self.channels or channel in self.channels


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, client: aioredis.Redis, layout: Layout = SINGLE) -> None:
        self.redis = client
        self.keys_hash = layout.api_keys
        self.names_hash = layout.api_key_names

    async def create(self, name: str, channels: Sequence[str]) -> str:
        if not NAME_RE.fullmatch(name):
            raise KeyAdminError(
                f"Key name {name!r} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'."
            )
        if not channels:
            raise KeyAdminError("Give at least one --channel (or --channel '*' for every channel).")
        for channel in channels:
            if channel != ANY_CHANNEL and not CHANNEL_RE.fullmatch(channel):
                raise KeyAdminError(
                    f"Channel {channel!r} is not a valid channel name: use lowercase letters, "
                    "digits and hyphens, or '*' for every channel."
                )
        key = "tk_" + secrets.token_urlsafe(32)
        digest = digest_of(key)
        record = orjson.dumps(
            {"name": name, "channels": sorted(set(channels)), "created_at": now_rfc3339()}
        )
        async with unavailable_as_error():
            if not await self.redis.hsetnx(self.names_hash, name, digest):
                raise KeyAdminError(
                    f"A key named {name!r} already exists. Revoke it first "
                    f"('ticker keys revoke {name}') or choose another name."
                )
            await self.redis.hset(self.keys_hash, digest, record)
        return key

    async def list(self) -> list[ApiKey]:
        async with unavailable_as_error():
            records: Any = await self.redis.hgetall(self.keys_hash)
        keys = [_key(digest.decode(), raw) for digest, raw in records.items()]
        return sorted(keys, key=lambda k: k.name)

    async def revoke(self, name: str) -> bool:
        async with unavailable_as_error():
            digest = await self.redis.hget(self.names_hash, name)
            if digest is None:
                return False
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self.keys_hash, digest)
                pipe.hdel(self.names_hash, name)
                await pipe.execute()
        return True

    async def authenticate(self, key: str) -> ApiKey | None:
        digest = digest_of(key)
        async with unavailable_as_error():
            raw: Any = await self.redis.hget(self.keys_hash, digest)
        if raw is None:
            return None
        found = _key(digest, raw)
        return found if hmac.compare_digest(found.digest, digest) else None


def _key(digest: str, raw: bytes) -> ApiKey:
    record = orjson.loads(raw)
    return ApiKey(record["name"], tuple(record["channels"]), record["created_at"], digest)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or a 401 problem."""
    challenge = {"WWW-Authenticate": 'Bearer realm="ticker"'}
    if not authorization:
        raise ProblemError(
            "Publishing needs an API key: send 'Authorization: Bearer <key>' "
            "(create one with 'ticker keys create').",
            status=401, title="Unauthorized", type_suffix="unauthorized", headers=challenge,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            "The Authorization header must be 'Bearer <key>'.",
            status=401, title="Unauthorized", type_suffix="unauthorized", headers=challenge,
        )
    return token.strip()


async def require_key(keys: KeyStore, authorization: str | None, channel: str) -> ApiKey:
    """The API key of a request allowed to write to ``channel``, or a 401/403 problem."""
    token = bearer_token(authorization)
    found = await keys.authenticate(token) if len(token) <= 256 else None
    if found is None:
        raise ProblemError(
            "This API key is unknown or was revoked.",
            status=401, title="Unauthorized", type_suffix="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="ticker", error="invalid_token"'},
        )
    if not found.allows(channel):
        raise ProblemError(
            f"API key {found.name!r} may not publish to channel {channel!r}.",
            status=403, title="Forbidden", type_suffix="forbidden",
        )
    return found


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """Browsers send Origin; other clients may not. Without one there is nothing to check."""
    if origin is None or ANY_CHANNEL in allowed:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}
