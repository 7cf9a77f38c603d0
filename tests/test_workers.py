"""ticker.supervisor: ``ticker serve --workers 2`` as a user runs it, watched from outside.

Connections are counted per worker from /proc (each worker's socket inodes against
/proc/net/tcp), so the balance measured is the kernel's (``SO_REUSEPORT``), not ticker's
own account. Every process is killed in a ``finally``; every wait has a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from tests.attackers import ROOT, _hex_address, free_port
from tests.conftest import eventually
from ticker.auth import KeyStore
from ticker.embedded import EmbeddedRedis, die_with_parent

START_TIMEOUT = 30.0
WAIT = 30.0  # bound of every wait for the server's state to change
SOURCES = [f"127.0.0.{i}" for i in range(2, 6)]  # client addresses, as from several machines


class WorkersServe:
    """``python -m ticker serve --workers N --port <free>``, with ``TICKER_<NAME>`` settings.
    ``kill`` ends the supervisor and anything left of its workers: call it in a ``finally``."""

    def __init__(self, log: Path, workers: int = 2, redis_url: str = "", **settings: object) -> None:
        self.log = log
        self.workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TICKER_") and k not in ("REDIS_URL", "PORT")}
        env.update(TICKER_LOG_LEVEL="warning", TICKER_PUBLISH_RATE_PER_MINUTE="0",
                   TICKER_SHUTDOWN_DRAIN="0.5", TICKER_MAX_CONNECTIONS_PER_ADDRESS="0")
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update({f"TICKER_{name.upper()}": str(value) for name, value in settings.items()})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every process seen: the supervisor, workers, store

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not started"
        return self.proc.pid

    async def start(self) -> WorkersServe:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ticker", "serve", "--workers", str(self.workers),
                 "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                preexec_fn=die_with_parent,
            )
        self.seen.add(self.proc.pid)
        await self.until_serving()
        return self

    async def until_serving(self, old: frozenset[int] = frozenset()) -> list[int]:
        """Wait until ``workers`` workers listen, none of them in ``old``'s dead; their PIDs
        (``old``: PIDs before a restart, of which at least one must have been replaced)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ticker serve exited:\n{self.log_tail()}")
            pids = self.worker_pids()
            if (len(pids) == self.workers and all(self.listens(pid) for pid in pids)
                    and (not old or set(pids) - old)):
                self.seen.update(pids)
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not up in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def children(self) -> dict[int, str]:
        """The supervisor's child processes: PID and command line."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                if int(stat.rsplit(")", 1)[1].split()[1]) != self.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode()
        return found

    def worker_pids(self) -> list[int]:
        return sorted(pid for pid, cmd in self.children().items() if "--worker-of" in cmd)

    def _inodes(self, pid: int) -> set[str]:
        inodes = set()
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"{fd_dir}/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        return inodes

    def _tcp(self) -> list[tuple[int, tuple[str, int], str, str]]:
        """Sockets on the service's port: (local port, remote address, state, inode)."""
        rows = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local = int(parts[1].rsplit(":", 1)[1], 16)
                    if local == self.port:
                        host, port = parts[2].rsplit(":", 1)
                        rows.append((local, (_hex_address(host), int(port, 16)), parts[3], parts[9]))
        return rows

    def listens(self, pid: int) -> bool:
        inodes = self._inodes(pid)
        return any(state == "0A" and inode in inodes for _, _, state, inode in self._tcp())

    def connections(self) -> dict[int, set[tuple[str, int]]]:
        """Per worker PID: the client addresses of the connections it holds."""
        rows = self._tcp()
        held = {}
        for pid in self.worker_pids():
            inodes = self._inodes(pid)
            held[pid] = {remote for _, remote, state, inode in rows
                         if state != "0A" and inode in inodes}
        return held

    def kill(self) -> None:
        """SIGKILL the supervisor (if still running) and anything it left."""
        for pid in [self.pid, *self.children()] if self.proc is not None else []:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def alive(pid: int) -> bool:
    """Running, or a zombie not yet reaped (the supervisor reaps its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "X"
    except OSError:
        return False


class Client:
    """A WebSocket subscriber that behaves as ticker's clients do: it keeps the last
    cursor and the epoch, and when the connection is lost it reconnects and resumes."""

    def __init__(self, port: int, channel: str, source: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        self.channel = channel
        self.source = source
        self.ws: Any = None
        self.cursor = ""
        self.epoch = ""
        self.ids: list[str] = []  # brief ids received live or on resume, in order
        self.losses = 0  # connections lost (closed without a close frame, or 1012)
        self.codes: list[int | None] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.ws.local_address[:2]
        return str(host), int(port)

    async def connect(self) -> None:
        self.ws = await websockets.connect(
            self.url, subprotocols=["ticker.v1"],  # type: ignore[list-item]
            local_addr=(self.source, 0), open_timeout=10,
        )
        subscribe: dict[str, Any] = {"op": "subscribe", "channel": self.channel}
        if self.cursor:
            subscribe.update(since=self.cursor, epoch=self.epoch)
        await self.ws.send(orjson.dumps(subscribe).decode())
        first = orjson.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first["type"] == "snapshot":
            assert not self.cursor, f"a resume was refused: {first}"
            self.cursor, self.epoch = first["cursor"], first["epoch"]
        else:
            assert first == {"type": "subscribed", "channel": self.channel,
                             "recovered": True, "epoch": self.epoch}, first

    async def follow(self, until: str) -> None:
        """Read until the brief ``until``, reconnecting whenever the connection is lost."""
        while not self.ids or self.ids[-1] != until:
            try:
                message = orjson.loads(await self.ws.recv())
            except websockets.ConnectionClosed as exc:
                self.losses += 1
                self.codes.append(exc.rcvd.code if exc.rcvd else None)
                for attempt in itertools.count():
                    await asyncio.sleep(0.05 * min(attempt, 10))
                    try:
                        await self.connect()
                        break
                    except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed,
                            TimeoutError):
                        if attempt > 100:
                            raise
                continue
            assert message["type"] == "brief", message
            self.ids.append(message["brief"]["id"])
            self.cursor = message["cursor"]

    async def until_closed(self) -> int | None:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), WAIT)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def publish(base: str, key: str, channel: str, text: str) -> str:
    """One brief, on a connection of its own (a kept-alive one may be to a killed worker)."""
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        r = await http.post(f"/v1/channels/{channel}/briefs", json={"text": text},
                            headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    brief_id: str = r.json()["id"]
    return brief_id


async def scrape(base: str) -> dict[str, float]:
    """``GET /metrics`` on a connection of its own (the kernel picks the worker), as
    {sample name with labels: value}."""
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def until_scraped(base: str, expected: dict[str, float]) -> dict[str, float]:
    """Scrape until the samples named in ``expected`` have those values (each worker
    copies its figures into the shared files every second); the last scrape."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = await scrape(base)
        if all(samples.get(name) == value for name, value in expected.items()):
            return samples
        assert time.monotonic() < deadline, (
            {name: samples.get(name) for name in expected}, expected,
        )
        await asyncio.sleep(0.1)


async def connect_all(port: int, channel: str, count: int) -> list[Client]:
    clients = [Client(port, channel, SOURCES[i % len(SOURCES)]) for i in range(count)]
    limit = asyncio.Semaphore(50)

    async def one(client: Client) -> None:
        async with limit:
            await client.connect()

    await asyncio.gather(*(one(c) for c in clients))
    return clients


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None),
                         return_exceptions=True)


def per_worker(server: WorkersServe, clients: list[Client]) -> dict[int, list[Client]]:
    held = server.connections()
    return {pid: [c for c in clients if c.address in ports] for pid, ports in held.items()}


@pytest.fixture
async def key(redis_client: aioredis.Redis) -> str:
    return await KeyStore(redis_client).create(f"workers-{uuid.uuid4().hex[:8]}", ["*"])


async def test_connections_land_on_every_worker_and_a_brief_reaches_each_once(
    redis_server: EmbeddedRedis, key: str, tmp_path: Path
) -> None:
    server = WorkersServe(tmp_path / "serve.log", redis_url=redis_server.url)
    clients: list[Client] = []
    try:
        await server.start()
        channel = f"w-{uuid.uuid4().hex[:8]}"
        clients = await connect_all(server.port, channel, 200)
        shares = {pid: len(held) for pid, held in per_worker(server, clients).items()}
        print(f"\n200 subscribers per worker: {shares}")
        assert len(shares) == 2 and sum(shares.values()) == 200, shares
        assert all(n >= 40 for n in shares.values()), shares  # each at least 20%
        brief = await publish(server.base, key, channel, "One brief for everyone")
        await asyncio.wait_for(asyncio.gather(*(c.follow(brief) for c in clients)), WAIT)
        assert all(c.ids == [brief] for c in clients)
        for c in clients:  # and nothing more
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.ws.recv(), 0.01)
    finally:
        await close_all(clients)
        server.kill()


async def test_metrics_and_readers_counts_describe_every_worker(
    redis_server: EmbeddedRedis, key: str, tmp_path: Path
) -> None:
    """Each worker holds part of the subscribers; every scrape, whichever worker answers
    it, counts all of them (no worker alone has them all), and so does ``/v1/channels``."""
    server = WorkersServe(tmp_path / "serve.log", redis_url=redis_server.url,
                          readers_report_interval=0.5)
    clients: list[Client] = []
    try:
        await server.start()
        channel = f"w-{uuid.uuid4().hex[:8]}"
        clients = await connect_all(server.port, channel, 60)
        shares = {pid: len(held) for pid, held in per_worker(server, clients).items()}
        assert len(shares) == 2 and all(0 < n < 60 for n in shares.values()), shares
        brief = await publish(server.base, key, channel, "Counted everywhere")
        await asyncio.wait_for(asyncio.gather(*(c.follow(brief) for c in clients)), WAIT)

        expected = {
            "ticker_workers": 2, "ticker_connections": 60,
            f'ticker_subscriptions{{channel="{channel}"}}': 60,
            "ticker_events_delivered_total": 60, "ticker_reader_up": 1,
        }
        await until_scraped(server.base, expected)
        for _ in range(8):  # new connections: the kernel hands them to either worker
            samples = await scrape(server.base)
            assert {name: samples.get(name) for name in expected} == expected
            assert samples["ticker_resident_memory_bytes"] > 2 * 20 * 2**20  # two interpreters
            assert samples["ticker_publish_seconds_count"] == 1
            assert "process_resident_memory_bytes" not in samples  # it would be one worker's

        async with httpx.AsyncClient(base_url=server.base, timeout=10, trust_env=False) as http:

            async def all_readers_counted() -> bool:
                listed = (await http.get("/v1/channels")).json()["channels"]
                return {c["name"]: c["readers"] for c in listed}.get(channel) == 60

            await eventually(all_readers_counted, "/v1/channels counts the 60 readers", WAIT)

        await close_all(clients)
        clients = []
        samples = await until_scraped(server.base, {"ticker_connections": 0})
        # A channel that nobody follows any more is left out, not listed at 0.
        assert f'ticker_subscriptions{{channel="{channel}"}}' not in samples
    finally:
        await close_all(clients)
        server.kill()


async def test_a_killed_worker_is_replaced_and_its_clients_resume_on_the_others(
    redis_server: EmbeddedRedis, key: str, tmp_path: Path
) -> None:
    server = WorkersServe(tmp_path / "serve.log", redis_url=redis_server.url)
    clients: list[Client] = []
    try:
        await server.start()
        channel = f"w-{uuid.uuid4().hex[:8]}"
        await publish(server.base, key, channel, "Before anyone came")  # a real epoch
        clients = await connect_all(server.port, channel, 60)
        shares = per_worker(server, clients)
        victim, survivor = sorted(shares, key=lambda pid: -len(shares[pid]))
        assert shares[victim] and shares[survivor], {p: len(c) for p, c in shares.items()}
        seen = await publish(server.base, key, channel, "Seen by all")  # counted by both
        await asyncio.wait_for(asyncio.gather(*(c.follow(seen) for c in clients)), WAIT)
        await until_scraped(server.base, {"ticker_events_delivered_total": 60})
        for c in clients:
            c.ids.clear()
        followers = [asyncio.create_task(c.follow("never")) for c in clients]

        os.kill(victim, signal.SIGKILL)
        during = [await publish(server.base, key, channel, f"During {i}") for i in range(5)]
        await server.until_serving(old=frozenset({victim, survivor}))
        assert victim not in server.worker_pids()
        after = [await publish(server.base, key, channel, f"After {i}") for i in range(5)]
        expected = during + after

        async def received_all() -> None:
            while not all(c.ids[-len(expected):] == expected for c in clients):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(received_all(), WAIT)
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for c in clients:
            assert c.ids == expected, (c.ids, expected)  # nothing missed, nothing twice
        lost = {id(c) for c in clients if c.losses}
        assert lost == {id(c) for c in shares[victim]}  # the killed worker's, and only them
        assert all(c.codes == [None] for c in shares[victim])  # lost: no close frame
        assert f"(pid {victim}) exited (killed by SIGKILL)" in server.log_tail()
        # The metrics: the dead worker's gauges are gone, its counts stay in the totals.
        # (Its clients' briefs of the outage came to them as a resume, not as the fan-out's
        # deliveries, so only the survivor's clients count for those: a lower bound.)
        samples = await until_scraped(server.base, {"ticker_workers": 2, "ticker_connections": 60})
        survivors = len(shares[survivor])
        assert samples["ticker_events_delivered_total"] >= 60 + survivors * len(expected)
    finally:
        await close_all(clients)
        server.kill()


async def test_sigterm_closes_every_client_with_1012_and_leaves_no_process(
    tmp_short: Path, tmp_path: Path
) -> None:
    server = WorkersServe(tmp_path / "serve.log", data_dir=tmp_short)
    clients: list[Client] = []
    try:
        await server.start()
        store = [pid for pid, cmd in server.children().items() if "valkey-server" in cmd]
        assert len(store) == 1, server.children()  # one store, the supervisor's
        server.seen.update(store)
        client = aioredis.Redis.from_url(f"unix://{tmp_short}/redis.sock")
        try:
            key = await KeyStore(client).create("workers", ["*"])
        finally:
            await client.aclose()
        channel = "world"
        clients = await connect_all(server.port, channel, 40)
        assert all(per_worker(server, clients).values())
        brief = await publish(server.base, key, channel, "Through the embedded store")
        await asyncio.wait_for(asyncio.gather(*(c.follow(brief) for c in clients)), WAIT)

        os.kill(server.pid, signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(c.until_closed() for c in clients)), WAIT)
        assert set(codes) == {1012}, Counter(codes)
        assert server.proc is not None and server.proc.wait(WAIT) == 0, server.log_tail()
        left = [pid for pid in server.seen if alive(pid)]
        assert not left, left
    finally:
        await close_all(clients)
        server.kill()


async def test_a_store_that_cannot_be_restarted_turns_every_workers_healthz_503(
    tmp_short: Path, tmp_path: Path
) -> None:
    """The supervisor runs the embedded store, but the probes ask the workers: while the
    store cannot be restarted, every worker's ``/healthz`` says why; once it can, 200."""
    server = WorkersServe(tmp_path / "serve.log", data_dir=tmp_short)
    try:
        await server.start()
        store = [pid for pid, cmd in server.children().items() if "valkey-server" in cmd]
        assert len(store) == 1, server.children()

        async def healthz() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.base, timeout=10, trust_env=False) as h:
                return await h.get("/healthz")

        assert (await healthz()).status_code == 200
        # A manifest valkey-server cannot read: it exits at every start until repaired.
        manifest = tmp_short / "appendonlydir" / "ticker.aof.manifest"
        good = manifest.read_bytes()
        manifest.write_bytes(b"this is not a manifest\n")
        os.kill(store[0], signal.SIGKILL)

        async def healthz_is(status: int) -> bool:
            return (await healthz()).status_code == status

        await eventually(lambda: healthz_is(503), "a worker's /healthz says 503", WAIT)
        for _ in range(8):  # new connections: the kernel hands them to either worker
            r = await healthz()
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "Invalid AOF manifest file format" in r.json()["detail"], r.json()
        assert "cannot be restarted" in server.log_tail()

        manifest.write_bytes(good)  # repaired: the supervisor's next attempt starts it
        await eventually(lambda: healthz_is(200), "a worker's /healthz says 200 again", WAIT)
        assert all([(await healthz()).status_code == 200 for _ in range(8)])
    finally:
        server.kill()


async def test_a_storm_of_connections_is_spread_evenly(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """2,000 connections (WebSocket handshakes) as fast as they come; the ratio of the
    busiest worker to the average, printed; a generous bound asserted."""
    server = WorkersServe(tmp_path / "serve.log", redis_url=redis_server.url)
    socks: list[asyncio.StreamWriter] = []
    try:
        await server.start()
        limit = asyncio.Semaphore(200)
        request = (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: ticker.v1\r\n\r\n"
        )

        async def one(i: int) -> None:
            async with limit:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", server.port, local_addr=(SOURCES[i % len(SOURCES)], 0)
                )
                socks.append(writer)
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write(request.replace("{key}", key).encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert head.startswith(b"HTTP/1.1 101"), head

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(2000))), 120)
        counts = {pid: len(ports) for pid, ports in server.connections().items()}
        assert sum(counts.values()) == 2000, counts
        ratio = max(counts.values()) / (2000 / len(counts))
        print(f"\n2,000 connections over 2 workers: {sorted(counts.values())}; "
              f"busiest / average = {ratio:.3f}")
        assert ratio <= 1.5
    finally:
        for writer in socks:
            writer.close()
        server.kill()


def test_workers_auto_and_bad_values(tmp_path: Path) -> None:
    from ticker.cli import _parser
    from ticker.config import cpu_count

    assert _parser().parse_args(["serve", "--workers", "auto"]).workers == cpu_count()
    assert _parser().parse_args(["serve", "--workers", "3"]).workers == 3
    result = subprocess.run(
        [sys.executable, "-m", "ticker", "serve", "--workers", "0"],
        cwd=ROOT, capture_output=True, timeout=30,
    )
    assert result.returncode == 2 and b"'auto'" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_refused_in_a_sentence_at_once(tmp_short: Path, workers: str) -> None:
    """Before anything starts (the store, the workers): a clear sentence, and an exit."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKER_")}
        env.pop("REDIS_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "ticker", "serve", "--workers", workers, "--port", str(port)],
            cwd=ROOT, env={**env, "TICKER_DATA_DIR": str(tmp_short)}, capture_output=True,
            timeout=WAIT, preexec_fn=die_with_parent,
        )
    assert result.returncode == 1, result
    assert result.stderr.decode().strip() == (
        f"ticker: Cannot listen on 127.0.0.1:{port}: Address already in use. Is another "
        "server (another ticker?) using it? Stop it, or choose another port with --port."
    )
    assert not (tmp_short / "redis.sock").exists()  # no store was started


def test_a_killed_supervisors_run_directory_is_removed_by_the_next_one() -> None:
    """SIGKILL leaves the supervisor no time to remove its run directory: the next
    supervisor removes those whose process is gone, and only those."""
    from ticker.supervisor import RunDir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = Path(tempfile.gettempdir())
    left = base / f"{RunDir.PREFIX}{dead.pid}-left"
    live = base / f"{RunDir.PREFIX}{os.getpid()}-live"
    new = None
    try:
        for path in (left, live):
            (path / "metrics").mkdir(parents=True)
        new = RunDir.create()
        assert not left.exists() and live.exists() and new.metrics.is_dir()
        assert new.path.name.startswith(f"{RunDir.PREFIX}{os.getpid()}-")
    finally:
        for path in (left, live):
            shutil.rmtree(path, ignore_errors=True)
        if new is not None:
            new.remove()
