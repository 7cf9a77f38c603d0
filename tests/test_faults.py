"""Faults with real processes: Redis killed with SIGKILL and restarted from its
append-only file during a stream of publishes; ``ticker serve`` stopped and started
again on the same data directory; ``ticker keys`` with no server running.

Every process started here is ended in a ``finally`` by its own id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from tests.conftest import DEADLINE, Subscriber, eventually, run_service, tcp_socket, until_closed
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis
from ticker.protocol import SUBPROTOCOL, Close

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parent.parent
# Redis killed during publishes


async def test_redis_killed_and_restarted_from_its_aof_loses_no_acknowledged_brief(
    tmp_short: Path,
) -> None:
    # The embedded default's configuration (config/redis.conf), as the service ships it.
    redis_server = EmbeddedRedis(tmp_short / "redis")
    redis_server.start()
    try:
        settings = Settings(
            redis_url=redis_server.url, log_level="error", shutdown_drain=1.0,
            reconnect_max_delay=0.5, reader_block_ms=1000,
        )
        async with run_service(settings, tcp_socket()) as service:
            client = aioredis.Redis.from_url(redis_server.url)
            service.key = await KeyStore(client).create("test", ["*"])
            await client.aclose()
            await _publish_through_an_outage(service, redis_server)
    finally:
        redis_server.stop()
        shutil.rmtree(tmp_short, ignore_errors=True)


async def _publish_through_an_outage(service: Any, redis_server: EmbeddedRedis) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"

    count = 60
    acknowledged: list[dict[str, Any]] = []
    unavailable = 0
    halfway = asyncio.Event()
    failed_once = asyncio.Event()

    async def publisher() -> None:
        nonlocal unavailable
        for i in range(count):
            headers = {**service.auth(), "Idempotency-Key": f"brief-{i}"}
            for _ in range(600):  # at most ~30 s of retries for one brief
                r = await service.http.post(
                    "/v1/channels/world/briefs", json={"text": f"brief {i}"}, headers=headers
                )
                if r.status_code == 201:
                    acknowledged.append(r.json())
                    break
                assert r.status_code == 503, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert int(r.headers["retry-after"]) > 0
                unavailable += 1
                failed_once.set()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"brief {i} was never acknowledged")
            if i == count // 3:
                halfway.set()

    async def readyz() -> int:
        status: int = (await service.http.get("/readyz")).status_code
        return status

    task = asyncio.create_task(publisher())
    try:
        await asyncio.wait_for(halfway.wait(), DEADLINE)
        redis_server.kill()
        await eventually(lambda: _is(readyz(), 503), "/readyz says 503 while Redis is down")
        await asyncio.wait_for(failed_once.wait(), DEADLINE)  # publishing really hit the outage
        # A new subscriber of a channel this process follows is served from memory and
        # waits for the rest like the others; one of a channel it does not follow cannot
        # be, and is told to come back later. The old one stays.
        late = await service.subscriber()
        await late.subscribe("world")
        assert (await late.recv())["type"] == "snapshot"
        other = await service.subscriber()
        await other.subscribe("sport")
        messages, code, reason = await until_closed(other)
        assert (messages, code) == ([], Close.TRY_AGAIN_LATER) and "later" in reason
        # A read of that channel over HTTP: 503, and not told that nothing was written.
        r = await service.http.get("/v1/channels/sport/briefs")
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert r.json()["detail"] == "The store could not be read right now; retry shortly."
        assert not task.done()
        await asyncio.to_thread(redis_server.start)  # same directory: loads the AOF
        await asyncio.wait_for(task, DEADLINE * 2)
    finally:
        task.cancel()
    await eventually(lambda: _is(readyz(), 200), "/readyz says 200 once Redis is back")
    assert unavailable > 0

    # Every acknowledged brief, once, in order, on a subscriber connected throughout.
    assert len(acknowledged) == count
    ids = [b["id"] for b in acknowledged]
    assert len(set(ids)) == count
    assert ids == sorted(ids, key=lambda s: tuple(map(int, s.split("-"))))
    got = await sub.recv_until(count)
    assert [(m["type"], m["cursor"]) for m in got] == [("brief", i) for i in ids]
    assert [m["brief"] for m in got] == acknowledged
    # The one that came during the outage: everything after its snapshot, once.
    late_got = []
    while not late_got or late_got[-1]["cursor"] != ids[-1]:
        late_got.append(await late.recv())
    assert [m["cursor"] for m in late_got] == ids[len(ids) - len(late_got):]
    sentinel = await service.publish("world", "after the outage")
    for reader in (sub, late):
        assert (await reader.recv())["cursor"] == sentinel["id"]  # nothing twice before it
    await late.close()

    listed = (await service.http.get("/v1/channels/world/briefs?limit=200")).json()
    assert [b["id"] for b in listed["briefs"]] == [sentinel["id"], *reversed(ids)]
    await sub.close()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


# ticker serve, as a user runs it


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("TICKER_") and k not in ("REDIS_URL", "PORT")
    }
    env.update(TICKER_DATA_DIR=str(data_dir), TICKER_LOG_LEVEL="warning", TICKER_SHUTDOWN_DRAIN="2")
    return env


def _valkey_pids(data_dir: Path) -> list[int]:
    """The valkey-server processes serving ``data_dir``. Valkey rewrites its process
    title to ``valkey-server unixsocket:<path>``, so match the socket path (or the
    ``--dir`` argument, should the title be left alone)."""
    resolved = data_dir.resolve()
    needles = (str(resolved / "redis.sock").encode(), str(resolved).encode())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = cmdline.split(b"\0")
        if b"valkey-server" in args[0] and (
            needles[0] in cmdline or needles[1] in args
        ):
            pids.append(int(entry.name))
    return pids


class Ticker:
    """``python -m ticker serve`` on a data directory and port; every process it starts
    is ended by ``cleanup``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ticker", *args], cwd=REPO, env=_env(self.data_dir),
            capture_output=True, text=True, timeout=DEADLINE, check=False,
        )

    def create_key(self, name: str = "t") -> str:
        done = self.run("keys", "create", "--name", name, "--channel", "*")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tk_"), done.stdout
        return lines[0]

    async def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ticker", "serve", "--port", str(self.port)],
                cwd=REPO, env=_env(self.data_dir), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log,
            )
        self.processes.append(proc)

        async def ready() -> bool:
            assert proc.poll() is None, f"ticker serve exited: {self.log.read_text()[-2000:]}"
            try:
                async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
                    return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, "ticker serve is ready")
        return proc

    async def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        proc.send_signal(sig)
        code = await asyncio.to_thread(proc.wait, DEADLINE)
        # The embedded server goes with it.
        await eventually(
            lambda: _const(not _valkey_pids(self.data_dir)),
            f"no valkey-server of {self.data_dir} remains",
        )
        return code

    def cleanup(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in _valkey_pids(self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _const(value: bool) -> bool:
    return value


@pytest.fixture
def ticker(tmp_short: Path) -> Iterator[Ticker]:
    t = Ticker(tmp_short / "var")
    try:
        yield t
    finally:
        t.cleanup()
        shutil.rmtree(tmp_short, ignore_errors=True)


async def _subscriber(t: Ticker) -> Subscriber:
    ws = await websockets.connect(f"ws://127.0.0.1:{t.port}/v1/ws", subprotocols=[SUBPROTOCOL])  # type: ignore[list-item]
    return Subscriber(ws)


async def _publish(http: httpx.AsyncClient, key: str, text: str) -> dict[str, Any]:
    r = await http.post(
        "/v1/channels/world/briefs", json={"text": text}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 201, r.text
    brief: dict[str, Any] = r.json()
    return brief


async def test_ticker_serve_restarted_keeps_briefs_and_clients_get_1012_then_resume(
    ticker: Ticker,
) -> None:
    first = await ticker.start()
    assert len(_valkey_pids(ticker.data_dir)) == 1  # the embedded server, on the data dir
    key = ticker.create_key()  # while the server runs: the same store
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        await _publish(http, key, "before anyone listens")
        sub = await _subscriber(ticker)
        await sub.subscribe("world")
        snapshot = await sub.recv()
        assert snapshot["type"] == "snapshot" and len(snapshot["briefs"]) == 1
        before = [await _publish(http, key, f"brief {i}") for i in range(5)]

        # SIGTERM: what was queued is sent, then 1012; the process and its Redis exit.
        # uvicorn ends a graceful shutdown by raising the captured signal again.
        assert await ticker.stop(first) == -signal.SIGTERM
        messages, code, reason = await until_closed(sub)
        assert code == Close.SERVICE_RESTART, (code, reason)
        assert [m["type"] for m in messages] == ["brief"] * len(messages)
        ids = [b["id"] for b in before]
        assert [m["cursor"] for m in messages] == ids[: len(messages)]

    await ticker.start()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        listed = (await http.get("/v1/channels/world/briefs")).json()
        assert [b["id"] for b in listed["briefs"]] == [*reversed(ids), snapshot["cursor"]]
        assert listed["epoch"] == snapshot["epoch"]

        cursor = messages[-1]["cursor"] if messages else snapshot["cursor"]
        sub = await _subscriber(ticker)
        await sub.subscribe("world", since=cursor, epoch=snapshot["epoch"])
        first_message = await sub.recv()
        assert first_message["type"] == "subscribed" and first_message["recovered"] is True
        missed = ids[len(messages):]
        got = await sub.recv_until(len(missed))
        assert [m["cursor"] for m in got] == missed

        after = [await _publish(http, key, f"after restart {i}") for i in range(3)]
        got = await sub.recv_until(3)
        assert [m["brief"] for m in got] == after
        last = await _publish(http, key, "last")
        assert (await sub.recv())["cursor"] == last["id"]  # nothing twice before it
        await sub.close()


async def test_ticker_serve_killed_takes_its_embedded_redis_with_it_and_restarts_with_every_brief(
    ticker: Ticker,
) -> None:
    proc = await ticker.start()
    key = ticker.create_key()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        published = [await _publish(http, key, f"brief {i}") for i in range(5)]
    await ticker.stop(proc, signal.SIGKILL)  # no shutdown at all: the kernel ends Redis
    await ticker.start()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        listed = (await http.get("/v1/channels/world/briefs")).json()
        assert [b["id"] for b in listed["briefs"]] == [b["id"] for b in reversed(published)]
        await _publish(http, key, "the key still works")


async def test_keys_create_without_a_running_server_starts_and_stops_the_embedded_one(
    ticker: Ticker,
) -> None:
    key = ticker.create_key("cms")
    assert not _valkey_pids(ticker.data_dir)  # stopped again after the command
    assert (ticker.data_dir / "appendonlydir").is_dir()
    listed = ticker.run("keys", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("cms\tpublisher\t*\t"), listed
    assert not _valkey_pids(ticker.data_dir)

    proc = await ticker.start()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        brief = await _publish(http, key, "published with a key made offline")
        assert brief["text"] == "published with a key made offline"
        r = await http.post(
            "/v1/channels/world/briefs", json={"text": "x"},
            headers={"Authorization": "Bearer tk_wrong"},
        )
        assert r.status_code == 401
    revoked = ticker.run("keys", "revoke", "cms")  # while it runs: the same store
    assert revoked.returncode == 0, revoked.stderr
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        r = await http.post(
            "/v1/channels/world/briefs", json={"text": "x"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 401
    assert await ticker.stop(proc) == -signal.SIGTERM


async def test_reader_survives_a_redis_error_that_is_not_a_lost_connection(
    service: Any, redis_client: aioredis.Redis
) -> None:
    """A command error (here WRONGTYPE: a log key that is not a stream) must not kill the
    stream reader: /readyz says 503 while it lasts, and once it is gone live delivery
    resumes from where it stopped, losing nothing."""
    sub = await service.subscriber()
    await sub.subscribe("world")
    assert (await sub.recv())["type"] == "snapshot"
    await sub.subscribe("broken")
    assert (await sub.recv())["type"] == "snapshot"
    await redis_client.set("ticker:{broken}:log", "not a stream")
    # Listed and rung as a publish would do: the reader reads a log only when the bell
    # names its channel, or when it sweeps the channels that exist.
    await redis_client.sadd("ticker:channels", "broken")
    await redis_client.xadd("ticker:bell", {"c": "broken"})

    async def readyz() -> int:
        return (await service.http.get("/readyz")).status_code

    await eventually(lambda: _is(readyz(), 503), "/readyz answers 503 while XREAD fails")
    first = await service.publish("world", "published while the reader fails")
    await redis_client.delete("ticker:{broken}:log")
    await eventually(lambda: _is(readyz(), 200), "/readyz answers 200 again")
    second = await service.publish("world", "published after")
    got = await sub.recv_until(2)
    assert [m["brief"]["id"] for m in got] == [first["id"], second["id"]]
    await sub.close()
