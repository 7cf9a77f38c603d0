"""The naive recipe: Starlette on uvicorn, ``await ws.send_text()`` per client per message.

    python bench/naive_server.py --port 8001 --redis-url unix:///tmp/x/redis.sock [--ws wsproto]

What a tutorial builds: one Redis reader task, a set of connected WebSockets, and for each
brief a loop that awaits ``send_text`` on every socket in turn. On subscribe, a snapshot
read from Redis (``XREVRANGE``); with ``since``, one ``XRANGE`` per client. uvicorn with
its defaults (uvloop, httptools, ``--ws auto``, which is websockets-sansio in uvicorn
0.54; ``--ws`` picks another; permessage-deflate stays off because the load client does
not offer it). The Redis
pool is a blocking one of 64 connections, as ticker's, so that a connect storm waits for
a connection instead of failing: the recipe is naive about fan-out, not about Redis.
Messages are byte-for-byte ticker's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import redis.asyncio as aioredis
import uvicorn
import wire
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SNAPSHOT = 50


def create_app(redis_url: str, channel: str) -> Starlette:
    clients: set[WebSocket] = set()
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=30)
    redis = aioredis.Redis.from_pool(pool)
    reader = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    log = wire.log_key(channel)

    async def epoch() -> str:
        return (await redis.hget(wire.meta_key(channel), "epoch") or b"").decode()

    async def read_stream() -> None:
        newest = await reader.xrevrange(log, "+", "-", count=1)
        last = newest[0][0] if newest else b"0-0"
        while True:
            reply = await reader.xread({log: last}, block=5000, count=1000)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if not wire.is_brief(fields):
                        continue
                    text = wire.brief_message(channel, entry_id, fields).decode()
                    for ws in list(clients):
                        try:
                            await ws.send_text(text)
                        except Exception:
                            clients.discard(ws)

    async def endpoint(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols", [])
        await ws.accept("ticker.v1" if "ticker.v1" in offered else None)
        try:
            while True:
                msg = orjson.loads(await ws.receive_text())
                since = msg.get("since")
                if since is None:
                    entries = await redis.xrevrange(log, "+", "-", count=SNAPSHOT)
                    briefs = [wire.brief_json(i, f) for i, f in entries if wire.is_brief(f)]
                    cursor = entries[0][0].decode() if entries else "0-0"
                    await ws.send_text(
                        wire.snapshot_message(channel, briefs, cursor, await epoch()).decode())
                else:
                    entries = await redis.xrange(log, "(" + since, "+")
                    head = wire.subscribed_message(channel, True, await epoch())
                    await ws.send_text(head.decode())
                    for entry_id, fields in entries:
                        if wire.is_brief(fields):
                            message = wire.brief_message(channel, entry_id, fields)
                            await ws.send_text(message.decode())
                clients.add(ws)
        except WebSocketDisconnect:
            pass
        finally:
            clients.discard(ws)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(read_stream())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await reader.aclose()
            await redis.aclose()

    return Starlette(routes=[WebSocketRoute("/v1/ws", endpoint)], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--ws", default="auto",
                        choices=["auto", "websockets", "websockets-sansio", "wsproto"],
                        help="uvicorn's WebSocket implementation (auto: websockets-sansio)")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.redis_url, args.channel), host=args.host, port=args.port,
        loop="uvloop", http="httptools", ws=args.ws, lifespan="on", log_level="warning",
        timeout_graceful_shutdown=5,
    )
