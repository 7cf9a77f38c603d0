"""Writes per API key: a fixed window per minute, counted in Redis so that every process
of the fleet shares the count. Past the limit, 429 with Retry-After.

The count is kept by the write scripts themselves (``ticker/lua/rate.lua``, called by
``ticker.store.Store``), so that it costs no round trip of its own: on one server the
publish script checks the idempotency record first (a replay is not a new write and does
not count), then counts, then writes, all in one step; on a Redis Cluster the counter
lives in the ``{ticker}`` slot (``Layout.rate``), which the write script cannot touch, so
one small script counts (and lists the channel) right before the write. A refused write
is not counted, and writes nothing.

A write counts once the request is authorized and its body read and valid: requests
refused for what they are (400, 413, 415, 422) are not writes and do not count. A
correction or retraction counts when its brief is read (so also when it is then refused
with 404 or 409, as a write that reached the store)."""

from __future__ import annotations

from ticker.errors import ProblemError

WINDOW_SECONDS = 60
COUNTER_TTL = 2 * WINDOW_SECONDS  # a counter outlives its window: clocks of processes differ


def window(now: float) -> int:
    """The number of the window ``now`` (Unix time) falls in."""
    return int(now // WINDOW_SECONDS)


def exceeded(key_name: str, per_minute: int, now: float) -> ProblemError:
    """The 429 problem of a write refused at ``now``, past ``per_minute`` for the key."""
    retry_after = max(1, int((window(now) + 1) * WINDOW_SECONDS - now) + 1)
    return ProblemError(
        f"API key {key_name!r} made more than {per_minute} writes this minute; "
        f"retry after {retry_after} s (the limit is the setting 'publish_rate_per_minute').",
        status=429, title="Too Many Requests", type_suffix="rate-limited",
        headers={"Retry-After": str(retry_after)}, limit=per_minute,
    )
