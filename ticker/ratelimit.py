"""Writes per API key: a fixed window per minute, counted in Redis so that every process
of the fleet shares the count. Past the limit, 429 with Retry-After."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from ticker.errors import ProblemError
from ticker.store import unavailable_as_error

WINDOW_SECONDS = 60


async def check_write_rate(client: aioredis.Redis, key_name: str, per_minute: int) -> None:
    """Count one write for ``key_name``; raise a 429 problem past ``per_minute``.

    Call it right before the write, once the request is authorized and its body read and
    valid: requests refused for what they are (400, 413, 415, 422) are not writes and do
    not count. ``per_minute`` 0 turns the limit off."""
    if per_minute <= 0:
        return
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    counter = f"ticker:rate:{key_name}:{window}"
    async with unavailable_as_error(), client.pipeline(transaction=True) as pipe:
        pipe.incr(counter)
        pipe.expire(counter, WINDOW_SECONDS * 2)
        count, _ = await pipe.execute()
    if count > per_minute:
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now) + 1)
        raise ProblemError(
            f"API key {key_name!r} made more than {per_minute} writes this minute; "
            f"retry after {retry_after} s (the limit is the setting 'publish_rate_per_minute').",
            status=429, title="Too Many Requests", type_suffix="rate-limited",
            headers={"Retry-After": str(retry_after)}, limit=per_minute,
        )
