"""The raw floors: a uvloop ``asyncio.Protocol`` WebSocket server with nothing in the way.

    python bench/floor_server.py --port 8001 --redis-url unix:///tmp/x/redis.sock --mode write
    python bench/floor_server.py ... --mode joined

It speaks as much ``ticker.v1`` as the load client needs (hand-made handshake, subscribe
with or without ``since``, snapshot, brief messages byte-for-byte as ticker's) and reads
the same Redis stream with one ``XREAD BLOCK`` reader. Each brief becomes one pre-built
frame, built once. ``--mode write``: one ``transport.write()`` per socket per message.
``--mode joined``: the frames of everything read in one ``XREAD`` (what is pending for
every socket) joined into one write per socket. Snapshots and catch-up come from an
in-memory ring of the newest entries: the floor of what a server can do, not a design.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import deque

import orjson
import redis.asyncio as aioredis
import uvloop
import wire

RING = 1000
SNAPSHOT = 50
_KEY_RE = re.compile(rb"(?im)^sec-websocket-key:[ \t]*(\S+)")


class Hub:
    def __init__(self, channel: str, joined: bool) -> None:
        self.channel = channel
        self.joined = joined
        self.subscribers: set[asyncio.Transport] = set()
        # (key, brief JSON, frame) of the newest entries, oldest first
        self.ring: deque[tuple[tuple[int, int], bytes, bytes]] = deque()
        self.complete_after = (0, 0)  # every entry after this key is in the ring
        self.last = b"0-0"
        self.epoch = ""
        self._snapshot: bytes | None = None

    def add(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bytes | None:
        self.last = entry_id
        if not wire.is_brief(fields):
            return None
        frame = wire.text_frame(wire.brief_message(self.channel, entry_id, fields))
        self.ring.append((wire.key_of(entry_id), wire.brief_json(entry_id, fields), frame))
        if len(self.ring) > RING:
            self.complete_after = self.ring.popleft()[0]
        self._snapshot = None
        return frame

    def snapshot_frame(self) -> bytes:
        if self._snapshot is None:
            newest = [brief for _, brief, _ in list(self.ring)[-SNAPSHOT:]][::-1]
            self._snapshot = wire.text_frame(
                wire.snapshot_message(self.channel, newest, self.last.decode(), self.epoch))
        return self._snapshot

    def subscribe(self, transport: asyncio.Transport, since: str | None) -> None:
        if since is None:
            transport.write(self.snapshot_frame())
        else:
            key = wire.key_of(since)
            recovered = key >= self.complete_after and key <= wire.key_of(self.last)
            head = wire.text_frame(wire.subscribed_message(self.channel, recovered, self.epoch))
            if not recovered:
                transport.write(head + self.snapshot_frame())
            else:
                frames = [frame for k, _, frame in self.ring if k > key]
                if self.joined:
                    transport.write(b"".join([head, *frames]))
                else:
                    transport.write(head)
                    for frame in frames:
                        transport.write(frame)
        self.subscribers.add(transport)

    def fan_out(self, frames: list[bytes]) -> None:
        subscribers = list(self.subscribers)
        if self.joined:
            data = b"".join(frames)
            for t in subscribers:
                t.write(data)
        else:
            for frame in frames:
                for t in subscribers:
                    t.write(frame)


class WsProtocol(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.subscribers.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 8192:
                    t.close()
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            m = _KEY_RE.search(head)
            if not head.startswith(b"GET ") or m is None:
                t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                t.close()
                return
            proto = b"Sec-WebSocket-Protocol: ticker.v1\r\n" if b"ticker.v1" in head else b""
            t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + wire.accept_value(m.group(1)) + b"\r\n" + proto + b"\r\n")
            self.open = True
        self._frames(t)

    def _frames(self, t: asyncio.Transport) -> None:
        buf = self.buf
        for _ in range(1000):  # bounded: a client sends a handful of frames
            if len(buf) < 2:
                return
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            h = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, h = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                t.close()  # no client message of ticker.v1 is that large
                return
            if not buf[1] & 0x80:
                t.close()  # clients must mask (RFC 6455 section 5.1)
                return
            if len(buf) < h + 4 + n:
                return
            mask = buf[h : h + 4]
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[h + 4 : h + 4 + n]))
            del buf[: h + 4 + n]
            if op == 0x1:
                self._message(t, payload)
            elif op == 0x8:
                t.write(wire.control_frame(0x8, payload[:2]))
                t.close()
                return
            elif op == 0x9:
                t.write(wire.control_frame(0xA, payload))
        t.close()

    def _message(self, t: asyncio.Transport, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
            assert msg["op"] == "subscribe" and msg["channel"] == self.hub.channel
        except Exception:
            t.write(wire.text_frame(b'{"type":"error","code":"bad_message","message":"?"}'))
            return
        self.hub.subscribe(t, msg.get("since"))


async def read_stream(hub: Hub, client: aioredis.Redis) -> None:
    log = wire.log_key(hub.channel)
    while True:
        reply = await client.xread({log: hub.last}, block=5000, count=1000)
        frames = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                frame = hub.add(entry_id, fields)
                if frame is not None:
                    frames.append(frame)
        if not hub.epoch:
            hub.epoch = (await client.hget(wire.meta_key(hub.channel), "epoch") or b"").decode()
        if frames:
            hub.fan_out(frames)


async def main(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(args.redis_url, socket_timeout=None)
    hub = Hub(args.channel, args.mode == "joined")
    newest = await client.xrevrange(wire.log_key(args.channel), "+", "-", count=RING)
    for entry_id, fields in reversed(newest):
        hub.add(entry_id, fields)
    if len(newest) < RING:
        hub.complete_after = (0, 0)
    elif hub.ring:
        hub.complete_after = hub.ring[0][0]
    hub.epoch = (await client.hget(wire.meta_key(args.channel), "epoch") or b"").decode()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: WsProtocol(hub), args.host, args.port, backlog=2048, reuse_address=True)
    reader = asyncio.create_task(read_stream(hub, client))
    try:
        await reader
    finally:
        server.close()
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--mode", choices=["write", "joined"], required=True)
    uvloop.run(main(parser.parse_args()))
