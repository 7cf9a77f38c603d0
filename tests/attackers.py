"""The attacks of issue 9 ("Hardening for the open internet") as reusable pieces, for
tests/test_attacks.py (short, with assertions) and bench/attacks.py (longer, a table):

* ``TickerServe``: ``python -m ticker serve`` as a user runs it, in a child process,
  with settings from ``TICKER_<NAME>`` variables; its RSS, descriptors and TCP peers
  read from /proc, from outside.
* ``Probe``: the legitimate traffic every attack runs against: one WebSocket subscriber
  (the websockets client) and a publisher posting one brief every 100 ms.
* ``Conn`` and ``RawWs``: an attacker's raw TCP connection and WebSocket, bound to a
  loopback address of its own (127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is
  loopback on Linux), so that attackers are neither the trusted proxy 127.0.0.1 nor
  the legitimate clients' address.
* The attacks themselves: endless or huge request heads, subscription churn, held
  subscriptions, idle and dripping connections, WebSocket frame floods.

Nothing here asserts; every wait has a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
import websockets

from ticker.auth import KeyStore
from ticker.embedded import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
LEGIT = "127.0.0.1"  # the probe's address (also the default trusted proxy)
ATTACKERS = tuple(f"127.0.0.{i}" for i in range(2, 40))  # never trusted, never the probe's
START_TIMEOUT = 30.0
WS_PATH = "/v1/ws"


# ticker serve in a child process, watched from outside



def free_port() -> int:
    with socket.socket() as s:
        s.bind((LEGIT, 0))
        return int(s.getsockname()[1])


class TickerServe:
    """``python -m ticker serve --port <free>`` with ``REDIS_URL`` and ``TICKER_*``
    settings from ``settings`` (``idle_timeout=1`` sets ``TICKER_IDLE_TIMEOUT=1``).
    ``stop`` ends it (SIGTERM, then SIGKILL): call it in a ``finally``."""

    def __init__(
        self, redis_url: str, log: Path, open_files: int | None = None, **settings: object
    ) -> None:
        self.redis_url = redis_url
        self.open_files = open_files  # the child's RLIMIT_NOFILE (soft and hard), if given
        self.log = log
        self.port = free_port()
        self.base = f"http://{LEGIT}:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TICKER_") and k not in ("REDIS_URL", "PORT")}
        env.update(REDIS_URL=redis_url, TICKER_LOG_LEVEL="warning",
                   TICKER_PUBLISH_RATE_PER_MINUTE="0", TICKER_SHUTDOWN_DRAIN="0.5")
        env.update({f"TICKER_{name.upper()}": str(value) for name, value in settings.items()})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not started"
        return self.proc.pid

    async def start(self) -> TickerServe:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ticker", "serve", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=self._preexec,
            )
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=self.base, timeout=2, trust_env=False) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ticker serve exited at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ticker serve not up in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def _preexec(self) -> None:  # runs in the child, before exec
        die_with_parent()
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def create_key(self) -> str:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            return await KeyStore(client).create(f"attacks-{uuid.uuid4().hex[:12]}", ["*"])
        finally:
            await client.aclose()

    # Read from outside: /proc

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def peers(self) -> Counter[str]:
        """The server's open TCP connections on its port, counted by the client's address
        (every state but LISTEN and TIME_WAIT: a connection still holding a descriptor)."""
        inodes = set()
        fd_dir = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        counts: Counter[str] = Counter()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                    if state == "0A" or inode not in inodes:
                        continue
                    if int(local.rsplit(":", 1)[1], 16) != self.port:
                        continue
                    counts[_hex_address(remote.rsplit(":", 1)[0])] += 1
        return counts

    def attacker_connections(self) -> int:
        return sum(n for address, n in self.peers().items() if address in ATTACKERS)


def _hex_address(raw: str) -> str:
    if len(raw) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(raw)[::-1])
    words = [bytes.fromhex(raw[i:i + 8])[::-1] for i in range(0, 32, 8)]
    address = socket.inet_ntop(socket.AF_INET6, b"".join(words))
    return address.removeprefix("::ffff:") if address.startswith("::ffff:") and "." in address else address


class RssSampler:
    """The server's RSS every ``interval`` seconds while the block runs: ``peak``."""

    def __init__(self, server: TickerServe, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.server.rss_mib())
                self.samples += 1
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self.peak = self.server.rss_mib()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(OSError, RuntimeError):
            self.peak = max(self.peak, self.server.rss_mib())


async def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Wait until ``condition()`` holds, at most ``timeout`` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        await asyncio.sleep(interval)
    return True


# The legitimate traffic


LIVENESS = 2.0  # seconds: a liveness bound (deliveries normally take ~5 ms), not a speed claim


class Probe:
    """A legitimate subscriber and publisher on one channel, from ``LEGIT``: the
    publisher posts one brief every ``interval`` seconds (each answer's status kept), the
    subscriber (the websockets client) notes when each brief arrives."""

    def __init__(self, server: TickerServe, key: str, channel: str, interval: float = 0.1) -> None:
        self.server = server
        self.key = key
        self.channel = channel
        self.interval = interval
        self.sent: dict[str, float] = {}  # brief id -> when its publish was sent
        self.published: list[str] = []  # ids acknowledged with 201, in order
        self.failures: list[str] = []  # every publish not answered 201
        self.delivered: list[tuple[str, float]] = []  # (id, delay), in arrival order
        self.reader_error: str | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: Any = None
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> Probe:
        url = f"ws://{LEGIT}:{self.server.port}{WS_PATH}"
        self._ws = await websockets.connect(url, subprotocols=["ticker.v1"], proxy=None)  # type: ignore[list-item]
        await self._ws.send(orjson.dumps({"op": "subscribe", "channel": self.channel}).decode())
        while True:
            message = orjson.loads(await asyncio.wait_for(self._ws.recv(), 10))
            if message["type"] == "snapshot":
                break
        self._http = httpx.AsyncClient(base_url=self.server.base, timeout=10, trust_env=False)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._publish())]
        return self

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = orjson.loads(raw)
                if message["type"] == "brief" and message["channel"] == self.channel:
                    brief_id = message["brief"]["id"]
                    sent = self.sent.get(brief_id)
                    delay = time.monotonic() - sent if sent is not None else float("nan")
                    self.delivered.append((brief_id, delay))
        except websockets.ConnectionClosed as exc:
            self.reader_error = f"the probe's WebSocket was closed: {exc}"

    async def _publish(self) -> None:
        assert self._http is not None
        headers = {"Authorization": f"Bearer {self.key}"}
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for n in itertools.count():
            if self._stopping.is_set():
                return
            sent = time.monotonic()
            try:
                r = await self._http.post(
                    f"/v1/channels/{self.channel}/briefs", json={"text": f"probe {n}"}, headers=headers
                )
            except httpx.HTTPError as exc:
                self.failures.append(f"publish {n}: {type(exc).__name__}: {exc}")
            else:
                if r.status_code == 201:
                    brief_id = r.json()["id"]
                    self.sent[brief_id] = sent
                    self.published.append(brief_id)
                else:
                    self.failures.append(f"publish {n}: {r.status_code} {r.text[:200]}")
            next_at += self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, next_at - loop.time()))

    async def stop(self, wait: float = 10.0) -> None:
        """Stop publishing, wait (at most ``wait`` s) for every acknowledged brief, close."""
        self._stopping.set()
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tasks[1], 15)
            await poll(lambda: len(self.delivered) >= len(self.published) or self._tasks[0].done(), wait)
            self._tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tasks[0]
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._http is not None:
            await self._http.aclose()

    def problems(self, liveness: float = LIVENESS) -> list[str]:
        """What went wrong for the legitimate clients, in sentences (empty: nothing)."""
        found = list(self.failures[:10])
        if len(self.failures) > 10:
            found.append(f"... and {len(self.failures) - 10} more failed publishes")
        if self.reader_error:
            found.append(self.reader_error)
        got = [brief_id for brief_id, _ in self.delivered]
        if got != self.published:
            missing = set(self.published) - set(got)
            found.append(
                f"deliveries differ from publishes: {len(self.published)} published, "
                f"{len(got)} delivered, {len(missing)} missing, in order: {got == sorted(got, key=_key)}"
            )
        late = [delay for _, delay in self.delivered if delay > liveness]
        if late:
            found.append(f"{len(late)} deliveries later than {liveness} s (the latest {max(late):.2f} s)")
        if not self.published:
            found.append("nothing was published")
        return found

    def summary(self) -> dict[str, Any]:
        delays = sorted(d * 1000 for _, d in self.delivered if d == d)
        return {
            "published_ok": len(self.published),
            "published_failed": len(self.failures),
            "delivered": len(self.delivered),
            "latency_ms": _percentiles(delays),
        }


def _key(brief_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in brief_id.split("-"))


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": statistics.median(values),
        "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
        "max": values[-1],
    }


# An attacker's connection


class Conn:
    """A raw TCP connection from ``source``; a task reads everything the server sends
    until it closes (EOF or reset). What arrives goes to ``sink`` when one is set, else
    it is kept in ``data`` (at most ``keep`` bytes; ``received`` counts them all)."""

    def __init__(self, sock: socket.socket, source: str, keep: int = 1 << 20) -> None:
        self.sock = sock
        self.source = source
        self.loop = asyncio.get_running_loop()
        self.keep = keep
        self.data = bytearray()
        self.received = 0
        self.sent = 0
        self.sink: Callable[[bytes], None] | None = None
        self.opened = time.monotonic()
        self.first_sent: float | None = None
        self.answered: float | None = None  # when the first byte from the server came
        self.closed_at: float | None = None
        self.reset = False
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        _open.add(self)

    @classmethod
    async def open(cls, source: str, port: int, timeout: float = 10.0) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (LEGIT, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock, source)

    async def _read(self) -> None:
        try:
            while True:
                chunk = await self.loop.sock_recv(self.sock, 65536)
                if not chunk:
                    break
                if self.answered is None:
                    self.answered = time.monotonic()
                self.received += len(chunk)
                if self.sink is not None:
                    self.sink(chunk)
                elif len(self.data) < self.keep:
                    self.data += chunk
                self._arrived.set()
        except OSError:
            self.reset = True
        self.closed_at = time.monotonic()
        self.closed.set()
        self._arrived.set()

    async def send(self, data: bytes, timeout: float = 10.0) -> bool:
        """Send it all; False if the server closed, reset, or stopped reading for ``timeout`` s."""
        if self.first_sent is None:
            self.first_sent = time.monotonic()
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), timeout)
        except (OSError, TimeoutError):
            return False
        self.sent += len(data)
        return True

    async def wait_data(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed.is_set():
                return predicate()
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def wait_closed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closed.is_set()

    def answers(self) -> list[HttpAnswer]:
        return parse_answers(bytes(self.data))

    async def close(self) -> None:
        _open.discard(self)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.sock.close()


_open: set[Conn] = set()  # every Conn not closed yet


async def close_everything() -> None:
    """Close every attacker connection still open (after a failure, say)."""
    await asyncio.gather(*(conn.close() for conn in list(_open)), return_exceptions=True)


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any] | None:
        """The RFC 9457 body, if the answer is one."""
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return None
        try:
            body: Any = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None


def parse_answers(data: bytes) -> list[HttpAnswer]:
    """The HTTP/1.1 responses in ``data`` (bodies by Content-Length; the rest of the data
    for one without)."""
    answers = []
    while data.startswith(b"HTTP/"):
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            answers.append(HttpAnswer(status, headers, b""))
            break
        length = int(headers.get("content-length", len(rest)))
        answers.append(HttpAnswer(status, headers, rest[:length]))
        data = rest[length:]
    return answers


def request_head(method: str, path: str, headers: Iterable[tuple[str, str]] = (), end: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LEGIT}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")).encode("latin-1")


def upgrade_headers() -> list[tuple[str, str]]:
    return [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", "ticker.v1"),
    ]


# WebSocket frames (RFC 6455 section 5.2). A zero mask key leaves the payload as it is:
# valid framing, and cheap enough to flood with.

CONT, TEXT, CLOSE, PING, PONG = 0x0, 0x1, 0x8, 0x9, 0xA
_ZERO_MASK = b"\0\0\0\0"


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + _ZERO_MASK + payload


def json_frames(messages: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(client_frame(TEXT, orjson.dumps(m)) for m in messages)


class RawWs:
    """An attacker's WebSocket on a ``Conn``: it reads and counts what the server sends,
    answers pings, echoes a close frame (as RFC 6455 asks) and notes its code and reason."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.status: int | None = None  # of the handshake's answer
        self.answer: HttpAnswer | None = None
        self.messages: Counter[str] = Counter()  # text messages by "type"
        self.close_code: int | None = None
        self.close_reason = ""
        self._buffer = b""
        self._changed = asyncio.Event()  # set on every text message and on the close

    @classmethod
    async def open(
        cls, source: str, port: int, headers: Iterable[tuple[str, str]] = (), timeout: float = 10.0,
    ) -> RawWs:
        ws = cls(await Conn.open(source, port, timeout))
        await ws.conn.send(request_head("GET", WS_PATH, [*upgrade_headers(), *headers]))
        await ws.conn.wait_data(lambda: b"\r\n\r\n" in ws.conn.data, timeout)
        data = bytes(ws.conn.data)
        _, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            answers = parse_answers(data)
            ws.answer = answers[0] if answers else None
            ws.status = ws.answer.status if ws.answer else None
            if ws.status == 101:
                ws.conn.data.clear()
                ws.conn.sink = ws._feed
                if rest:
                    ws._feed(rest)
        return ws

    @property
    def open_ok(self) -> bool:
        return self.status == 101

    def _feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length, head = second & 0x7F, pos + 2
            if length == 126:
                if end - head < 2:
                    break
                length, head = int.from_bytes(buffer[head:head + 2], "big"), head + 2
            elif length == 127:
                if end - head < 8:
                    break
                length, head = int.from_bytes(buffer[head:head + 8], "big"), head + 8
            if end - head < length:
                break
            payload, pos = buffer[head:head + length], head + length
            self._frame(first & 0x0F, payload)
        self._buffer = buffer[pos:]

    def _frame(self, opcode: int, payload: bytes) -> None:
        self._changed.set()
        if opcode == TEXT:
            try:
                self.messages[str(orjson.loads(payload).get("type"))] += 1
            except (orjson.JSONDecodeError, AttributeError):
                self.messages["?"] += 1
        elif opcode == PING:
            self._later(client_frame(PONG, payload))
        elif opcode == CLOSE and self.close_code is None:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode(errors="replace")
            self._later(client_frame(CLOSE, payload[:2]))

    def _later(self, frame: bytes) -> None:
        task = asyncio.ensure_future(self.conn.send(frame, timeout=2.0))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def send(self, data: bytes, timeout: float = 10.0) -> bool:
        return await self.conn.send(data, timeout)

    async def wait_messages(self, kind: str, count: int, timeout: float) -> bool:
        return await poll(lambda: self.messages[kind] >= count or self.conn.closed.is_set(), timeout, 0.02) \
            and self.messages[kind] >= count

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` holds (checked on every frame), the end, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if self.conn.closed.is_set() or self.close_code is not None or remaining <= 0:
                return predicate()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
        return True

    async def wait_close(self, timeout: float) -> bool:
        """Until the server's close frame (or the end of the connection)."""
        return await poll(lambda: self.close_code is not None or self.conn.closed.is_set(), timeout, 0.02)

    def outcome(self) -> str:
        """What the server did, in a few characters: '101+1008', '429', 'closed', 'open'."""
        if self.status is None:
            return "closed" if self.conn.closed.is_set() else "open"
        if self.status != 101:
            return str(self.status)
        if self.close_code is not None:
            return f"101+{self.close_code}"
        return "101+closed" if self.conn.closed.is_set() else "101"

    async def close(self) -> None:
        await self.conn.close()


_background: set[asyncio.Future[Any]] = set()


def outcome(conn: Conn) -> str:
    """What the server answered on a plain HTTP connection: the first status, with
    '+closed' when it closed the connection after; 'closed' (no answer) or 'open'."""
    answers = conn.answers()
    state = "closed" if conn.closed.is_set() else "open"
    if not answers:
        return state
    return f"{answers[-1].status}+{state}" if len(answers) == 1 else \
        "/".join(str(a.status) for a in answers) + f"+{state}"


async def close_all(items: Iterable[Conn | RawWs]) -> None:
    await asyncio.gather(*(item.close() for item in items), return_exceptions=True)


def sources(n: int, first: int = 0) -> Iterator[str]:
    """``n`` attacker addresses, cycling over ``ATTACKERS[first:first + 4]``."""
    return itertools.islice(itertools.cycle(ATTACKERS[first:first + 4]), n)


# 1. Request heads


def endless_lines(line: int = 4096) -> Iterator[bytes]:
    """Header lines of ``line`` bytes, forever, 16 to a chunk."""
    for n in itertools.count(0, 16):
        yield b"".join(
            (b"X-Junk-%d: " % i).ljust(line - 2, b"a") + b"\r\n" for i in range(n, n + 16)
        )


def one_big_header(size: int = 8 * 1024 * 1024, chunk: int = 65536) -> Iterator[bytes]:
    yield b"X-Big: "
    for _ in range(size // chunk):
        yield b"a" * chunk
    yield b"\r\n\r\n"


def many_small_headers(count: int = 100_000) -> Iterator[bytes]:
    for start in range(0, count, 1000):
        yield b"".join(b"X-%d: 1\r\n" % i for i in range(start, min(count, start + 1000)))
    yield b"\r\n"


def _get_head() -> bytes:
    return request_head("GET", "/healthz", end=False)


def _upgrade_head() -> bytes:
    return request_head("GET", WS_PATH, upgrade_headers(), end=False)


# name: (the start of the head, then the stream of header bytes)
HEAD_ATTACKS: dict[str, tuple[Callable[[], bytes], Callable[[], Iterator[bytes]]]] = {
    "endless-lines": (_get_head, endless_lines),
    "one-8MB-header": (_get_head, one_big_header),
    "100000-headers": (_get_head, many_small_headers),
    "ws-endless-lines": (_upgrade_head, endless_lines),  # a WebSocket upgrade of /v1/ws
    "ws-150-headers": (_upgrade_head, lambda: many_small_headers(150)),  # small: the fast path
    "keepalive-endless-lines": (_get_head, endless_lines),  # after a first request, answered
}


async def big_head(
    port: int, source: str, attack: str, budget: int = 64 << 20, seconds: float = 10.0,
) -> Conn:
    """One connection sending the head ``attack`` names until the server answers or
    closes (or ``budget`` bytes, or ``seconds``). ``keepalive-*``: a valid request
    first, answered, then the attack on the same connection (both answers are in
    ``conn.answers()``); ``ws-*``: the head of a WebSocket upgrade of /v1/ws."""
    first, stream = HEAD_ATTACKS[attack]
    conn = await Conn.open(source, port)
    if attack.startswith("keepalive-"):
        await conn.send(request_head("GET", "/healthz"))
        await conn.wait_data(lambda: len(conn.answers()) >= 1, 5.0)
    await flood(conn, itertools.chain([first()], stream()), budget, seconds, stop_on_answer=True)
    await conn.wait_closed(3.0)
    return conn


async def flood(
    conn: Conn, chunks: Iterable[bytes], budget: int, seconds: float, stop_on_answer: bool = False,
) -> None:
    """Send ``chunks`` as fast as the server takes them, until it answers (with
    ``stop_on_answer``), closes or stops reading, or ``budget`` bytes or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    received = conn.received  # what was answered before (a kept-alive request's answer)
    for chunk in chunks:
        remaining = deadline - time.monotonic()
        if conn.closed.is_set() or (stop_on_answer and conn.received > received):
            return
        if conn.sent >= budget or remaining <= 0:
            return
        if not await conn.send(chunk, timeout=min(remaining, 5.0)):
            return


# 2. Subscriptions


def churn_batch(tag: str, start: int, pairs: int) -> bytes:
    """``pairs`` x (subscribe, unsubscribe) of fresh junk channel names."""
    return json_frames(
        m for i in range(start, start + pairs)
        for m in ({"op": "subscribe", "channel": f"junk-{tag}-{i}"},
                  {"op": "unsubscribe", "channel": f"junk-{tag}-{i}"})
    )


async def churn(
    port: int, source: str, seconds: float, tag: str, pairs: int = 50, window: int = 200,
) -> RawWs:
    """Subscribe and unsubscribe fresh junk channels, pipelined (``pairs`` to a write, at
    most ``window`` pairs unanswered: past the outbox bound, 4008 would end it at once),
    for ``seconds`` or until the server closes the connection."""
    ws = await RawWs.open(source, port)
    if not ws.open_ok:
        return ws
    deadline = time.monotonic() + seconds
    sent = [0]  # pairs

    def room() -> bool:
        return sent[0] - ws.messages["unsubscribed"] - ws.messages["error"] <= window - pairs

    while ws.close_code is None and not ws.conn.closed.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not await ws.wait_until(room, remaining):
            break
        if not await ws.send(churn_batch(tag, sent[0], pairs), timeout=max(0.1, remaining)):
            break
        sent[0] += pairs
    return ws


async def churn_on(port: int, source: str, seconds: float, tag: str) -> list[RawWs]:
    """``churn`` for ``seconds``, on a new connection whenever the server ends one."""
    sessions: list[RawWs] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sessions.append(await churn(port, source, remaining, f"{tag}-{len(sessions)}"))
        if not sessions[-1].open_ok:
            await asyncio.sleep(0.05)
    return sessions


async def hold_subscriptions(
    port: int, addresses: Iterable[str], channels: int, tag: str, concurrency: int = 50,
) -> list[RawWs]:
    """One WebSocket per address in ``addresses``, each subscribed to ``channels``
    never-published channels of its own (one write); returned once each has its
    snapshots (or gave up after 30 s)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, source: str) -> RawWs:
        async with gate:
            ws = await RawWs.open(source, port)
            if ws.open_ok:
                await ws.send(json_frames(
                    {"op": "subscribe", "channel": f"held-{tag}-{n}-{c}"} for c in range(channels)
                ))
                await ws.wait_messages("snapshot", channels, 30.0)
            return ws

    return list(await asyncio.gather(*(one(n, s) for n, s in enumerate(addresses))))


# 3. Slow connections


async def idle(port: int, source: str) -> Conn:
    """Connect and send nothing."""
    return await Conn.open(source, port)


async def drip(conn: Conn, first: bytes, byte: bytes, every: float, seconds: float) -> None:
    """Send ``first``, then ``byte`` every ``every`` seconds, until the server closes
    the connection or ``seconds`` pass."""
    if not await conn.send(first):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await conn.wait_closed(every) or not await conn.send(byte, timeout=1.0):
            return


def drip_heads() -> dict[str, Callable[[str], tuple[bytes, bytes]]]:
    """What each dripping attack sends first, and the byte it drips (``key``: an API key)."""
    return {
        "drip-http-head": lambda key: (request_head("GET", "/healthz", end=False) + b"X-Drip: ", b"a"),
        "drip-ws-head": lambda key: (
            request_head("GET", WS_PATH, upgrade_headers(), end=False) + b"X-Drip: ", b"a"),
        "drip-post-body": lambda key: (request_head("POST", "/v1/channels/attack/briefs", [
            ("Authorization", f"Bearer {key}"), ("Content-Type", "application/json"),
            ("Content-Length", "16000")]) + b'{"text": "', b"a"),
        "drip-post-body-no-key": lambda key: (request_head("POST", "/v1/channels/attack/briefs", [
            ("Content-Type", "application/json"), ("Content-Length", "16000")]) + b'{"text": "', b"a"),
    }


async def idle_after_request(port: int, source: str) -> Conn:
    """One request, answered, then nothing on the kept-alive connection."""
    conn = await Conn.open(source, port)
    await conn.send(request_head("GET", "/healthz"))
    await conn.wait_data(lambda: len(conn.answers()) >= 1, 5.0)
    return conn


# 5. WebSocket frame floods

FLOODS = {
    # name: (what is sent first, the frame repeated)
    "empty-continuations": (client_frame(TEXT, b"", fin=False), client_frame(CONT, b"", fin=False)),
    "empty-text-frames": (b"", client_frame(TEXT, b"")),
    "pings": (b"", client_frame(PING, b"")),
}


async def frame_flood(port: int, source: str, kind: str, seconds: float, chunk: int = 65536) -> RawWs:
    """One WebSocket sending the frames ``kind`` names as fast as the server reads, until
    it closes the connection or ``seconds`` pass."""
    ws = await RawWs.open(source, port)
    if not ws.open_ok:
        return ws
    first, frame = FLOODS[kind]
    block = frame * (chunk // len(frame))
    await flood(ws.conn, itertools.chain([first], itertools.repeat(block)), 1 << 40, seconds)
    return ws


@dataclass
class Tally:
    """Outcomes of many attacker connections: ``{"431+closed": 3, ...}``."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str) -> None:
        self.counts[what] += 1

    def __str__(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in self.counts.most_common()) or "-"
