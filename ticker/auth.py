"""API keys for publishing, and the Origin allowlist for browsers.

A key is ``tk_`` plus 43 random URL-safe characters (256 bits). Only its SHA-256 digest
is stored: a slow password hash adds nothing for a random key of that length. Keys are
found by digest and the digest is compared again with ``hmac.compare_digest``::

    ticker:apikeys        hash: digest -> {"name", "channels", "created_at"}
    ticker:apikey-names   hash: name -> digest

(On a Redis Cluster both carry the hash tag ``{ticker}``: ``ticker.keys``.)

A serving process keeps the keys that authenticated in a ``KeyCache``, so that a publish
with a known key costs no Redis command for it. A revoke rings every doorbell with the
key's digest (``KeyStore.revoke``); the readers of every process, which follow the
doorbells anyway, drop it from their cache within their latency (milliseconds), and a
reader that may have missed entries (it lost its connection, or anchors again) empties
the cache and keeps it off until it follows again. ``api_key_cache_seconds`` bounds the
age of an entry whatever happens, as a safety net.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from ticker.errors import ProblemError, TickerError
from ticker.keys import SINGLE, Layout
from ticker.models import CHANNEL_RE, now_rfc3339
from ticker.store import ANY_KEY, BELL_KEY, BELL_MAXLEN, unavailable_as_error

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ANY_CHANNEL = "*"
KEY_CACHE_SIZE = 10_000  # keys kept per process; the oldest is dropped for a new one


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


class KeyCache:
    """The API keys that authenticated in this process, by digest, each for at most
    ``max_age`` seconds, ``max_size`` at most. Only keys that exist are kept: an unknown
    key costs a Redis read every time, so that a key created elsewhere works at once.

    Whoever follows the doorbells keeps it true (``ticker.reader``): ``forget`` for each
    revoked key the bell names; ``blind`` when a reader stops following its bell (then
    nothing is served or kept until it follows again, since it may miss revokes), and
    ``see`` once it follows again, from an anchor taken after anything it missed. A read
    from Redis is kept only if no revoke or blindness came while it was out
    (``generation``): a reply may come after the bell entry of a revoke it predates."""

    def __init__(self, max_age: float, max_size: int = KEY_CACHE_SIZE) -> None:
        self.max_age = max_age
        self.max_size = max_size
        self.generation = 0  # changes with every forget, blind and see
        self._keys: dict[str, tuple[float, ApiKey]] = {}  # digest -> (expiry, key)
        self._blind: set[int] = set()  # the readers (partitions) not following their bell

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, digest: str) -> ApiKey | None:
        entry = self._keys.get(digest)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._keys[digest]
            return None
        return entry[1]

    def put(self, key: ApiKey, generation: int) -> None:
        """Keep ``key``, read from Redis when the cache was at ``generation``."""
        if generation != self.generation or self._blind:
            return
        keys = self._keys
        if len(keys) >= self.max_size and key.digest not in keys:
            del keys[next(iter(keys))]  # the oldest entry
        keys[key.digest] = (time.monotonic() + self.max_age, key)

    def forget(self, digests: Iterable[str]) -> None:
        """Drop these keys (``ANY_KEY``: every key)."""
        self.generation += 1
        for digest in digests:
            if digest == ANY_KEY:
                self._keys.clear()
            else:
                self._keys.pop(digest, None)

    def blind(self, reader: int) -> None:
        """Reader ``reader`` stopped following its bell: empty, and off until it sees."""
        self.generation += 1
        self._blind.add(reader)
        self._keys.clear()

    def see(self, reader: int) -> None:
        """Reader ``reader`` follows its bell again, from an anchor taken now: what was
        kept before may have missed a revoke."""
        self.generation += 1
        self._blind.discard(reader)
        self._keys.clear()


class KeyStore:
    """The API keys of a store. ``cache``: a serving process's ``KeyCache``, which its
    readers keep true (``ticker.app``); without one, every check reads Redis."""

    def __init__(
        self, client: aioredis.Redis, layout: Layout = SINGLE, cache: KeyCache | None = None
    ) -> None:
        self.redis = client
        self.layout = layout
        self.keys_hash = layout.api_keys
        self.names_hash = layout.api_key_names
        self.cache = cache

    async def create(self, name: str, channels: Sequence[str]) -> str:
        """A new key (returned once; only its digest is kept). It rings no doorbell: no
        process keeps an unknown key in its cache, so a new key works everywhere at once."""
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
        """Delete the key, and ring every doorbell with its digest, so that every serving
        process drops it from its cache (``KeyCache``) as soon as its readers read it.

        On one server the doorbell is rung in the same transaction as the deletion: a
        reader that reads the entry finds the key gone on its next read, and a reader
        that anchors after it (having maybe missed it) empties its cache. On a Redis
        Cluster the doorbells are in other slots than the key records (``{ticker}``),
        so they are rung right after the deletion: an entry is always read after the key
        is gone, never before. If this process dies between the two, the key stays
        cached (it can no longer authenticate anywhere else) for at most
        ``api_key_cache_seconds``, or until a reader anchors again."""
        layout = self.layout
        async with unavailable_as_error():
            raw: Any = await self.redis.hget(self.names_hash, name)
            if raw is None:
                return False
            digest = raw.decode()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self.keys_hash, digest)
                pipe.hdel(self.names_hash, name)
                if not layout.clustered:
                    pipe.xadd(layout.bell(), {BELL_KEY: digest}, maxlen=BELL_MAXLEN)
                await pipe.execute()
            if layout.clustered:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for partition in range(layout.bells):
                        pipe.xadd(layout.bell(partition), {BELL_KEY: digest}, maxlen=BELL_MAXLEN)
                    await pipe.execute()
        return True

    async def authenticate(self, key: str) -> ApiKey | None:
        digest = digest_of(key)
        cache = self.cache
        generation = 0
        if cache is not None:
            cached = cache.get(digest)
            if cached is not None:
                return cached
            generation = cache.generation
        async with unavailable_as_error():
            raw: Any = await self.redis.hget(self.keys_hash, digest)
        if raw is None:
            return None
        found = _key(digest, raw)
        if not hmac.compare_digest(found.digest, digest):
            return None
        if cache is not None:
            cache.put(found, generation)
        return found


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
