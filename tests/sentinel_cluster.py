"""A real Redis Sentinel deployment on loopback, for tests/test_sentinel.py: a primary,
replicas and three sentinels, all the packaged ``valkey-server`` (``--sentinel`` makes it
a sentinel), in a temporary directory, with failover settings short enough that a
failover takes a couple of seconds.

Each replica reaches its primary through a ``Link``: a TCP relay in the test's event
loop that can hold what the primary sends (``pause``), as a slow network would, so that a
test can make a replica fall behind for as long as it likes; ``cut`` drops what it held.
That is the reliable way to lose a write in a failover: a replica process that is merely
stopped (SIGSTOP, ``DEBUG SLEEP``) still finds the bytes in its socket when it wakes.

Every process is started with ``die_with_parent`` and killed in ``stop`` by its own id.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from ticker.embedded import die_with_parent, server_binary

PRIMARY_NAME = "ticker"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 3000
DEADLINE = 30.0  # seconds: the bound of every wait here


_HANDED_OUT: set[int] = set()  # never the same port twice in one test run


def free_port() -> int:
    """A loopback port that nothing listens on now and that no other node of this test
    run was given (the kernel may hand a just-closed port out again at once)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise AssertionError("no free port")


class Link:
    """A TCP relay from a replica to its primary that can hold the primary's bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Link:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, hold=False)),
            asyncio.create_task(self._pump(up_reader, writer, hold=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, hold: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if hold:
                    await self.flowing.wait()  # paused: held here, never delivered if cut
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sink.close()

    def pause(self) -> None:
        """Hold everything the primary sends from now on."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def cut(self) -> None:
        """Close every relayed connection, dropping what was held."""
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Node:
    """One valkey-server process (a data server or a sentinel) on a loopback port."""

    def __init__(self, root: Path, name: str, args: list[str], sentinel: bool = False) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.args = args
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = str(server_binary())
        common = [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--logfile", str(self.dir / "server.log"), "--daemonize", "no",
        ]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join(self.args) + "\n")
            argv = [binary, str(conf), "--sentinel", *common]
        else:
            argv = [
                binary, *common, "--save", "", "--appendonly", "no",
                "--repl-diskless-sync-delay", "0", *self.args,
            ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )

    def kill(self) -> None:
        """SIGKILL, and reap."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(DEADLINE)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.dir / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


class SentinelCluster:
    """A primary, ``replicas`` replicas (each through a ``Link``) and three sentinels."""

    def __init__(self, replicas: int = 1, appendonly: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tk-sentinel-"))
        # With an append-only file, a killed server started again (Node.start) comes back
        # with its data, as under a supervisor.
        self.data_args = ["--appendonly", "yes"] if appendonly else []
        self.primary = Node(self.root, "primary", list(self.data_args))
        self.replicas: list[Node] = []
        self.links: list[Link] = []
        self.replica_count = replicas
        self.sentinels: list[Node] = []

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{PRIMARY_NAME}"

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    async def start(self) -> SentinelCluster:
        self.primary.start()
        await self._answers(self.primary)
        for i in range(self.replica_count):
            link = await Link(self.primary.port).start()
            replica = Node(
                self.root, f"replica{i}",
                [*self.data_args, "--replicaof", "127.0.0.1", str(link.port)],
            )
            replica.start()
            self.links.append(link)
            self.replicas.append(replica)
        for replica in self.replicas:
            await self._until(lambda r=replica: self._in_sync(r), f"{replica.name} in sync")
        for i in range(3):
            self.sentinels.append(Node(self.root, f"sentinel{i}", [
                f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.primary.port} 2",
                f"sentinel down-after-milliseconds {PRIMARY_NAME} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {PRIMARY_NAME} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {PRIMARY_NAME} 1",
            ], sentinel=True))
        for node in self.sentinels:
            node.start()
        for node in self.sentinels:
            await self._until(lambda n=node: self._sentinel_sees_all(n), f"{node.name} ready")
        return self

    async def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        for link in self.links:
            await link.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # Questions to the servers

    async def primary_port(self) -> int:
        """The port of the primary, as the first sentinel that answers names it."""
        for node in self.sentinels:
            with contextlib.suppress(Exception):
                async with node.client() as c:
                    addr: Any = await c.sentinel_get_master_addr_by_name(PRIMARY_NAME)
                    return int(addr[1])
        raise AssertionError("no sentinel answers")

    async def role(self, node: Node) -> str:
        async with node.client() as c:
            reply: Any = await c.role()
            return str(reply[0].decode())

    async def failover_to_another(self, old_port: int) -> Node:
        """Wait until the sentinels name a primary other than ``old_port``, and it
        answers as one; that node."""
        async def moved() -> bool:
            port = await self.primary_port()
            return port != old_port and await self._is_primary(self.node_at(port))

        await self._until(moved, "a failover")
        return self.node_at(await self.primary_port())

    async def _is_primary(self, node: Node) -> bool:
        with contextlib.suppress(Exception):
            return await self.role(node) == "master"
        return False

    async def _answers(self, node: Node) -> bool:
        async def ping() -> bool:
            with contextlib.suppress(Exception):
                async with node.client() as c:
                    return bool(await c.ping())
            return False

        await self._until(ping, f"{node.name} answers")
        return True

    async def _in_sync(self, replica: Node) -> bool:
        with contextlib.suppress(Exception):
            async with replica.client() as c:
                info: Any = await c.info("replication")
                return bool(info.get("master_link_status") == "up")
        return False

    async def _sentinel_sees_all(self, node: Node) -> bool:
        with contextlib.suppress(Exception):
            async with node.client() as c:
                state: Any = await c.sentinel_master(PRIMARY_NAME)
                return bool(
                    state["num-other-sentinels"] == 2
                    and state["num-slaves"] == self.replica_count
                )
        return False

    async def _until(self, check: Any, what: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)
                raise AssertionError(f"not within {timeout:.0f} s: {what}\n{tails}")
            await asyncio.sleep(0.05)
