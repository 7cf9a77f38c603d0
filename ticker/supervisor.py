"""``ticker serve --workers N``: one supervisor, N worker processes on one host:port.

A worker is ``ticker serve`` as it runs alone (its own hub and stream reader, ticker's gate
and the subscribers' fast path), started as ``python -m ticker serve --worker-of <pid>``.
Each one binds its own listening socket to the same host:port with ``SO_REUSEPORT``, so
that the kernel spreads new connections over the workers' accept queues by a hash of the
addresses. One shared socket (uvicorn's and gunicorn's ``--workers``) lets the worker that
was idle last take most of them (docs/scaling.md).

The supervisor serves nothing itself. It

* checks that host:port is free, and keeps it bound (never listening) while it runs;
* starts the embedded store once, before the workers, when no ``REDIS_URL`` is set, and
  supervises it (``ticker.storewatch``); the workers get its ``unix://`` URL;
* starts the workers, and starts another when one exits (an ERROR line with how it ended,
  full-jitter backoff); that worker's clients reconnect, land on the others, and resume;
* on SIGTERM or SIGINT, sends SIGTERM to every worker and waits for them (each closes
  its subscribers with 1012 after ``shutdown_drain``), then stops the store, last.

Workers are new interpreters (``subprocess``), not ``multiprocessing`` children: a worker
is then exactly ``ticker serve`` with one more flag, nothing is pickled or inherited from
the supervisor's event loop, the kernel is told before ``exec`` to end it with its
supervisor (``PR_SET_PDEATHSIG``, as for the embedded store), and ``multiprocessing``
would add its resource-tracker process for nothing. Workers get a process group of their
own: a terminal's Ctrl-C reaches the supervisor only, which stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import uvicorn.config
import uvicorn.logging
from prometheus_client.multiprocess import mark_process_dead

from ticker.config import Settings
from ticker.embedded import EmbeddedRedis, describe_exit, die_with_parent
from ticker.errors import TickerError
from ticker.metrics import MULTIPROCESS_DIR
from ticker.storewatch import StoreWatch

log = logging.getLogger("ticker.supervisor")

WORKER_FLAG = "--worker-of"  # the internal flag of ``ticker serve`` that makes a worker
RUN_DIR_FLAG = "--run-dir"  # and the one that tells it the supervisor's ``RunDir``
EXIT_CONFIG = 2  # a worker's exit code for a configuration error: restarting cannot help
STOP_GRACE = 10.0  # seconds a worker may take beyond ``shutdown_drain`` before SIGKILL


def bound_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to host:port (``SO_REUSEADDR``, and ``SO_REUSEPORT`` unless told
    otherwise), not listening yet: uvicorn listens once the app has started (asyncio's
    ``create_server``), so a new worker joins the kernel's share only when it is ready."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE,
        )[0]
    except socket.gaierror as exc:
        raise TickerError(f"Cannot resolve the address {host!r} to listen on: {exc}.") from None
    # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TickerError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Is another server (another "
            "ticker?) using it? Stop it, or choose another port with --port."
        ) from None
    return sock



class RunDir:
    """What a supervisor shares with its workers, in a private temporary directory that
    lives as long as the supervisor: the metrics files of every worker (``metrics/``,
    ``ticker.metrics``), and, while the embedded store cannot be restarted, ``store-down``,
    which says why. A worker's ``/healthz`` answers 503 with it, as a lone ``ticker serve``
    does (``ticker.storewatch``): the store is the supervisor's, but the probes ask workers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics = self.path / "metrics"
        self.store_down = self.path / "store-down"

    PREFIX = "ticker-run-"  # then the supervisor's PID, "-", and mkdtemp's letters

    @classmethod
    def create(cls) -> RunDir:
        """A new directory; first, those left by supervisors that were killed (SIGKILL
        gives no time to remove one) and whose process is gone."""
        for old in Path(tempfile.gettempdir()).glob(f"{cls.PREFIX}*"):
            pid = old.name[len(cls.PREFIX):].partition("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
        run_dir = cls(tempfile.mkdtemp(prefix=f"{cls.PREFIX}{os.getpid()}-"))
        run_dir.metrics.mkdir()
        return run_dir

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def report_store(self, failure: str | None) -> None:
        """The supervisor: why the store cannot be restarted, or None once it can."""
        if failure is None:
            self.store_down.unlink(missing_ok=True)
            return
        partial = self.store_down.with_suffix(".new")
        partial.write_text(failure, encoding="utf-8")
        partial.replace(self.store_down)  # a worker reads all of it or none

    @property
    def failure(self) -> str | None:
        """A worker: the supervisor's latest word on the store (``StoreWatch.failure``)."""
        try:
            return self.store_down.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


@dataclasses.dataclass
class _Slot:
    """One worker's place: its process now, and its restarts."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    attempt: int = 0  # restarts in a row, each without staying up ``stable_after``
    restart_at: float | None = None


class Supervisor:
    """Run ``settings.workers`` workers on ``settings.host``:``settings.port``."""

    def __init__(
        self,
        settings: Settings,
        config_file: str | None = None,
        *,
        # Timeouts
        poll_interval: float = 0.1,
        # Backoff between restarts of one worker: full jitter, from min_delay doubling up
        # to max_delay, reset once a worker has stayed up for stable_after.
        min_delay: float = 0.2,
        max_delay: float = 5.0,
        stable_after: float = 60.0,
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.poll_interval = poll_interval
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.slots = [_Slot(number) for number in range(1, settings.workers + 1)]
        self.port = settings.port  # the port chosen by the kernel, when settings say 0
        self.env = dict(os.environ)
        self.run_dir: RunDir | None = None
        self.watch: StoreWatch | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code."""
        _configure_logging(self.settings.log_level)
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Refused at once if anything listens there: a socket without SO_REUSEPORT cannot
        # share the port. Then one with it holds the port (and the number the kernel chose
        # for port 0) for the workers; it never listens, so it never takes a connection.
        with bound_socket(self.settings.host, self.settings.port, reuse_port=False) as probe:
            self.port = probe.getsockname()[1]
        hold = bound_socket(self.settings.host, self.port)
        embedded: EmbeddedRedis | None = None
        self.run_dir = run_dir = RunDir.create()
        self.env[MULTIPROCESS_DIR] = str(run_dir.metrics)
        try:
            if self.settings.embedded:
                # On this (the main) thread: the store is told to exit with the thread
                # that started it (PR_SET_PDEATHSIG). Nothing is served yet: blocking is fine.
                embedded = EmbeddedRedis(self.settings.data_dir).start()
                log.info("Embedded Redis serving %s", embedded.data_dir)
                # TICKER_REDIS_URL wins over REDIS_URL and over the file: no worker starts a store.
                self.env["TICKER_REDIS_URL"] = embedded.url
                if embedded.owned:
                    self.watch = StoreWatch(embedded)
                    self.watch.start()
            for slot in self.slots:
                self._spawn(slot)
            log.info(
                "Supervisor (pid %d): %d workers on %s:%d", os.getpid(), len(self.slots),
                self.settings.host, self.port,
            )
            return await self._supervise(stop)
        finally:
            if self.watch is not None:
                # First: the store may get the same signal (systemd signals the whole
                # service), and its exit from now on is no crash.
                await self.watch.stop()
            await self._stop_workers()
            if embedded is not None:
                embedded.stop()  # last: the workers drained with it
            hold.close()
            run_dir.remove()

    def _spawn(self, slot: _Slot) -> None:
        assert self.run_dir is not None
        argv = [
            sys.executable, "-m", "ticker", "serve", WORKER_FLAG, str(os.getpid()),
            RUN_DIR_FLAG, str(self.run_dir.path),
            "--host", self.settings.host, "--port", str(self.port),
        ]
        if self.config_file is not None:
            argv += ["--config", self.config_file]
        slot.process = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent, process_group=0,
        )
        slot.started_at = asyncio.get_running_loop().time()
        slot.restart_at = None
        log.info("Worker %d started (pid %d)", slot.number, slot.process.pid)

    async def _supervise(self, stop: asyncio.Event) -> int:
        """Poll the workers (``Popen.poll`` also reaps them) until told to stop."""
        loop = asyncio.get_running_loop()
        store_failure: str | None = None
        while not stop.is_set():
            now = loop.time()
            failure = self.watch.failure if self.watch is not None else None
            if failure != store_failure and self.run_dir is not None:
                self.run_dir.report_store(failure)
                store_failure = failure
            for slot in self.slots:
                if slot.process is None:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        self._spawn(slot)
                    continue
                code = slot.process.poll()
                if code is None:
                    if slot.attempt and now - slot.started_at > self.stable_after:
                        slot.attempt = 0
                    continue
                pid, slot.process = slot.process.pid, None
                if self.run_dir is not None:
                    # Its gauges leave the sums; its counters stay in the totals.
                    mark_process_dead(pid, str(self.run_dir.metrics))  # type: ignore[no-untyped-call]
                if code == EXIT_CONFIG:
                    log.error(
                        "Worker %d (pid %d) exited with a configuration error (exit code %d; "
                        "its message is above); stopping the other workers", slot.number,
                        pid, code,
                    )
                    return EXIT_CONFIG
                cap = min(self.max_delay, self.min_delay * 2 ** min(slot.attempt, 16))
                delay = random.uniform(0, cap)  # full jitter
                slot.attempt += 1
                slot.restart_at = now + delay
                log.error(
                    "Worker %d (pid %d) exited (%s); starting another in %.1f s, and its "
                    "clients reconnect to the other workers meanwhile",
                    slot.number, pid, describe_exit(code), delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
        log.info("Stopping %d workers (each closes its subscribers with 1012)", len(self.slots))
        return 0

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker, then wait: each drains within ``shutdown_drain``, and
        uvicorn gives up on what is left 5 s later; SIGKILL after ``STOP_GRACE`` more."""
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_drain + 5 + STOP_GRACE
        while any(p.poll() is None for p in running) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for process in running:
            if process.poll() is None:
                log.error("Worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        for slot in self.slots:
            slot.process = None


def _configure_logging(level: str) -> None:
    """The supervisor's lines look like the workers' (uvicorn's format)."""
    handler = logging.StreamHandler()
    handler.setFormatter(uvicorn.logging.DefaultFormatter("%(levelprefix)s %(message)s"))
    logger = logging.getLogger("ticker")
    logger.addHandler(handler)
    logger.setLevel(uvicorn.config.LOG_LEVELS[level])
