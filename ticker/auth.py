"""API keys: who may publish, read and administer, for how long, and the Origin
allowlist for browsers.

A key is ``tk_`` plus 43 random URL-safe characters (256 bits). Only its SHA-256 digest
is stored: a slow password hash adds nothing for a random key of that length. Keys are
found by digest and the digest is compared again with ``hmac.compare_digest``::

    ticker:apikeys        hash: digest -> {"name", "channels", "created_at", "role",
                                           "expires_at"?, "rotated_at"?, "valid_until"?}
    ticker:apikey-names   hash: name -> the digest of the name's current secret

(On a Redis Cluster both carry the hash tag ``{ticker}``: ``ticker.keys``.)

Each key has a role (``ROLE_ACTIONS``): a ``publisher`` writes (publish, correct, retract,
pin) on its channels and reads them when they are private (a desk follows what it
writes: the editor console's live list subscribes with the key), a ``reader`` reads
private channels server-side and mints reader tokens for its channels, an ``admin`` does
everything on every channel. ``ApiKey.may`` is the one place that decides; every
endpoint asks it through ``require_key``. A record written before roles existed has no
``role``: it is a ``publisher`` key, as it was.

A key may expire (``expires_at``). ``KeyStore.rotate`` gives a name a new secret and
keeps the old one valid for a grace period (``valid_until``; ``ROTATE_GRACE`` unless told
otherwise), so that every publisher can switch without a failed write; after it, the old
secret is refused with a sentence that says it was rotated and when. That record is kept
until the name's next rotation (or its revoke) so that the refusal can say so.

Every create, rotate and revoke is recorded in the audit stream (``ticker.audit``) with
who asked (``by``) and what changed, never a secret or a digest: by the same script that
does it (``_CREATE``, ``_SWAP``), only when it did it.

A serving process keeps the keys that authenticated in a ``KeyCache``, so that a publish
with a known key costs no Redis command for it. A revoke or a rotation rings every
doorbell with the digests it changed (``KeyStore.revoke``, ``KeyStore.rotate``); the
readers of every process, which follow the doorbells anyway, drop them from their cache
within their latency (milliseconds), and a reader that may have missed entries (it lost
its connection, or anchors again) empties the cache and keeps it off until it follows
again. The cache never serves a key past its expiry or its grace (``ApiKey.ends``, read
from the clock on every hit), and ``api_key_cache_seconds`` bounds the age of an entry
whatever happens, as a safety net.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis

from ticker.audit import LUA_APPEND, AuditLog
from ticker.durations import describe
from ticker.errors import ProblemError, TickerError
from ticker.keys import SINGLE, Layout
from ticker.models import CHANNEL_RE, millis_rfc3339
from ticker.store import ANY_KEY, BELL_KEY, BELL_MAXLEN, unavailable_as_error

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ANY_CHANNEL = "*"
KEY_CACHE_SIZE = 10_000  # keys kept per process; the oldest is dropped for a new one

# Lifetimes, in seconds. A rotated secret stays valid a day by default: long enough for
# every publisher to be redeployed with the new one (a daily release, a CMS restarted
# overnight), short enough that a secret left in an old deployment stops soon after.
# A secret that leaked is rotated with --grace 0s (or revoked).
ROTATE_GRACE = 86_400.0
MAX_GRACE = 30 * 86_400.0
MAX_LIFETIME = 3650 * 86_400.0  # ten years: an expiry further away is no expiry
SWAP_TRIES = 10  # rotations or revokes raced by another one before giving up
UNKNOWN_ACTOR = "unknown"  # the audit's ``by`` of an action whose caller did not say

Role = Literal["publisher", "admin", "reader"]
Action = Literal[
    "publish", "correct", "retract", "pin", "history", "read", "mint-token", "administer"
]
ROLES: tuple[Role, ...] = ("publisher", "admin", "reader")
ACTIONS: tuple[Action, ...] = (
    "publish", "correct", "retract", "pin", "history", "read", "mint-token", "administer"
)
# What each role may do. An admin does it on every channel; the others on theirs.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "publisher": frozenset({"publish", "correct", "retract", "pin", "history", "read"}),
    "reader": frozenset({"read", "mint-token"}),
    "admin": frozenset(ACTIONS),
}
# How refusals name an action: (on its own, on a channel).
_DOING: dict[str, tuple[str, str]] = {
    "publish": ("publish", "publish to channel"),
    "correct": ("correct briefs", "correct briefs on channel"),
    "retract": ("retract briefs", "retract briefs on channel"),
    "pin": ("pin briefs", "pin briefs on channel"),
    "history": ("read the history of briefs", "read the history of briefs on channel"),
    "read": ("read channels", "read channel"),
    "mint-token": ("mint reader tokens", "mint reader tokens for channel"),
    "administer": ("administer ticker", "administer channel"),
}


class KeyAdminError(TickerError):
    """A key cannot be created, rotated or revoked as asked (the CLI prints the message)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    channels: tuple[str, ...]
    created_at: str
    digest: str
    role: str = "publisher"  # a role this version does not know may do nothing
    expires_at: str | None = None  # RFC 3339
    rotated_at: str | None = None  # set on a secret that a rotation replaced...
    valid_until: str | None = None  # ...with the end of its grace
    ends: float | None = None  # the earliest of the two, in seconds since the epoch

    def allows(self, channel: str) -> bool:
        return ANY_CHANNEL in self.channels or channel in self.channels

    @property
    def retired(self) -> bool:
        """A secret replaced by a rotation (valid until ``valid_until``)."""
        return self.valid_until is not None

    def may(self, action: Action, channel: str | None = None) -> bool:
        """Whether this key's role allows ``action``, on ``channel`` if it is about one:
        the one place that decides, for every endpoint."""
        if action not in ROLE_ACTIONS.get(self.role, frozenset()):
            return False
        return channel is None or self.role == "admin" or self.allows(channel)

    def refusal(self, action: Action, channel: str | None = None) -> str | None:
        """Why this key may not do ``action`` (a sentence for a 403), or None if it may."""
        if self.may(action, channel):
            return None
        alone, on_channel = _DOING[action]
        if self.role not in ROLE_ACTIONS:
            return (f"API key {self.name!r} has the role {self.role!r}, which this version of "
                    "ticker does not know: it may do nothing here.")
        if action not in ROLE_ACTIONS[self.role]:
            able = " or ".join(r for r in ROLES if action in ROLE_ACTIONS[r])
            return (f"API key {self.name!r} is a {self.role} key: its role cannot {alone} "
                    f"(that takes a {able} key).")
        return f"API key {self.name!r} may not {on_channel} {channel!r}."

    def ended(self, now: float) -> str | None:
        """Why this key no longer authenticates at ``now`` (a sentence for a 401), or None."""
        if self.ends is None or now < self.ends:
            return None
        if self.expires_at is not None and _epoch(self.expires_at) <= self.ends:
            return (f"API key {self.name!r} expired at {self.expires_at}: ask an operator for "
                    "a new one ('ticker keys create').")
        return (f"API key {self.name!r} was rotated at {self.rotated_at}; this old secret "
                f"stopped working at {self.valid_until}: use the key's new secret.")


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _rfc3339(seconds: float) -> str:
    return millis_rfc3339(int(seconds * 1000))


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


class KeyCache:
    """The API keys that authenticated in this process, by digest, each for at most
    ``max_age`` seconds, ``max_size`` at most, and never past the key's own end (its
    expiry, or the grace of a rotated secret). Only keys that exist are kept: an unknown
    key costs a Redis read every time, so that a key created elsewhere works at once.

    Whoever follows the doorbells keeps it true (``ticker.reader``): ``forget`` for each
    revoked or rotated key the bell names; ``blind`` when a reader stops following its
    bell (then nothing is served or kept until it follows again, since it may miss
    revokes), and ``see`` once it follows again, from an anchor taken after anything it
    missed. A read from Redis is kept only if no revoke or blindness came while it was out
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
        key = entry[1]
        if entry[0] <= time.monotonic() or (key.ends is not None and key.ends <= time.time()):
            del self._keys[digest]
            return None
        return key

    def put(self, key: ApiKey, generation: int) -> None:
        """Keep ``key``, read from Redis when the cache was at ``generation`` (unless it
        has already ended: it is refused, and read again, every time)."""
        if generation != self.generation or self._blind:
            return
        if key.ends is not None and key.ends <= time.time():
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


# Creates a key, if its name is free (else 0), with its audit entry. KEYS: the names
# hash, the keys hash, the audit stream (all in {ticker}). ARGV: name, digest, record,
# then the audit entry (``AuditLog.script_args``).
_CREATE = LUA_APPEND + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
audit_append(KEYS[3], 4)
return 1
"""

# Changes the records of one name at once, with the audit entry of the change, if its
# current secret is still the one read (else 0, and nothing written: the caller reads
# again). KEYS: the names hash, the keys hash, the audit stream, and on one server the
# doorbell (on a Redis Cluster it is in another slot: rung afterwards).
# ARGV: name, its digest as read ('' for none), its new digest ('' to delete the name),
# the bell's MAXLEN (approximate, as every ring of the bell), the bell's field, n, then
# n pairs (digest, record or '' to delete), then the digests to ring the bell with, then
# the audit entry (its last AUDIT_ARGS: ``AuditLog.script_args``).
_SWAP = LUA_APPEND + """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  local digest, record = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  if record == '' then redis.call('HDEL', KEYS[2], digest)
  else redis.call('HSET', KEYS[2], digest, record) end
end
local audit = #ARGV - AUDIT_ARGS + 1
if KEYS[4] then
  for i = 7 + 2 * n, audit - 1 do
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', ARGV[5], ARGV[i])
  end
end
audit_append(KEYS[3], audit)
return 1
"""


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
        self.audit = AuditLog(client, layout)
        self._swap = client.register_script(_SWAP)
        self._create = client.register_script(_CREATE)

    async def create(
        self, name: str, channels: Sequence[str], role: str = "publisher",
        expires_in: float | None = None, *, by: str = UNKNOWN_ACTOR,
    ) -> str:
        """A new key (returned once; only its digest is kept). It rings no doorbell: no
        process keeps an unknown key in its cache, so a new key works everywhere at once.
        ``by``: who asked, for the audit stream (``ticker.audit``), as for every action.

        An admin key is for every channel: ``channels`` may be empty or ``['*']``, and
        anything else is refused rather than silently widened (whoever wrote
        ``--channel world`` for an admin key meant something else)."""
        if not NAME_RE.fullmatch(name):
            raise KeyAdminError(
                f"Key name {name!r} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'."
            )
        if role not in ROLES:
            raise KeyAdminError(f"Role {role!r} is not a role: use {', '.join(ROLES)}.")
        if role == "admin":
            if set(channels) - {ANY_CHANNEL}:
                raise KeyAdminError(
                    "An admin key is for every channel: leave out --channel (or give "
                    "--channel '*'), or create a publisher or reader key for those channels."
                )
            channels = [ANY_CHANNEL]
        if not channels:
            raise KeyAdminError("Give at least one --channel (or --channel '*' for every channel).")
        for channel in channels:
            if channel != ANY_CHANNEL and not CHANNEL_RE.fullmatch(channel):
                raise KeyAdminError(
                    f"Channel {channel!r} is not a valid channel name: use lowercase letters, "
                    "digits and hyphens, or '*' for every channel."
                )
        if expires_in is not None and not 0 < expires_in <= MAX_LIFETIME:
            raise KeyAdminError(
                f"A key's lifetime must be more than 0s and at most {describe(MAX_LIFETIME)}."
            )
        key = "tk_" + secrets.token_urlsafe(32)
        digest = digest_of(key)
        now = time.time()
        fields: dict[str, Any] = {
            "name": name, "channels": sorted(set(channels)), "created_at": _rfc3339(now),
            "role": role,
        }
        if expires_in is not None:
            fields["expires_at"] = _rfc3339(now + expires_in)
        details: dict[str, Any] = {
            k: fields[k] for k in ("role", "channels", "expires_at") if k in fields
        }
        entry = self.audit.script_args("key.create", name, by, details)
        async with unavailable_as_error():
            created = await self._create(
                keys=[self.names_hash, self.keys_hash, self.audit.key],
                args=[name, digest, orjson.dumps(fields), *entry],
            )
        if not created:
            raise KeyAdminError(
                f"A key named {name!r} already exists. Revoke it first "
                f"('ticker keys revoke {name}') or choose another name."
            )
        return key

    async def list(self) -> list[ApiKey]:
        """Every secret's record, current and rotated ones (``ApiKey.retired``), by name."""
        async with unavailable_as_error():
            records: Any = await self.redis.hgetall(self.keys_hash)
        keys = [_key(digest.decode(), raw) for digest, raw in records.items()]
        return sorted(keys, key=lambda k: (k.name, k.retired))

    async def rotate(
        self, name: str, grace: float = ROTATE_GRACE, *, by: str = UNKNOWN_ACTOR
    ) -> tuple[str, str]:
        """A new secret for ``name`` (returned once) with the same role, channels and
        expiry, and the end of the old secret's grace (RFC 3339): the old secret stays
        valid ``grace`` seconds more, then is refused as rotated. Rotated secrets of the
        name whose grace is over are deleted (the newest old one gives its message until
        the next rotation). Rings the doorbell with the old digest, so that no process
        serves it from its cache past its grace."""
        if not 0 <= grace <= MAX_GRACE:
            raise KeyAdminError(f"The grace must be from 0s to {describe(MAX_GRACE)}.")
        for _ in range(SWAP_TRIES):
            now = time.time()
            current, others = await self._records(name)
            if current is None:
                raise KeyAdminError(
                    f"There is no key named {name!r} ('ticker keys list' shows them)."
                )
            record = _record(current)
            if current.ends is not None and current.ends <= now:
                raise KeyAdminError(
                    f"Key {name!r} expired at {current.expires_at}: a rotation would not revive "
                    f"it. Revoke it ('ticker keys revoke {name}') and create a new one."
                )
            key = "tk_" + secrets.token_urlsafe(32)
            digest = digest_of(key)
            valid_until = _rfc3339(now + grace)
            old = {**record, "rotated_at": _rfc3339(now), "valid_until": valid_until}
            over = [(o.digest, b"") for o in others if o.ends is not None and o.ends <= now]
            writes = [(digest, orjson.dumps(record)), (current.digest, orjson.dumps(old)), *over]
            entry = self.audit.script_args(
                "key.rotate", name, by, {"grace_seconds": grace, "valid_until": valid_until}
            )
            if await self._swap_records(
                name, current.digest, digest, writes, [current.digest], entry
            ):
                return key, valid_until
        raise KeyAdminError(f"Key {name!r} kept changing while it was rotated: try again.")

    async def revoke(self, name: str, *, by: str = UNKNOWN_ACTOR) -> bool:
        """Delete every secret of the name (the current one and rotated ones still in
        their grace), and ring every doorbell with each digest, so that every serving
        process drops them from its cache (``KeyCache``) as soon as its readers read it.

        On one server the doorbell is rung in the same script as the deletion: a reader
        that reads the entry finds the key gone on its next read, and a reader that
        anchors after it (having maybe missed it) empties its cache. On a Redis Cluster
        the doorbells are in other slots than the key records (``{ticker}``), so they are
        rung right after the deletion: an entry is always read after the key is gone,
        never before. If this process dies between the two, the key stays cached (it can
        no longer authenticate anywhere else) for at most ``api_key_cache_seconds``, or
        until a reader anchors again."""
        for _ in range(SWAP_TRIES):
            current, others = await self._records(name)
            every = ([current] if current is not None else []) + [*others]
            if not every:
                return False
            digests = [k.digest for k in every]
            expected = current.digest if current is not None else ""
            entry = self.audit.script_args("key.revoke", name, by, {"secrets": len(digests)})
            if await self._swap_records(
                name, expected, "", [(d, b"") for d in digests], digests, entry
            ):
                return True
        raise KeyAdminError(f"Key {name!r} kept changing while it was revoked: try again.")

    async def _records(self, name: str) -> tuple[ApiKey | None, Sequence[ApiKey]]:
        """The name's current secret, and its other (rotated) ones."""
        async with unavailable_as_error():
            raw: Any = await self.redis.hget(self.names_hash, name)
            current_digest = raw.decode() if raw is not None else None
            records: Any = await self.redis.hgetall(self.keys_hash)
        current = None
        others: Sequence[ApiKey] = ()
        for digest, record in records.items():
            key = _key(digest.decode(), record)
            if key.name != name:
                continue
            if key.digest == current_digest:
                current = key
            else:
                others = (*others, key)
        return current, others

    async def _swap_records(
        self, name: str, expected: str, new: str, writes: Sequence[tuple[str, bytes]],
        ring: Sequence[str], entry: Sequence[Any],
    ) -> bool:
        """``_SWAP``, with the audit entry ``entry`` (``AuditLog.script_args``); then, on
        a Redis Cluster, every partition's doorbell rung."""
        layout = self.layout
        keys = [self.names_hash, self.keys_hash, self.audit.key]
        if not layout.clustered:
            keys.append(layout.bell())
        pairs = [part for write in writes for part in write]
        args = [name, expected, new, BELL_MAXLEN, BELL_KEY, len(writes), *pairs, *ring, *entry]
        async with unavailable_as_error():
            if not await self._swap(keys=keys, args=args):
                return False
            if layout.clustered:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for partition in range(layout.bells):
                        for digest in ring:
                            pipe.xadd(layout.bell(partition), {BELL_KEY: digest},
                                      maxlen=BELL_MAXLEN)
                    await pipe.execute()
        return True

    async def authenticate(self, key: str) -> ApiKey | None:
        """The key's record (which may have ended: ``ApiKey.ended``), or None if unknown."""
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
    expires_at = record.get("expires_at")
    valid_until = record.get("valid_until")
    ends = [_epoch(t) for t in (expires_at, valid_until) if t is not None]
    return ApiKey(
        record["name"], tuple(record["channels"]), record["created_at"], digest,
        role=record.get("role", "publisher"),  # written before roles: a publisher key
        expires_at=expires_at, rotated_at=record.get("rotated_at"), valid_until=valid_until,
        ends=min(ends) if ends else None,
    )


def _record(key: ApiKey) -> dict[str, Any]:
    """What a new secret of ``key``'s name is stored with: the same name, channels,
    creation, role and expiry."""
    record: dict[str, Any] = {
        "name": key.name, "channels": list(key.channels), "created_at": key.created_at,
        "role": key.role,
    }
    if key.expires_at is not None:
        record["expires_at"] = key.expires_at
    return record


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


async def require_key(
    keys: KeyStore, authorization: str | None, channel: str | None, action: Action
) -> ApiKey:
    """The API key of a request, allowed to do ``action`` on ``channel`` (None: an action
    on no channel in particular), or a 401 problem (no key, unknown, revoked, expired,
    rotated past its grace) or 403 (its role or its channels do not allow it)."""
    found = await authenticated(keys, authorization)
    authorize(found, action, channel)
    return found


async def authenticated(keys: KeyStore, authorization: str | None) -> ApiKey:
    """The request's API key, whatever its role may do, or a 401 problem (no key,
    unknown, revoked, expired, rotated past its grace): for an endpoint about the key
    itself (``GET /v1/keys/self``), which every valid key may read."""
    token = bearer_token(authorization)
    found = await keys.authenticate(token) if len(token) <= 256 else None
    ended = found.ended(time.time()) if found is not None else None
    if found is None or ended is not None:
        raise ProblemError(
            ended or "This API key is unknown or was revoked.",
            status=401, title="Unauthorized", type_suffix="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="ticker", error="invalid_token"'},
        )
    return found


def authorize(key: ApiKey, action: Action, channel: str | None) -> None:
    """A 403 problem unless ``key`` may do ``action`` on ``channel`` (``ApiKey.may``)."""
    refusal = key.refusal(action, channel)
    if refusal is not None:
        raise ProblemError(refusal, status=403, title="Forbidden", type_suffix="forbidden")


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """Browsers send Origin; other clients may not. Without one there is nothing to check."""
    if origin is None or ANY_CHANNEL in allowed:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}
