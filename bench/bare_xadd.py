"""Baseline of ``POST /v1/channels/{channel}/briefs``: Starlette on uvicorn, one XADD.

    python bench/bare_xadd.py --port 8001 --redis-url unix:///tmp/x/redis.sock

The least a publish endpoint on ticker's stack can cost, the denominator of issue 12's
"publish at least 0.6 x one XADD": uvicorn with ticker's event loop and HTTP parser
(uvloop, httptools: ``ticker.cli.uvicorn_config``), Starlette's routing, the request body
read whole, one ``await redis.xadd(...)`` on a redis-py asyncio client, and 201 with a
small JSON. Nothing else: no key, no validation, no idempotency record, no rate count, no
retention script. The stream is capped (``MAXLEN ~``, as ticker's retention caps a
channel) so that a long run does not grow Redis; that is still one XADD. The connection
pool is a blocking one of 64, as ticker's ``redis_pool_size``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import orjson
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STREAM = "bench:bare:{channel}"
MAXLEN = 1000  # as ticker's retention_max_events


def create_app(redis_url: str) -> Starlette:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=30)
    redis = aioredis.Redis.from_pool(pool)

    async def publish(request: Request) -> Response:
        channel = request.path_params["channel"]
        body = await request.body()
        entry_id = await redis.xadd(STREAM.format(channel=channel), {"brief": body},
                                    maxlen=MAXLEN, approximate=True)
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return Response(orjson.dumps({"id": text}), status_code=201,
                        media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await redis.aclose()

    return Starlette(routes=[Route("/v1/channels/{channel}/briefs", publish, methods=["POST"])],
                     lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    # As ticker serve: no access log (its log level is warning in the bench), no Server
    # header, the same keep-alive timeout (keepalive_timeout, 5 s).
    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="on", log_level="warning", server_header=False,
                timeout_keep_alive=5)
