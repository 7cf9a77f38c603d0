"""Where each piece of ticker's state lives in Redis: the key layout.

Two layouts, chosen by the store's URL (``Layout.for_url``):

**One server** (a single Redis, or a primary found through Sentinel): every key of a
channel carries the channel as its hash tag, and one doorbell serves every channel::

    ticker:{world}:log  ticker:{world}:briefs  ticker:{world}:meta  ticker:bell

**Redis Cluster** (``redis+cluster://``): a script may only touch keys of one hash slot,
and ``XREAD`` may only name keys of one slot, so the channels are spread over a fixed
number of *partitions* (setting ``redis_partitions``). A partition has a hash tag of its
own (chosen so that the partitions spread evenly over the 16,384 slots, and so over the
shards); a channel belongs to one partition (a hash of its name) and every key of the
channel carries the partition's tag, as does the partition's own doorbell::

    ticker:{p3.41}:log:world  ticker:{p3.41}:briefs:world  ticker:{p3.41}:bell

So a publish stays one atomic script (the log, the brief, the meta and the bell in one
slot), and a process follows every channel with one blocking ``XREAD`` per partition
(its bell), then one ``XREAD`` naming the logs of that partition that rang: the number of
Redis connections a process holds is bounded by the partitions, not by the channels.
Keys that belong to no channel (the channel set, the API keys, the rate counters, the
readers' counts, the layout record) share the tag ``{ticker}``, so the few commands that
touch two of them (deleting an API key, counting a publish and listing its channel,
reporting readers) stay in one slot.

The one-server names are those of every earlier version, so an existing store needs no
change; ``ticker migrate`` copies a store into another layout (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

CLUSTER_SCHEME = "redis+cluster://"
DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1024
GLOBAL_TAG = "ticker"


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


@functools.lru_cache(maxsize=8)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """One hash tag per partition, the ``i``-th in the ``i``-th of ``partitions`` equal
    ranges of slots: a cluster whose shards hold equal ranges of slots (as
    ``valkey-cli --cluster create`` assigns them) gets equal shares of the partitions."""
    tags: list[str] = []
    for i in range(partitions):
        low = i * REDIS_CLUSTER_HASH_SLOTS // partitions
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
        n = 0
        while not low <= key_slot(f"p{i}.{n}".encode()) < high:
            n += 1
        tags.append(f"p{i}.{n}")
    return tuple(tags)


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """The key names of one layout. ``partitions`` is 0 for one server."""

    partitions: int = 0

    @classmethod
    def for_url(cls, url: str, partitions: int = DEFAULT_PARTITIONS) -> Layout:
        return cls(partitions) if is_cluster_url(url) else SINGLE

    @property
    def clustered(self) -> bool:
        return self.partitions > 0

    # Partitions and their doorbells

    @property
    def bells(self) -> int:
        """How many doorbells there are (one per partition; one for one server)."""
        return max(1, self.partitions)

    def partition(self, channel: str) -> int:
        """The partition of a channel: a stable hash of its name (the same in every
        process, unlike Python's ``hash``)."""
        if not self.partitions:
            return 0
        digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.partitions

    def bell(self, partition: int = 0) -> str:
        if not self.partitions:
            return "ticker:bell"
        return f"ticker:{{{partition_tags(self.partitions)[partition]}}}:bell"

    # A channel's keys

    def _channel_key(self, channel: str, kind: str) -> str:
        if not self.partitions:
            return f"ticker:{{{channel}}}:{kind}"
        tag = partition_tags(self.partitions)[self.partition(channel)]
        return f"ticker:{{{tag}}}:{kind}:{channel}"

    def log(self, channel: str) -> str:
        return self._channel_key(channel, "log")

    def briefs(self, channel: str) -> str:
        return self._channel_key(channel, "briefs")

    def meta(self, channel: str) -> str:
        return self._channel_key(channel, "meta")

    def history(self, channel: str) -> str:
        """Hash: brief id -> the versions of that brief (``ticker.history``), kept and
        trimmed with the brief by the write scripts, in the channel's slot."""
        return self._channel_key(channel, "history")

    def sync(self, channel: str) -> str:
        return self._channel_key(channel, "sync")

    def idempotency(self, channel: str, scope: str, key: str) -> str:
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        return self.idempotency_prefix(channel) + digest

    def idempotency_prefix(self, channel: str) -> str:
        """What the names of the channel's idempotency records start with."""
        if not self.partitions:
            return f"ticker:{{{channel}}}:idem:"
        return f"{self._channel_key(channel, 'idem')}:"

    # Every channel's idempotency records, for one ``SCAN`` of the whole store (braces
    # are no pattern characters in Redis's glob).
    IDEMPOTENCY_MATCH = "ticker:{*}:idem:*"

    def split_idempotency(self, key: str | bytes) -> tuple[str, str]:
        """(channel, digest) of an idempotency record's key."""
        name = key.decode() if isinstance(key, bytes) else key
        rest = name[name.index("}:idem:") + len("}:idem:") :]
        if not self.partitions:
            return name[len("ticker:{") : name.index("}")], rest
        channel, _, digest = rest.rpartition(":")
        return channel, digest

    def channel_of_log(self, key: str | bytes) -> str:
        """The channel whose log ``key`` is."""
        name = key.decode() if isinstance(key, bytes) else key
        if not self.partitions:
            return name[len("ticker:{") : name.index("}")]
        return name[name.index("}:log:") + len("}:log:") :]

    # Keys of no channel

    def _global(self, name: str) -> str:
        return f"ticker:{{{GLOBAL_TAG}}}:{name}" if self.partitions else f"ticker:{name}"

    @property
    def channels(self) -> str:
        """Set of channel names (added to before a channel's first event)."""
        return self._global("channels")

    @property
    def channel_objects(self) -> str:
        """Hash: channel name -> its object's JSON (title, lang, time zone, dates:
        ``ticker.channels``). A channel listed in ``channels`` without an object here is
        one published to before channels were objects: it exists, with no defaults."""
        return self._global("channel-objects")

    @property
    def audit(self) -> str:
        """Stream of management actions (``ticker.audit``), capped."""
        return self._global("audit")

    @property
    def token_secrets(self) -> str:
        """Hash: kid -> a reader-token signing secret's record, and ``~current`` -> the kid
        that signs (``ticker.tokens``)."""
        return self._global("token-secrets")

    @property
    def api_keys(self) -> str:
        return self._global("apikeys")

    @property
    def api_key_names(self) -> str:
        return self._global("apikey-names")

    def rate(self, key_name: str, window: int) -> str:
        """String, with a TTL: the writes API key ``key_name`` made in minute ``window``
        (Unix time // 60), ``ticker.ratelimit``. In ``{ticker}`` on a Redis Cluster, with
        the channel set, so that one script counts a publish and lists its channel."""
        return self._global(f"rate:{key_name}:{window}")

    @property
    def readers_index(self) -> str:
        """Sorted set: process id -> when its readers' record expires (Unix seconds)."""
        return self._global("readers")

    def readers(self, process: str) -> str:
        """Hash: channel -> readers in that process, with a TTL."""
        return self._global(f"readers:{process}")

    @property
    def record(self) -> str:
        """The layout a clustered store was written with ("partitions=N"): a process
        started with another number of partitions would look for channels in the wrong
        place, so it refuses to start (``ticker.store.check_layout``)."""
        return self._global("layout")


SINGLE = Layout(0)
