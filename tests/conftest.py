"""Shared fixtures: a real Redis (the packaged valkey-server), a real uvicorn on a free
port running the app as ``ticker serve`` configures it, real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from ticker.app import create_app
from ticker.auth import KeyStore
from ticker.cli import _Server, uvicorn_config
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis

RECV_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real server for the session, on a unix socket in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="ticker-redis-") as tmp:
        server = EmbeddedRedis(tmp)
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_server: EmbeddedRedis) -> Settings:
    return Settings(redis_url=redis_server.url, log_level="warning", shutdown_drain=1.0)


@dataclass
class Service:
    """A running ticker service: its base URLs and an HTTP client."""

    base: str
    ws_url: str
    http: httpx.AsyncClient
    app: Any
    server: _Server
    task: asyncio.Task[None]
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def hub(self) -> Any:
        return self.app.state.services.hub

    async def publish(self, channel: str, text: str, **fields: Any) -> dict[str, Any]:
        headers = self.auth()
        if "idempotency_key" in fields:
            headers["Idempotency-Key"] = fields.pop("idempotency_key")
        r = await self.http.post(
            f"/v1/channels/{channel}/briefs", json={"text": text, **fields}, headers=headers
        )
        assert r.status_code == 201, r.text
        brief: dict[str, Any] = r.json()
        return brief

    async def correct(self, brief_id: str, channel: str = "world", **fields: Any) -> dict[str, Any]:
        r = await self.http.patch(
            f"/v1/channels/{channel}/briefs/{brief_id}", json=fields, headers=self.auth()
        )
        assert r.status_code == 200, r.text
        fixed: dict[str, Any] = r.json()
        return fixed

    async def retract(self, brief_id: str, channel: str = "world") -> None:
        r = await self.http.delete(f"/v1/channels/{channel}/briefs/{brief_id}", headers=self.auth())
        assert r.status_code == 204, r.text

    async def subscriber(self, **kwargs: Any) -> Subscriber:
        ws = await websockets.connect(self.ws_url, subprotocols=["ticker.v1"], **kwargs)  # type: ignore[list-item]
        return Subscriber(ws)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)
        await self.http.aclose()


class Subscriber:
    """A real WebSocket client speaking ticker.v1."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def subscribe(self, channel: str, **fields: Any) -> None:
        await self.send({"op": "subscribe", "channel": channel, **fields})

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = orjson.loads(raw)
        return message

    async def recv_until(self, count: int, timeout: float = RECV_TIMEOUT) -> list[dict[str, Any]]:
        return [await self.recv(timeout) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        await self.ws.close()


def free_socket() -> socket.socket:
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else every answer waits ~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def start_uvicorn(server: Any, sock: socket.socket) -> asyncio.Task[None]:
    """Serve on ``sock`` in this event loop; return once uvicorn has started."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    return task


@contextlib.asynccontextmanager
async def run_service(
    settings: Settings, sock: socket.socket | None = None, ws_impl: str = "ticker"
) -> AsyncIterator[Service]:
    """Run the app in real uvicorn (same configuration as ``ticker serve``) on a free port.

    ``ws_impl="asgi"``: uvicorn's stock HTTP protocol instead of ticker's own, so that
    the subscribers' handshakes reach the app through ASGI and its plain-ASGI path (as on
    any other server) is exercised too."""
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    app = create_app(settings)
    config = uvicorn_config(settings.with_overrides(port=port), app)
    if ws_impl == "asgi":
        config.http = "httptools"
    server = _Server(config, app)
    task = await start_uvicorn(server, sock)
    base = f"http://127.0.0.1:{port}"
    service = Service(
        base=base, ws_url=f"ws://127.0.0.1:{port}/v1/ws",
        http=httpx.AsyncClient(base_url=base, timeout=10), app=app, server=server, task=task,
    )
    try:
        yield service
    finally:
        if not task.done():
            await service.stop()
        sock.close()


@pytest.fixture
def ws_impl() -> str:
    """How the subscribers' WebSockets are served: "ticker" (``ticker.wsproto``, as
    shipped) or "asgi" (uvicorn's own protocols, the app's ASGI endpoint). Modules that
    test delivery override it with both."""
    return "ticker"


@pytest.fixture
async def service(
    settings: Settings, redis_client: aioredis.Redis, ws_impl: str
) -> AsyncIterator[Service]:
    async with run_service(settings, ws_impl=ws_impl) as svc:
        svc.key = await KeyStore(redis_client).create("test", ["*"])
        yield svc


@pytest.fixture
def tmp_short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short temporary directory (unix socket paths are limited to about 100 bytes)."""
    return Path(tempfile.mkdtemp(prefix="tk-"))


# Added for test_resume.py, test_slow_consumer.py and test_faults.py.


@pytest.fixture
def serve_with(settings: Settings, redis_client: aioredis.Redis, ws_impl: str) -> Any:
    """Run the service with some settings changed: ``async with serve_with(x=1) as svc``.
    The service gets an API key for every channel, like the ``service`` fixture."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Service]:
        sock = tcp_socket()
        async with run_service(settings.with_overrides(**overrides), sock, ws_impl) as svc:
            svc.key = await KeyStore(redis_client).create("test", ["*"])
            yield svc

    return start


tcp_socket = free_socket


async def until_closed(
    sub: Subscriber, timeout: float = RECV_TIMEOUT, limit: int = 100_000
) -> tuple[list[dict[str, Any]], int | None, str]:
    """Read until the server closes the connection: (messages before the close, code, reason)."""
    messages: list[dict[str, Any]] = []
    for _ in range(limit):
        try:
            raw = await asyncio.wait_for(sub.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            received = exc.rcvd
            if received is None:
                return messages, None, ""
            return messages, received.code, received.reason
        messages.append(orjson.loads(raw))
    raise AssertionError(f"the connection was not closed after {limit} messages")


class RawClient:
    """A minimal WebSocket client on a plain non-blocking socket: it reads only when told."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str = "/v1/ws", early: bytes = b"") -> RawClient:
        """Connect and upgrade; ``early``: bytes sent right behind the request, before the
        answer (RFC 6455 asks clients to wait for it; a server should not lose them)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: ticker.v1\r\n\r\n"
        )
        await client.loop.sock_sendall(sock, request.encode() + early)
        while b"\r\n\r\n" not in client.buffer:
            await client._fill()
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _fill(self) -> None:
        chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), RECV_TIMEOUT)
        if not chunk:
            raise EOFError("the server closed the TCP connection")
        self.buffer += chunk

    async def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        await self.loop.sock_sendall(self.sock, self.encode(opcode, payload))

    async def send_raw(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    @staticmethod
    def encode(
        opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0,
    ) -> bytes:
        """One client frame; ``masked=False`` or ``rsv`` bits break RFC 6455."""
        first = (0x80 if fin else 0) | rsv << 4 | opcode
        mask_bit = 0x80 if masked else 0
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, mask_bit | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, mask_bit | 126, length)
        else:
            header = struct.pack("!BBQ", first, mask_bit | 127, length)
        if not masked:
            return header + payload
        mask = os.urandom(4)
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send_json(self, *messages: dict[str, Any]) -> None:
        """Send messages as text frames, all in one write (so one TCP segment)."""
        await self.loop.sock_sendall(
            self.sock, b"".join(self.encode(0x1, orjson.dumps(m)) for m in messages)
        )

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.frame()
        assert opcode == 0x1, (opcode, payload)
        message: dict[str, Any] = orjson.loads(payload)
        return message

    async def frame(self, answer_pings: bool = True) -> tuple[int, bytes]:
        """The next frame from the server (opcode, payload); answers pings on the way
        (or returns them, with ``answer_pings=False``)."""
        while True:
            first, second = await self._take(2)
            assert first & 0x80, "fragmented frames are not expected from the server"
            assert not second & 0x80, "server frames are not masked"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._take(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._take(8))
            opcode, payload = first & 0x0F, await self._take(length)
            if opcode == 0x9 and answer_pings:
                await self.send_frame(0xA, payload)
                continue
            return opcode, payload

    async def until_close(self, limit: int = 100_000) -> tuple[list[dict[str, Any]], int]:
        """Read on until the close frame: (messages before it, close code)."""
        messages: list[dict[str, Any]] = []
        for _ in range(limit):
            opcode, payload = await self.frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                await self.send_frame(0x8, payload[:2])  # complete the closing handshake
                return messages, code
            assert opcode == 0x1
            messages.append(orjson.loads(payload))
        raise AssertionError("no close frame")

    def close(self) -> None:
        self.sock.close()


# Slow consumers: briefs near the largest allowed (about 6.7 KB of JSON each), so that the
# kernel's buffers on loopback (the send buffer autotunes up to 4 MB) fill before the
# server's own bound does. Four-byte characters make the most of the 500-character limit.
BIG_FIELDS = {
    "url": "https://news.example.org/" + "a" * 2000,
    "tags": [f"{i}" + "\N{NEWSPAPER}" * 60 for i in range(10)],
}
BIG_TEXT = "\N{GLOBE WITH MERIDIANS}" * 495


async def until(condition: Any, what: str, polls: int = 500) -> None:
    """Wait for the server's state to change: at most ``polls`` x 0.01 s."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), what


DEADLINE = 30.0  # seconds: the bound of every wait for a process; never reached when all is well


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE
) -> None:
    """Poll ``check`` until it is true, at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


def hub_holds(hub: Any, conn: Any) -> bool:
    """The hub still counts the connection or fans out to it."""
    return conn in hub.connections or any(
        sub.connection is conn for state in hub.channels.values() for sub in state.subscribers
    )
