"""Subscribers that follow channels through failovers, for the tests that kill servers
(tests/test_sentinel.py, tests/test_cluster.py).

Like the widget and the Python client, a ``Watcher`` reconnects after every close and
resumes each channel from the last cursor and epoch it received; it records every
message, what it shows per channel (a snapshot replaces it) and any event that came at
or before its cursor (a repeat or a disorder).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson
import websockets

from tests.conftest import eventually


def cursor_key(cursor: str) -> tuple[int, int]:
    ms, seq = cursor.split("-")
    return int(ms), int(seq)


class Watcher:
    """One WebSocket connection at a time, subscribed to ``channels``."""

    def __init__(self, ws_url: str, channels: list[str]) -> None:
        self.ws_url = ws_url
        self.channels = channels
        self.cursors: dict[str, str] = {}
        self.epochs: dict[str, str] = {}
        self.messages: list[dict[str, Any]] = []
        self.shown_by_channel: dict[str, list[str]] = {c: [] for c in channels}  # oldest first
        self.resumes: list[tuple[str, bool]] = []  # (channel, recovered) of each resume
        self.closes: list[int | None] = []
        self.disorder: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Watcher:
        """Start following; return once every channel's first snapshot is in."""
        self.task = asyncio.create_task(self._run())

        async def all_subscribed() -> bool:
            return set(self.cursors) >= set(self.channels)

        await eventually(all_subscribed, "every channel's first snapshot")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        for _ in range(200):  # bounded: at most 200 connections
            try:
                async with websockets.connect(self.ws_url, subprotocols=["ticker.v1"]) as ws:  # type: ignore[list-item]
                    for channel in self.channels:
                        request: dict[str, Any] = {"op": "subscribe", "channel": channel}
                        if channel in self.cursors:
                            request["since"] = self.cursors[channel]
                            if self.epochs.get(channel):
                                request["epoch"] = self.epochs[channel]
                        await ws.send(orjson.dumps(request).decode())
                    async for raw in ws:
                        self._take(orjson.loads(raw))
            except websockets.ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
            except OSError:
                pass
            await asyncio.sleep(0.1)

    def _take(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        kind, channel = message["type"], message.get("channel", "")
        if kind == "subscribed":
            self.epochs[channel] = message.get("epoch") or self.epochs.get(channel, "")
            if "recovered" in message:
                self.resumes.append((channel, message["recovered"]))
        elif kind == "snapshot":
            self.shown_by_channel[channel] = [b["id"] for b in reversed(message["briefs"])]
            self.cursors[channel] = message["cursor"]
            self.epochs[channel] = message["epoch"] or self.epochs.get(channel, "")
        elif kind == "brief":
            cursor = self.cursors.get(channel)
            if cursor is not None and cursor_key(message["cursor"]) <= cursor_key(cursor):
                self.disorder.append(f"{channel} {message['cursor']}")
            self.shown_by_channel[channel].append(message["brief"]["id"])
            self.cursors[channel] = message["cursor"]
        elif kind in ("correction", "retraction"):
            self.cursors[channel] = message["cursor"]

    async def until_all_shown(self, expected: dict[str, list[str]]) -> None:
        async def arrived() -> bool:
            return all(
                set(ids) <= set(self.shown_by_channel[c]) for c, ids in expected.items()
            )

        await eventually(arrived, "every brief shown")


class Follower(Watcher):
    """A ``Watcher`` of one channel."""

    def __init__(self, ws_url: str, channel: str = "world") -> None:
        super().__init__(ws_url, [channel])
        self.channel = channel

    async def start(self) -> Follower:
        await super().start()
        return self

    @property
    def shown(self) -> list[str]:
        return self.shown_by_channel[self.channel]

    def recovered(self) -> list[bool]:
        return [recovered for _, recovered in self.resumes]

    def brief_ids(self) -> list[str]:
        return [m["brief"]["id"] for m in self.messages if m["type"] == "brief"]

    async def until_shown(self, brief_id: str) -> None:
        async def shown() -> bool:
            return brief_id in self.shown

        await eventually(shown, f"brief {brief_id} shown")


class SseFollower(Follower):
    """A ``Follower`` over Server-Sent Events (``GET /v1/channels/{channel}/events``):
    each reconnection sends ``Last-Event-ID`` and the epoch, as ``EventSource`` does."""

    def __init__(self, base: str, channel: str = "world") -> None:
        super().__init__(base, channel)

    async def _run(self) -> None:
        timeout = httpx.Timeout(5, read=60)
        async with httpx.AsyncClient(base_url=self.ws_url, timeout=timeout) as http:
            for _ in range(200):  # bounded: at most 200 streams
                headers, params = {}, {}
                if self.channel in self.cursors:
                    headers["Last-Event-ID"] = self.cursors[self.channel]
                    params["epoch"] = self.epochs.get(self.channel, "")
                with contextlib.suppress(httpx.HTTPError):
                    async with http.stream(
                        "GET", f"/v1/channels/{self.channel}/events", headers=headers,
                        params=params,
                    ) as response:
                        data: list[str] = []
                        async for line in response.aiter_lines():
                            if line.startswith("data:"):
                                data.append(line[5:].removeprefix(" "))
                            elif line == "" and data:
                                message = orjson.loads("\n".join(data))
                                data = []
                                if message.get("type") == "close":
                                    self.closes.append(message.get("code"))
                                else:
                                    self._take(message)
                await asyncio.sleep(0.1)
