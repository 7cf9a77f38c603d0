"""Supervision of the embedded store: its exit is noticed, logged and answered.

A task polls the server process that ticker started (``Popen.poll``, which also reaps it,
so no zombie stays). When the server has exited, the task logs it at ERROR and starts it
again on the same data directory, with full-jitter backoff; its append-only file, fsynced
before every reply, brings back every acknowledged write. The hub's reader and the Redis
pools reconnect by themselves once the socket answers again.

While a restart fails (the server exits at start, or does not answer in time), ``failure``
says why and ``/healthz`` answers 503 with it, so that the supervisor of ticker (systemd,
Kubernetes) restarts the whole process if it lasts; the task keeps trying meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from ticker.embedded import EmbeddedRedis, describe_exit
from ticker.errors import EmbeddedRedisError

log = logging.getLogger("ticker.storewatch")


class StoreWatch:
    """Watch the embedded server that this process started, and restart it when it exits."""

    def __init__(
        self,
        embedded: EmbeddedRedis,
        *,
        # Timeouts
        poll_interval: float = 0.2,
        settle: float = 0.5,
        start_timeout: float = 30.0,
        # Backoff between restarts: full jitter, from min_delay doubling up to max_delay.
        # It is only reset once a restarted server has stayed up for ``stable_after``, so
        # a server that dies right after each start is not restarted in a tight loop.
        min_delay: float = 0.2,
        max_delay: float = 10.0,
        stable_after: float = 60.0,
    ) -> None:
        self.embedded = embedded
        self.poll_interval = poll_interval
        self.settle = settle
        self.start_timeout = start_timeout
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        # Why the last restart attempt failed, as a sentence, until one succeeds; None
        # while the server runs and during the first attempt after it exited.
        self.failure: str | None = None
        self.exits = 0  # how many times the server exited under supervision
        self.restarts = 0  # how many times it was started again
        self._attempt = 0
        self._up_since = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the server now running, if any."""
        process = self.embedded.process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        """Start watching; call on the event loop's thread (see ``EmbeddedRedis.restart``)."""
        loop = asyncio.get_running_loop()
        self._up_since = loop.time()
        self._task = loop.create_task(self._run(), name="ticker-storewatch")

    async def stop(self) -> None:
        """Stop watching: before the server is stopped, so the stop is not taken for a
        crash. A restart under way is abandoned; ``EmbeddedRedis.stop`` ends its process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        try:
            await self._watch()
        except Exception:  # a bug: say so, and let /healthz have ticker restarted
            log.exception("Supervising the embedded Redis server failed")
            self.failure = (
                "The embedded Redis server is no longer supervised (an error in ticker, "
                "logged); restart ticker."
            )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_interval)
            code = self.embedded.exited()
            if code is None:
                if self._attempt and loop.time() - self._up_since > self.stable_after:
                    self._attempt = 0
                continue
            # A moment before answering: when ticker is being stopped, the server may
            # have had the same signal (systemd signals the whole service, a terminal
            # the whole group), and then the watch is stopped within this moment.
            await asyncio.sleep(self.settle)
            self.exits += 1
            why = self.embedded.last_words() if code > 0 else ""
            log.error(
                "The embedded Redis server exited (%s%s); restarting it from its append-only "
                "file (see %s)", describe_exit(code), f": {why}" if why else "",
                self.embedded.log_file,
            )
            await self._restart()
            self._up_since = loop.time()

    async def _restart(self) -> None:
        """Start the server again, with backoff, until it answers."""
        failed = 0
        while True:
            cap = min(self.max_delay, self.min_delay * 2 ** min(self._attempt, 16))
            self._attempt += 1
            await asyncio.sleep(random.uniform(0, cap))  # full jitter
            try:
                await self.embedded.restart(self.start_timeout)
            except EmbeddedRedisError as exc:
                failure = f"The embedded Redis server cannot be restarted: {_clause(exc)}"
            except Exception as exc:  # a bug here must not end the supervision
                log.exception("Restarting the embedded Redis server failed")
                failure = f"The embedded Redis server cannot be restarted: {exc!r}."
            else:
                break
            failed += 1
            if failure != self.failure:  # once per cause, not at every retry
                log.error(
                    "%s ticker keeps trying with backoff; /healthz answers 503 meanwhile.",
                    failure,
                )
            self.failure = failure
        self.restarts += 1
        self.failure = None
        log.warning(
            "The embedded Redis server restarted (pid %s)%s; clients reconnect to it",
            self.pid, f" after {failed} failed attempts" if failed else "",
        )


def _clause(exc: Exception) -> str:
    """An error's sentence, to follow a colon: "The embedded Redis server exited at start
    (...)" becomes "it exited at start (...)"."""
    text = str(exc)
    subject = "The embedded Redis server "
    if text.startswith(subject):
        return "it " + text[len(subject):]
    return text[:1].lower() + text[1:]
