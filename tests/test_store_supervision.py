"""The embedded store supervised (ticker/storewatch.py), with real processes: the
valkey-server child killed with SIGKILL twice in a row while briefs are published and a
subscriber listens; a restart that fails (an append-only manifest it cannot read) until
the file is repaired; the service stopped, and its server with it.

Every process started here is ended in a ``finally`` by its own id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from tests.conftest import DEADLINE, Service, eventually, run_service
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.protocol import Close
from ticker.storewatch import StoreWatch

pytestmark = pytest.mark.faults


def _settings(data_dir: Path) -> Settings:
    return Settings(
        redis_url="", data_dir=str(data_dir), log_level="error", shutdown_drain=1.0,
        reconnect_max_delay=0.5, reader_block_ms=1000, publish_rate_per_minute=0,
        list_max_limit=1000,
    )


def _state(pid: int) -> str | None:
    """The state letter of a process (Z for a zombie), None once it is gone and reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _reaped(pid: int) -> bool:
    return _state(pid) is None


def _kill(pid: int | None) -> None:
    """SIGKILL a valkey-server that a test started, if it is still there."""
    if pid is None:
        return
    with contextlib.suppress(OSError):
        if b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


async def _true(check: Callable[[], bool]) -> bool:
    return check()


async def _status(http: httpx.AsyncClient, path: str, expected: int) -> bool:
    return (await http.get(path)).status_code == expected


@contextlib.asynccontextmanager
async def _embedded_service(data_dir: Path) -> AsyncIterator[tuple[Service, StoreWatch, list[int]]]:
    """The service on its embedded store, with a key for every channel; yields the
    service, its store's watch and the list of the server's PIDs seen (every one is
    killed at the end if the test left it running)."""
    pids: list[int] = []
    try:
        async with run_service(_settings(data_dir)) as service:
            watch = service.app.state.services.store_watch
            assert watch is not None and watch.pid is not None
            pids.append(watch.pid)
            client = aioredis.Redis.from_url(f"unix://{data_dir.resolve()}/redis.sock")
            service.key = await KeyStore(client).create("test", ["*"])
            await client.aclose()
            yield service, watch, pids
    finally:
        for pid in pids:
            _kill(pid)


class Follower:
    """A subscriber of one channel that behaves as a real client: it keeps its last
    cursor and the channel's epoch, and when it is closed with 1013 (the store is away)
    or 1012, it reconnects after a pause and resumes after that cursor."""

    def __init__(self, service: Service, channel: str, since: str = "", epoch: str = "") -> None:
        self.service = service
        self.channel = channel
        self.since, self.epoch = since, epoch
        self.briefs: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            sub = await self.service.subscriber()
            try:
                resume = {"since": self.since, "epoch": self.epoch} if self.since else {}
                await sub.subscribe(self.channel, **resume)
                while True:
                    self._take(await sub.recv(timeout=DEADLINE * 10))
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.closes.append(code)
                assert code in (Close.TRY_AGAIN_LATER, Close.SERVICE_RESTART), exc
                await asyncio.sleep(0.1)
            finally:
                await sub.close()

    def _take(self, message: dict[str, Any]) -> None:
        if message["type"] == "snapshot":
            assert not self.since, f"a resume fell back to a snapshot: {message}"
            self.since, self.epoch = message["cursor"], message["epoch"]
        elif message["type"] == "subscribed":
            assert message["recovered"] is True, message
        else:
            assert message["type"] == "brief", message
            self.briefs.append(message["brief"])
            self.since = message["cursor"]

    async def until(self, check: Callable[[], bool], what: str) -> None:
        def done() -> bool:
            if self.task.done():
                self.task.result()  # the follower's own failure, if any
            return check()

        await eventually(lambda: _true(done), what)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


@contextlib.asynccontextmanager
async def _following(service: Service, channel: str, **resume: str) -> AsyncIterator[Follower]:
    follower = Follower(service, channel, **resume)
    try:
        yield follower
    finally:
        await follower.stop()


async def _publish_retrying(service: Service, channel: str, text: str, key: str) -> dict[str, Any]:
    """Publish as a client would: on 503, again with the same Idempotency-Key."""
    headers = {**service.auth(), "Idempotency-Key": key}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        r = await service.http.post(f"/v1/channels/{channel}/briefs", json={"text": text}, headers=headers)
        if r.status_code == 201:
            brief: dict[str, Any] = r.json()
            return brief
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert loop.time() < deadline, f"{text!r} was not acknowledged within {DEADLINE:.0f} s"
        await asyncio.sleep(0.05)


def _messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name.startswith("ticker") and r.levelno == level and text in r.getMessage()
    ]


async def test_embedded_store_killed_twice_in_a_row_is_restarted_each_time_and_nothing_acknowledged_is_lost(
    tmp_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ticker")
    data_dir = tmp_short / "var"
    try:
        async with (
            _embedded_service(data_dir) as (service, watch, pids),
            _following(service, "world") as follower,
        ):
            await follower.until(lambda: bool(follower.since), "the subscriber has its snapshot")
            acknowledged: list[dict[str, Any]] = []
            started, stop = asyncio.Event(), asyncio.Event()

            async def publisher() -> None:
                for i in range(900):  # the list below reads at most 1000
                    if stop.is_set():
                        return
                    acknowledged.append(
                        await _publish_retrying(service, "world", f"brief {i}", f"brief-{i}")
                    )
                    if i == 10:
                        started.set()
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(publisher())
            try:
                await asyncio.wait_for(started.wait(), DEADLINE)
                for round_ in (1, 2):  # the second kill right after the server came back
                    old = pids[-1]
                    os.kill(old, signal.SIGKILL)
                    def restarted(n: int = round_) -> bool:
                        return watch.restarts == n

                    await follower.until(restarted, f"restart {round_}")
                    assert watch.pid is not None and watch.pid != old
                    pids.append(watch.pid)
                    assert _reaped(old), f"the killed server {old} is {_state(old)}, not reaped"
                await eventually(
                    lambda: _status(service.http, "/readyz", 200), "/readyz answers 200 again"
                )
                stop.set()
                await asyncio.wait_for(task, DEADLINE)
            finally:
                task.cancel()
            acknowledged.append(
                await _publish_retrying(service, "world", "after both restarts", "last")
            )

            exited = _messages(caplog, logging.ERROR, "server exited (killed by SIGKILL)")
            assert len(exited) == 2, caplog.text
            assert "restarting it from its append-only file" in exited[0]
            assert str(data_dir.resolve() / "redis.log") in exited[0]
            assert len(_messages(caplog, logging.WARNING, "server restarted")) == 2, caplog.text
            assert (await service.http.get("/healthz")).status_code == 200

            # Every acknowledged brief, exactly once: in the channel's list and on the
            # subscriber, which reconnected and resumed whenever it was told to.
            ids = [b["id"] for b in acknowledged]
            assert len(set(ids)) == len(ids)
            listed = (await service.http.get("/v1/channels/world/briefs?limit=1000")).json()
            assert [b["id"] for b in listed["briefs"]] == list(reversed(ids))
            await follower.until(
                lambda: len(follower.briefs) >= len(ids), "the subscriber has every brief"
            )
            assert [b["id"] for b in follower.briefs] == ids
        # Stopping the service stops its server (the one the watch started last), and
        # the stop is not taken for a crash.
        assert _reaped(pids[-1]), f"valkey-server {pids[-1]} is {_state(pids[-1])} after the stop"
        assert len(_messages(caplog, logging.ERROR, "server exited")) == 2, caplog.text
    finally:
        shutil.rmtree(tmp_short, ignore_errors=True)


async def test_a_restart_that_fails_turns_healthz_503_with_the_cause_until_the_store_can_start(
    tmp_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ticker")
    data_dir = tmp_short / "var"
    try:
        async with _embedded_service(data_dir) as (service, watch, pids):
            sub = await service.subscriber()
            await sub.subscribe("sport")
            snapshot = await sub.recv()
            first = await service.publish("sport", "before the outage")
            assert (await sub.recv())["cursor"] == first["id"]
            await sub.close()
            await eventually(
                lambda: _true(lambda: "sport" not in service.hub.channels),
                "the channel is no longer followed here (a resume needs the store)",
            )

            # A manifest valkey-server cannot read: it exits at every start until repaired.
            manifest = data_dir / "appendonlydir" / "ticker.aof.manifest"
            good = manifest.read_bytes()
            manifest.write_bytes(b"this is not a manifest\n")
            os.kill(pids[0], signal.SIGKILL)

            async def healthz_says_why() -> bool:
                r = await service.http.get("/healthz")
                return r.status_code == 503 and "cannot be restarted" in r.json()["detail"]

            await eventually(healthz_says_why, "/healthz answers 503 saying why")
            r = await service.http.get("/healthz")
            assert r.headers["content-type"] == "application/problem+json"
            detail = r.json()["detail"]
            assert "Invalid AOF manifest file format" in detail, detail
            assert str(data_dir.resolve() / "redis.log") in detail, detail
            assert _reaped(pids[0])
            logged = _messages(caplog, logging.ERROR, "cannot be restarted")
            assert logged and "Invalid AOF manifest file format" in logged[0], caplog.text
            assert (await service.http.get("/readyz")).status_code == 503

            # Meanwhile a publish is refused with 503 (nothing written), and a resume
            # that needs the store is closed with 1013; the client keeps coming back.
            r = await service.http.post(
                "/v1/channels/sport/briefs", json={"text": "during the outage"},
                headers={**service.auth(), "Idempotency-Key": "during"},
            )
            assert r.status_code == 503, r.text
            resume = {"since": first["id"], "epoch": snapshot["epoch"]}
            async with _following(service, "sport", **resume) as follower:
                await follower.until(
                    lambda: Close.TRY_AGAIN_LATER in follower.closes, "a resume is told 1013"
                )
                manifest.write_bytes(good)  # repaired: the next attempt starts
                await eventually(
                    lambda: _status(service.http, "/healthz", 200), "/healthz answers 200 again"
                )
                assert watch.failure is None and watch.restarts == 1
                assert watch.pid is not None and watch.pid != pids[0]
                pids.append(watch.pid)
                assert _messages(caplog, logging.WARNING, "failed attempts"), caplog.text

                during = await _publish_retrying(service, "sport", "during the outage", "during")
                after = await _publish_retrying(service, "sport", "after the outage", "after")
                await follower.until(lambda: len(follower.briefs) >= 2, "the resume gets both")
                assert [b["id"] for b in follower.briefs] == [during["id"], after["id"]]
            listed = (await service.http.get("/v1/channels/sport/briefs")).json()
            assert [b["id"] for b in listed["briefs"]] == [after["id"], during["id"], first["id"]]
        assert _reaped(pids[-1]), f"valkey-server {pids[-1]} is {_state(pids[-1])} after the stop"
    finally:
        shutil.rmtree(tmp_short, ignore_errors=True)


async def test_a_store_stopped_with_ticker_by_the_same_signal_is_not_taken_for_a_crash(
    tmp_short: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """systemd signals every process of a service, a terminal the whole group: the store
    gets SIGTERM as ticker does. Its exit is then no crash: nothing logged as one, no
    restart, and no server left."""
    caplog.set_level(logging.INFO, logger="ticker")
    try:
        async with _embedded_service(tmp_short / "data") as (service, watch, pids):
            os.kill(pids[0], signal.SIGTERM)
            service.server.should_exit = True  # what uvicorn's own SIGTERM handler does
            await asyncio.wait_for(service.task, DEADLINE)
        assert watch.exits == 0 and watch.restarts == 0
        assert not _messages(caplog, logging.ERROR, "exited"), caplog.text
        assert _reaped(pids[0])
    finally:
        shutil.rmtree(tmp_short, ignore_errors=True)
