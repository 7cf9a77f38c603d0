"""Many nodes behind a real nginx (docs/deployment.md): Debian's ``nginx``, started on a
free port with the configuration generated from the block in docs/deployment.md, in
front of real ``python -m ticker serve`` processes sharing the session's Redis.

Subscribers (WebSocket and Server-Sent Events) connect through nginx and receive every
brief published through nginx; one node killed with SIGKILL mid-stream: its clients
reconnect through nginx to a live node and resume from their cursors, and in the end
each has every acknowledged brief exactly once, in order. The client address ticker
limits is the one nginx forwards, not nginx's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.attackers import ROOT, TickerServe, free_port
from ticker.embedded import EmbeddedRedis

pytestmark = pytest.mark.faults

DOC = ROOT / "docs" / "deployment.md"
BEGIN, END = "# ticker-nginx-begin", "# ticker-nginx-end"
START_TIMEOUT = 15.0


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail("nginx is not installed: run scripts/install (it installs Debian's nginx).")
    return found


def site_config(listen: str, nodes: list[str]) -> str:
    """The block between ``# ticker-nginx-begin`` and ``# ticker-nginx-end`` in
    docs/deployment.md, with its placeholders filled in: the ``{{NODE}}`` line once per node."""
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"docs/deployment.md lost its {BEGIN} / {END} block"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines: list[str] = []
    for line in block.splitlines():
        if "{{NODE}}" in line:
            lines.extend(line.replace("{{NODE}}", node) for node in nodes)
        else:
            lines.append(line.replace("{{LISTEN_PORT}}", listen))
    config = "\n".join(lines)
    left = re.findall(r"\{\{\w+\}\}", config)
    assert not left, f"placeholders the test does not know in docs/deployment.md: {left}"
    return config


def nginx_config(prefix: Path, site: str) -> str:
    """A whole nginx.conf around the site block: everything nginx writes goes under
    ``prefix`` (pid, logs, temp files), so it runs as any user next to a system nginx."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {name}_temp_path {prefix / name};" for name in kinds)
    return f"""
worker_processes 2;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{
    worker_connections 1024;
}}
http {{
    access_log {prefix / "access.log"};
{temp}
{site}
}}
"""


class Nginx:
    """``nginx -p <tmp> -c <tmp>/nginx.conf -g 'daemon off;'`` in a child process."""

    def __init__(self, nodes: list[TickerServe]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="tk-nginx-"))
        self.prefix.chmod(0o755)  # workers run as an unprivileged user when we are root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/ws"
        site = site_config(f"127.0.0.1:{self.port}", [f"127.0.0.1:{n.port}" for n in nodes])
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(nginx_config(self.prefix, site))
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Nginx:
        binary = nginx_binary()
        command = [binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                   "-c", str(self.conf), "-g", "daemon off;"]
        check = subprocess.run([*command[:-2], "-t"], capture_output=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the configuration:\n{check.stderr.decode()}"
        with (self.prefix / "stderr.log").open("ab") as out:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=self.base, timeout=2, trust_env=False) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx not up in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                text += (self.prefix / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def cluster(
    redis_server: EmbeddedRedis, tmp_path: Path, nodes: int, **settings: object
) -> AsyncIterator[tuple[list[TickerServe], Nginx]]:
    """``nodes`` ticker processes on one Redis, set as docs/deployment.md says (nginx is
    the trusted proxy, keepalive_timeout above nginx's), and nginx in front of them."""
    servers = [
        TickerServe(redis_server.url, tmp_path / f"node{i}.log", None, forwarded_allow_ips="127.0.0.1",
                    keepalive_timeout=75, **settings)
        for i in range(nodes)
    ]
    proxy: Nginx | None = None
    try:
        await asyncio.gather(*(s.start() for s in servers))
        proxy = Nginx(servers)
        await proxy.start()
        yield servers, proxy
    except BaseException:
        if proxy is not None:
            print("nginx:", proxy.log_tail(), sep="\n")
        for s in servers:
            print(f"node on {s.port}:", s.log_tail(), sep="\n")
        raise
    finally:
        if proxy is not None:
            proxy.stop()
        for s in servers:
            s.stop()


async def connections(node: TickerServe) -> int:
    """The node's open subscriber connections (its /metrics gauge)."""
    async with httpx.AsyncClient(base_url=node.base, timeout=5, trust_env=False) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^ticker_connections(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert match, "no ticker_connections in /metrics"
    return int(float(match.group(1)))


@dataclass
class Reader:
    """A subscriber that reconnects through nginx with full jitter and resumes from its
    cursor; ``got`` holds the brief ids received, in order."""

    name: str
    got: list[str] = field(default_factory=list)
    cursor: str | None = None
    epoch: str | None = None
    connects: int = 0
    drops: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            if self.cursor is not None:
                self.problems.append(f"{self.name}: a snapshot instead of a resume from {self.cursor}")
            self.cursor, self.epoch = message["cursor"], message["epoch"]
            self.ready.set()
        elif kind == "subscribed":
            if not message["recovered"]:
                self.problems.append(f"{self.name}: resume from {self.cursor} not recovered")
        elif kind == "brief":
            self.got.append(message["brief"]["id"])
            self.cursor = message["cursor"]
        elif kind == "close":
            self.drops.append(f"close event {message['code']}")

    async def backoff(self, reason: str) -> None:
        self.drops.append(reason)
        await asyncio.sleep(random.uniform(0, 0.3))


async def ws_reader(reader: Reader, url: str, channel: str) -> None:
    while True:
        subscribe: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if reader.cursor is not None:
            subscribe.update(since=reader.cursor, epoch=reader.epoch)
        try:
            async with websockets.connect(
                url, subprotocols=["ticker.v1"], proxy=None, open_timeout=5  # type: ignore[list-item]
            ) as ws:
                reader.connects += 1
                await ws.send(orjson.dumps(subscribe).decode())
                async for raw in ws:
                    reader.on(orjson.loads(raw))
            await reader.backoff("closed")
        except (websockets.WebSocketException, OSError, TimeoutError) as exc:
            await reader.backoff(f"{type(exc).__name__}: {exc}")


async def sse_reader(reader: Reader, base: str, channel: str) -> None:
    timeout = httpx.Timeout(5, read=60)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, trust_env=False) as http:
        while True:
            headers, params = {}, {}
            if reader.cursor is not None:
                headers["Last-Event-ID"] = reader.cursor
                params["epoch"] = reader.epoch or ""
            try:
                async with http.stream(
                    "GET", f"/v1/channels/{channel}/events", headers=headers, params=params
                ) as response:
                    if response.status_code != 200:
                        await reader.backoff(f"status {response.status_code}")
                        continue
                    reader.connects += 1
                    data: list[str] = []
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif line == "" and data:
                            reader.on(orjson.loads("\n".join(data)))
                            data = []
                await reader.backoff("stream ended")
            except httpx.HTTPError as exc:
                await reader.backoff(f"{type(exc).__name__}: {exc}")


class Publisher:
    """Publishes through nginx; a 502/503/504 or a dropped connection is retried with the
    same Idempotency-Key, as a client would. ``acked`` holds the ids answered 201."""

    def __init__(self, base: str, key: str, channel: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=10, trust_env=False)
        self.headers = {"Authorization": f"Bearer {key}"}
        self.channel = channel
        self.acked: list[str] = []
        self.retries: list[str] = []
        self.run = uuid.uuid4().hex[:12]

    async def publish(self, n: int, deadline: float = 20.0) -> str:
        headers = {**self.headers, "Idempotency-Key": f"nginx-{self.run}-{n}"}
        give_up = time.monotonic() + deadline
        while True:
            try:
                r = await self.http.post(
                    f"/v1/channels/{self.channel}/briefs", json={"text": f"brief {n}"}, headers=headers
                )
            except httpx.TransportError as exc:
                outcome = f"{n}: {type(exc).__name__}"
            else:
                if r.status_code == 201:
                    brief_id: str = r.json()["id"]
                    self.acked.append(brief_id)
                    return brief_id
                assert r.status_code in (502, 503, 504), (r.status_code, r.text)
                outcome = f"{n}: {r.status_code}"
            self.retries.append(outcome)
            assert time.monotonic() < give_up, f"publish {n} never acknowledged: {self.retries}"
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        await self.http.aclose()


async def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        await asyncio.sleep(0.05)


async def test_subscribers_through_nginx_resume_exactly_on_another_node_after_a_sigkill(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Three nodes behind nginx; six WebSocket and two SSE subscribers through nginx. 40
    briefs through nginx, then the node holding the most subscribers is killed with
    SIGKILL, then 40 more: every subscriber ends with all 80 acknowledged briefs exactly
    once, in order, and those of the dead node reconnected and resumed (recovered: true)."""
    channel = f"nginx-{uuid.uuid4().hex[:8]}"
    async with cluster(redis_server, tmp_path, 3, max_connections_per_address=0) as (nodes, proxy):
        publisher = Publisher(proxy.base, await nodes[0].create_key(), channel)
        readers = [Reader(f"ws{i}") for i in range(6)] + [Reader(f"sse{i}") for i in range(2)]
        tasks: list[asyncio.Task[None]] = []
        try:
            await publisher.publish(-1)  # a brief before anyone subscribes: cursors are real
            publisher.acked.clear()
            for reader in readers:  # one at a time: nginx deals them round-robin over the nodes
                if reader.name.startswith("ws"):
                    tasks.append(asyncio.create_task(ws_reader(reader, proxy.ws_url, channel)))
                else:
                    tasks.append(asyncio.create_task(sse_reader(reader, proxy.base, channel)))
                await asyncio.wait_for(reader.ready.wait(), 10)

            counts = [await connections(node) for node in nodes]
            assert sum(counts) == len(readers) and all(counts), f"subscribers per node: {counts}"
            victim = nodes[counts.index(max(counts))]

            for n in range(40):
                await publisher.publish(n)
                await asyncio.sleep(0.01)
            os.kill(victim.pid, signal.SIGKILL)
            for n in range(40, 80):
                await publisher.publish(n)
                await asyncio.sleep(0.01)

            await wait_for(
                lambda: all(len(r.got) >= len(publisher.acked) for r in readers), 30,
                lambda: f"not everything arrived: {[(r.name, len(r.got), r.drops) for r in readers]}",
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.aclose()

        assert len(publisher.acked) == 80
        for reader in readers:
            assert reader.got == publisher.acked, (
                f"{reader.name}: {len(reader.got)} received for {len(publisher.acked)} acknowledged; "
                f"duplicates {len(reader.got) - len(set(reader.got))}, "
                f"missing {sorted(set(publisher.acked) - set(reader.got))[:5]}"
            )
        assert not [p for r in readers for p in r.problems], [p for r in readers for p in r.problems]
        moved = [r for r in readers if r.connects > 1]
        assert len(moved) == max(counts), (
            f"{max(counts)} subscribers were on the killed node, {len(moved)} reconnected: "
            f"{[(r.name, r.connects, r.drops) for r in readers]}"
        )


async def open_ws(url: str, source: str, channel: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """A WebSocket to nginx from the loopback address ``source``: (it, its first message
    after a subscribe, or the close as {"type": "closed", "code", "reason"})."""
    ws = await websockets.connect(
        url, subprotocols=["ticker.v1"], proxy=None, open_timeout=5,  # type: ignore[list-item]
        local_addr=(source, 0), **kwargs,
    )
    try:
        await ws.send(orjson.dumps({"op": "subscribe", "channel": channel}).decode())
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        return ws, {"type": "closed", "code": code, "reason": reason}
    return ws, message


async def test_ticker_limits_the_address_nginx_forwards_not_nginx_itself(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """max_connections_per_address 2 on a node behind nginx: two WebSockets from
    127.0.0.2 are served, a third from it is refused (101, then close 1013 naming the
    limit) even with an X-Forwarded-For of its own choosing, and 127.0.0.3 is served:
    ticker counts the address in nginx's X-Forwarded-For, not nginx's 127.0.0.1."""
    channel = f"nginx-{uuid.uuid4().hex[:8]}"
    async with cluster(redis_server, tmp_path, 1, max_connections_per_address=2) as (_, proxy):
        opened: list[Any] = []
        try:
            for _ in range(2):
                ws, first = await open_ws(proxy.ws_url, "127.0.0.2", channel)
                opened.append(ws)
                assert first["type"] == "snapshot", first
            for headers in ({}, {"X-Forwarded-For": "10.9.9.9"}):
                ws, first = await open_ws(proxy.ws_url, "127.0.0.2", channel, additional_headers=headers)
                opened.append(ws)
                assert first["type"] == "closed" and first["code"] == 1013, (headers, first)
                assert "address" in first["reason"].lower() or "connections" in first["reason"].lower(), first
            ws, first = await open_ws(proxy.ws_url, "127.0.0.3", channel)
            opened.append(ws)
            assert first["type"] == "snapshot", first
        finally:
            for ws in opened:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)


def test_the_documented_site_block_is_complete() -> None:
    """The block the tests run is the whole site: the settings docs/deployment.md
    promises are in it (nothing added by the test but paths and ports)."""
    site = site_config("127.0.0.1:8080", ["10.0.0.11:8000", "10.0.0.12:8000"])
    for needle in ("proxy_http_version 1.1", "$proxy_add_x_forwarded_for", "X-Forwarded-Proto",
                   "proxy_set_header Host", "proxy_buffering off", "proxy_read_timeout",
                   "proxy_send_timeout", "keepalive_timeout", "max_fails", "$http_upgrade"):
        assert needle in site, needle
    assert site.count("server 10.0.0.1") == 4  # two nodes in each of the two upstreams
    read = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))  # type: ignore[union-attr]
    keepalive = int(re.search(r"keepalive_timeout (\d+)s;", site).group(1))  # type: ignore[union-attr]
    assert read > 20 and read > 15, "proxy_read_timeout must exceed ping_interval and sse_heartbeat"
    assert keepalive < 75, "nginx must close idle upstream connections before ticker (75 s in the doc)"
