"""One embedded server per data directory (ticker/embedded.py): the process that starts it
holds ``ticker.lock`` there until it stops it. A second ``ticker serve`` on the data
directory is refused (exit code 2, naming the first), while ``ticker keys`` uses the
running server; a killed ticker leaves no stale lock; and whatever answers on the socket
(``-LOADING`` while a big append-only file loads, a server exiting), a second server is
never started on the same files.

Every process started here is ended in a ``finally`` by its own id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_faults import DEADLINE, REPO, Ticker, _env, _free_port, _publish, _valkey_pids
from ticker.embedded import LOCK_NAME, SOCKET_NAME, DataDirInUse, EmbeddedRedis, ping
from ticker.errors import EmbeddedRedisError

pytestmark = pytest.mark.faults

LOADING = b"-LOADING Valkey is loading the dataset in memory\r\n"


@pytest.fixture
def ticker(tmp_short: Path) -> Iterator[Ticker]:
    t = Ticker(tmp_short / "var")
    try:
        yield t
    finally:
        t.cleanup()
        shutil.rmtree(tmp_short, ignore_errors=True)


def _lock_is_free(data_dir: Path) -> bool:
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it if it was taken
    return True


def _alive(pid: int) -> bool:
    """Running, neither gone nor a zombie (nobody may reap an orphan here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ticker serve, twice on one data directory


async def test_a_second_ticker_serve_on_the_data_directory_is_refused_and_the_first_keeps_working(
    ticker: Ticker,
) -> None:
    first = await ticker.start()
    [server] = _valkey_pids(ticker.data_dir)

    began = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "ticker", "serve", "--port", str(_free_port())],
        cwd=REPO, env=_env(ticker.data_dir), capture_output=True, text=True,
        timeout=DEADLINE, check=False,
    )
    assert second.returncode == 2, second
    assert time.monotonic() - began < 15  # refused at start (an interpreter start is ~1 s)
    assert second.stderr.strip() == (
        f"ticker: The data directory {ticker.data_dir.resolve()} is in use by another ticker "
        f"(pid {first.pid}, 'ticker serve --port {ticker.port}'); stop it, or give this one "
        "its own TICKER_DATA_DIR, or point both at one Redis with REDIS_URL."
    ), second.stderr
    assert _valkey_pids(ticker.data_dir) == [server]  # no second server on the files

    # ticker keys uses the running server, and leaves it running.
    key = ticker.create_key("cms")
    assert _valkey_pids(ticker.data_dir) == [server]
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        brief = await _publish(http, key, "the first ticker keeps working")
    assert first.poll() is None

    # Stopped: its server goes, and the lock with it.
    assert await ticker.stop(first) == -signal.SIGTERM
    assert not _alive(server)
    assert _lock_is_free(ticker.data_dir)
    await ticker.start()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        listed = (await http.get("/v1/channels/world/briefs")).json()
        assert [b["id"] for b in listed["briefs"]] == [brief["id"]]
        await _publish(http, key, "the key still works")


async def test_a_killed_ticker_leaves_no_stale_lock_and_its_briefs_come_back(
    ticker: Ticker,
) -> None:
    proc = await ticker.start()
    [server] = _valkey_pids(ticker.data_dir)
    key = ticker.create_key()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        published = [await _publish(http, key, f"brief {i}") for i in range(5)]

    # SIGKILL: no shutdown at all. The kernel sends its server SIGTERM (PR_SET_PDEATHSIG)
    # and releases its lock with its descriptors; the file still names it.
    await ticker.stop(proc, signal.SIGKILL)
    assert not _alive(server)
    assert (ticker.data_dir / LOCK_NAME).read_text().split("\n")[0] == str(proc.pid)
    assert _lock_is_free(ticker.data_dir)

    await ticker.start()
    async with httpx.AsyncClient(base_url=ticker.base, timeout=10) as http:
        listed = (await http.get("/v1/channels/world/briefs")).json()
        assert [b["id"] for b in listed["briefs"]] == [b["id"] for b in reversed(published)]
        await _publish(http, key, "the key still works")


# The decision, with a stand-in answering on the socket


class _Standin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Something on a data directory's socket that answers every PING with ``reply``."""

    daemon_threads = True

    def __init__(self, socket_path: Path, reply: bytes) -> None:
        self.reply = reply
        self.pings = 0
        super().__init__(str(socket_path), _Answer)


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Standin)
        while self.request.recv(256):
            server.pings += 1
            self.request.sendall(server.reply)


@contextlib.contextmanager
def _standin(data_dir: Path, reply: bytes) -> Iterator[_Standin]:
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _Standin(data_dir / SOCKET_NAME, reply)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


@contextlib.contextmanager
def _lock_held_elsewhere(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the data directory's lock, as a ticker does."""
    data_dir.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(data_dir / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "os.write(fd, f'{os.getpid()}\\nticker serve --port 8000\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_loading_server_with_no_ticker_holding_the_lock_is_never_taken_for_absent(
    tmp_short: Path,
) -> None:
    data_dir = tmp_short / "var"
    embedded = EmbeddedRedis(data_dir)
    try:
        with _standin(data_dir, LOADING) as standin:
            with pytest.raises(EmbeddedRedisError) as caught:
                embedded.start(timeout=1.0)
            assert "answers '-LOADING" in str(caught.value), caught.value
            assert f"no ticker holds {data_dir.resolve() / LOCK_NAME}" in str(caught.value)
            assert standin.pings >= 2  # asked again while it waited for it to go
            assert embedded.process is None and not _valkey_pids(data_dir)
            assert ping(data_dir / SOCKET_NAME) == LOADING.decode().strip()  # socket kept
        assert _lock_is_free(data_dir)  # released when the start failed
    finally:
        embedded.stop()
        for pid in _valkey_pids(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_short, ignore_errors=True)


def test_a_stalled_server_that_never_answers_is_never_taken_for_absent(tmp_short: Path) -> None:
    data_dir = tmp_short / "var"
    data_dir.mkdir()
    embedded = EmbeddedRedis(data_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
            stalled.bind(str(data_dir / SOCKET_NAME))
            stalled.listen(1)  # never accepts: its backlog fills, connects then fail
            with pytest.raises(EmbeddedRedisError, match="accepts and does not answer"):
                embedded.start(timeout=1.5)
            assert embedded.process is None and not _valkey_pids(data_dir)
            assert (data_dir / SOCKET_NAME).exists()
    finally:
        embedded.stop()
        for pid in _valkey_pids(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_short, ignore_errors=True)


def test_a_loading_server_of_another_ticker_is_refused_or_waited_for_never_replaced(
    tmp_short: Path,
) -> None:
    data_dir = tmp_short / "var"
    embedded = EmbeddedRedis(data_dir)
    try:
        with _lock_held_elsewhere(data_dir) as holder, _standin(data_dir, LOADING):
            with pytest.raises(DataDirInUse) as refused:
                embedded.start(timeout=1.0)
            assert refused.value.pid == holder.pid
            assert f"(pid {holder.pid}, 'ticker serve --port 8000')" in str(refused.value)
            # ticker keys waits for the holder's server to answer PONG, then gives up.
            with pytest.raises(EmbeddedRedisError) as caught:
                embedded.start(timeout=1.0, adopt=True)
            assert "answered '-LOADING" in str(caught.value), caught.value
            assert f"pid {holder.pid}" in str(caught.value)
            assert embedded.process is None and not embedded.owned
            assert not _valkey_pids(data_dir)
            assert ping(data_dir / SOCKET_NAME) == LOADING.decode().strip()
    finally:
        embedded.stop()
        for pid in _valkey_pids(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_short, ignore_errors=True)


def test_a_server_exiting_after_its_ticker_died_is_waited_for_then_replaced(
    tmp_short: Path,
) -> None:
    """A ticker killed with SIGKILL frees the lock at once, while its server is still
    exiting on the kernel's SIGTERM: the next start waits for it to go."""
    data_dir = tmp_short / "var"
    embedded = EmbeddedRedis(data_dir)
    try:
        with _standin(data_dir, b"+PONG\r\n") as standin:
            def exit_() -> None:  # as a server does: its socket file stays, refused
                standin.shutdown()
                standin.server_close()

            timer = threading.Timer(0.5, exit_)
            timer.start()
            embedded.start(timeout=DEADLINE)
            timer.join()
            assert standin.pings >= 2
        assert embedded.owned and embedded.process is not None
        assert _valkey_pids(data_dir) == [embedded.process.pid]
        assert not _lock_is_free(data_dir)
    finally:
        embedded.stop()
        for pid in _valkey_pids(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_short, ignore_errors=True)


# Two EmbeddedRedis on one data directory, in this process


async def test_the_lock_is_held_from_start_to_stop_through_a_crash_and_restart(
    tmp_short: Path,
) -> None:
    data_dir = tmp_short / "var"
    ours, other = EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)
    pids: list[int] = []
    try:
        ours.start()
        assert ours.process is not None
        pids.append(ours.process.pid)
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            other.start()

        # Adopted: used, neither owned nor stopped.
        other.start(adopt=True)
        assert not other.owned and other.process is None
        other.stop()
        assert ping(ours.socket) == "+PONG"

        # Killed and restarted (the store watch's path): the lock is never let go.
        ours.kill()
        with pytest.raises(DataDirInUse):
            other.start()
        await ours.restart()
        assert ours.process is not None and ours.process.pid != pids[0]
        pids.append(ours.process.pid)
        with pytest.raises(DataDirInUse):
            other.start()

        ours.stop()
        assert not any(_alive(pid) for pid in pids)
        assert _lock_is_free(data_dir)
        assert (data_dir / LOCK_NAME).read_text() == ""  # nobody named once it is free
        other.start()
        assert other.owned
    finally:
        ours.stop()
        other.stop()
        for pid in _valkey_pids(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_short, ignore_errors=True)
