"""TickerClient: subscribe over WebSocket without missing a brief; publish over HTTP
without publishing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ticker_client._errors import (
    AuthenticationError,
    ProblemError,
    ServerUnreachable,
    ServiceUnavailable,
    SubscriptionRefused,
    TickerClientError,
    problem_error,
)
from ticker_client._models import (
    CHANNEL_RE,
    Brief,
    Event,
    Snapshot,
    cursor_key,
    event_from_message,
)

log = logging.getLogger("ticker_client")

SUBPROTOCOL = Subprotocol("ticker.v1")
_RETRY_STATUS = frozenset({429, 502, 503, 504})
# Close codes after which reconnecting cannot help: origin refused, too many
# subscriptions (1008), a message too big (1009). Any other close reconnects.
_FATAL_CLOSE = frozenset({1008, 1009})

TokenSource = str | Callable[[str], "Awaitable[str] | str"]
"""A reader token for private channels: one token, or a function of the channel that
returns (or awaits) a fresh one, typically by asking your own site's backend."""

# Refusals that a new token cures (docs/protocol.md, "error"; an HTTP problem's ``code``
# says the same); any other refusal of a token (invalid, another channel's, a key that may
# not read) does not.
_RENEW_TOKEN = frozenset({"token_required", "token_expired", "token_revoked"})
# Refusals in a row of a freshly fetched token before giving up: the source keeps
# handing out tokens that do not open the channel (a clock far off, a wrong secret).
MAX_TOKEN_REFUSALS = 3
MAX_READ_SOURCES = 64  # token sources whose tokens HTTP reads keep


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """Full-jitter backoff: a random delay in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


@dataclasses.dataclass
class Position:
    """Where a subscription is in a channel's log: resume from here after a reconnect."""

    cursor: str | None = None
    epoch: str | None = None


class TickerClient:
    """An async client for one ticker server::

        async with TickerClient("https://ticker.example") as c:
            async for event in c.subscribe(["world", "sport"], since=cursor):
                ...
            brief = await c.publish("world", "Text", api_key=key)

    ``subscribe`` reconnects by itself (full-jitter backoff) and resumes each channel
    from the last cursor and epoch it received, dropping anything already delivered.
    ``publish`` sends one Idempotency-Key per call and reuses it on every retry, so a
    retried publish never publishes twice.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        # Timeouts (seconds)
        timeout: float = 10.0,
        # Retries
        max_retries: int = 20,
        retry_for: float = 30.0,
        max_transport_retries: int = 5,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        # Limits
        max_message_bytes: int = 16 * 2**20,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"{base_url!r} is not a server URL: use one like 'http://127.0.0.1:8000'."
            )
        self.base_url = urlunsplit(parts)
        ws_scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = urlunsplit((ws_scheme, parts.netloc, parts.path + "/v1/ws", "", ""))
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_for = retry_for
        self.max_transport_retries = max_transport_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_message_bytes = max_message_bytes
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        # The HTTP reads' tokens, by token source (the last MAX_READ_SOURCES sources).
        self._read_tokens: dict[TokenSource, _Tokens] = {}

    async def __aenter__(self) -> TickerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Subscribing

    async def subscribe(
        self,
        channels: str | Sequence[str],
        since: str | Mapping[str, str] | None = None,
        *,
        epoch: str | Mapping[str, str] | None = None,
        positions: dict[str, Position] | None = None,
        token: TokenSource | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every event of ``channels``, live, forever (break out of the loop to stop).

        Without ``since``, each channel starts with a ``Snapshot``. With ``since`` (one
        cursor for every channel, or one per channel), it starts right after that cursor
        with exactly the events missed, or with a ``Snapshot`` when they are no longer all
        kept. ``positions``, if given, is kept up to date (channel -> cursor and epoch):
        store it to resume after your own process restarts.

        ``token`` opens private channels: a reader token, or better a function
        ``token(channel)`` (plain or async) that returns a fresh one. It is asked for
        when the server says a channel is private, again before the token expires (the
        server's ``token-expiring``) and when a token ends (expired, its secret
        revoked); each time the channel is subscribed again from its cursor, so nothing
        is missed or seen twice. Public channels never call it. An exception raised by
        the function ends the subscription with it.
        """
        names = [channels] if isinstance(channels, str) else list(dict.fromkeys(channels))
        if not names:
            raise ValueError("Subscribe to at least one channel.")
        for name in names:
            if not CHANNEL_RE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a channel name: use 1 to 64 lowercase letters, digits "
                    "and hyphens."
                )
        state = positions if positions is not None else {}
        for name in names:
            pos = state.setdefault(name, Position())
            start = since.get(name) if isinstance(since, Mapping) else since
            if start is not None:
                cursor_key(start)  # ValueError now rather than a refusal later
                pos.cursor = start
            start_epoch = epoch.get(name) if isinstance(epoch, Mapping) else epoch
            if start_epoch is not None:
                pos.epoch = start_epoch
        tokens = _Tokens(token)
        attempt = 0
        while True:
            try:
                async for event in self._session(names, state, tokens):
                    attempt = 0
                    yield event
                reason = "the server closed the connection"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code in _FATAL_CLOSE:
                    assert exc.rcvd is not None
                    raise SubscriptionRefused(
                        f"The server refused the subscription (close {code}: "
                        f"{exc.rcvd.reason or 'no reason given'}).",
                        code,
                    ) from None
                reason = f"connection closed ({code})"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in _RETRY_STATUS:
                    raise SubscriptionRefused(
                        f"{self.ws_url} answered HTTP {status} to the WebSocket handshake: "
                        "is this the URL of a ticker server?",
                    ) from None
                reason = f"handshake answered HTTP {status}"
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                reason = f"cannot connect ({exc})"
            delay = full_jitter(attempt, self.backoff_base, self.backoff_max)
            attempt += 1
            log.info("ticker: %s; reconnecting in %.2f s", reason, delay)
            await asyncio.sleep(delay)

    async def _session(
        self, names: list[str], state: dict[str, Position], tokens: _Tokens
    ) -> AsyncGenerator[Event, None]:
        """One connection: subscribe to every channel from its position, then read."""
        async with ws_connect(
            self.ws_url,
            subprotocols=[SUBPROTOCOL],
            open_timeout=self.timeout,
            max_size=self.max_message_bytes,
            compression=None,
        ) as ws:

            async def subscribe(name: str) -> None:
                pos = state[name]
                message: dict[str, Any] = {"op": "subscribe", "channel": name}
                if pos.cursor is not None:
                    message["since"] = pos.cursor
                    if pos.epoch:
                        message["epoch"] = pos.epoch
                if (current := tokens.current.get(name)) is not None:
                    message["token"] = current
                await ws.send(json.dumps(message))

            for name in names:
                await subscribe(name)
            async for raw in ws:
                message = json.loads(raw)
                kind, channel = message.get("type"), message.get("channel")
                if channel in state and kind == "token-expiring" and tokens.renewable:
                    # Switch before the end: the new subscription resumes from the cursor,
                    # and what the old one still sends is dropped as already seen.
                    await tokens.fresh(channel)
                    await ws.send(json.dumps({"op": "unsubscribe", "channel": channel}))
                    await subscribe(channel)
                    continue
                if channel in state and kind == "error" and message.get("code") in _RENEW_TOKEN:
                    await tokens.renew(channel, message, self.backoff_base)
                    await subscribe(channel)
                    continue
                if kind == "subscribed":
                    tokens.refusals.pop(channel, None)
                event = self._apply(message, state)
                if event is not None:
                    yield event

    @staticmethod
    def _apply(message: dict[str, Any], state: dict[str, Position]) -> Event | None:
        """Update the positions with one server message; the event to deliver, if any."""
        kind = message.get("type")
        if kind == "error":
            raise SubscriptionRefused(
                f"The server rejected a request: {message.get('message')} ({message.get('code')}).",
                error=message.get("code"), channel=message.get("channel"),
            )
        pos = state.get(str(message.get("channel")))
        if pos is None:
            return None
        if kind == "subscribed":
            pos.epoch = message.get("epoch") or pos.epoch
            return None
        event = event_from_message(message)
        if event is None:
            return None
        if isinstance(event, Snapshot):
            # Authoritative: it replaces what came before, even if the log started anew.
            if pos.cursor is not None:  # it asked to resume from there, and could not
                event = dataclasses.replace(event, resumed_from=pos.cursor)
            pos.cursor, pos.epoch = event.cursor, event.epoch or pos.epoch
            return event
        if pos.cursor is not None and cursor_key(event.cursor) <= cursor_key(pos.cursor):
            return None  # already delivered
        pos.cursor = event.cursor
        return event

    # Publishing

    async def publish(
        self,
        channel: str,
        text: str,
        *,
        url: str | None = None,
        time: datetime | str | None = None,
        urgency: int | None = None,
        tags: Sequence[str] | None = None,
        lang: str | None = None,
        pinned: bool | None = None,
        author: str | None = None,
        api_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Brief:
        """Publish a brief and return it (with its ``id``, also its cursor).

        Retries (full-jitter backoff, ``Retry-After`` honoured) when the server cannot be
        reached or answers 429/502/503/504, always with the same Idempotency-Key: the
        brief is published once however many attempts it takes."""
        body: dict[str, Any] = {"text": text}
        if url is not None:
            body["url"] = url
        if time is not None:
            body["time"] = time.isoformat() if isinstance(time, datetime) else time
        if urgency is not None:
            body["urgency"] = urgency
        if tags is not None:
            body["tags"] = list(tags)
        if lang is not None:
            body["lang"] = lang
        if pinned is not None:
            body["pinned"] = pinned
        if author is not None:
            body["author"] = author
        headers = self._auth(api_key)
        headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        response = await self._request(
            "POST", self._briefs_path(channel), json=body, headers=headers, idempotent=True
        )
        return Brief.from_json(response.json())

    async def correct(
        self, channel: str, brief_id: str, *, api_key: str | None = None, **changes: Any
    ) -> Brief:
        """Correct a brief (``text=...``, ``url=...`` ...); returns its new state."""
        response = await self._request(
            "PATCH", f"{self._briefs_path(channel)}/{quote(brief_id, safe='')}",
            json=changes, headers=self._auth(api_key), idempotent=False,
        )
        return Brief.from_json(response.json())

    async def retract(self, channel: str, brief_id: str, *, api_key: str | None = None) -> None:
        """Retract a brief (retracting twice is not an error)."""
        await self._request(
            "DELETE", f"{self._briefs_path(channel)}/{quote(brief_id, safe='')}",
            headers=self._auth(api_key), idempotent=True,
        )

    # Reading

    async def briefs(
        self, channel: str, limit: int | None = None, *, token: TokenSource | None = None
    ) -> tuple[list[Brief], str]:
        """The newest briefs of a channel (newest first) and the cursor they are current at.
        ``token``: as for ``subscribe``, for a private channel."""
        params = {"limit": str(limit)} if limit is not None else None
        response = await self._read(channel, params, token)
        data = response.json()
        return [Brief.from_json(b) for b in data["briefs"]], str(data["cursor"])

    async def poll(
        self, channel: str, position: Position, limit: int | None = None, *,
        token: TokenSource | None = None,
    ) -> list[Event]:
        """What happened in ``channel`` since ``position``, over plain HTTP (a script run
        every minute, a network where WebSocket is blocked): the events after its cursor,
        in order (an empty list while nothing happens), or a ``Snapshot`` when there is
        no cursor yet or the server no longer has every event after it (``resumed_from``
        then says which cursor). ``position`` moves past what is returned: pass the same
        object to the next call, and keep its cursor and epoch to resume across runs.
        ``token``: as for ``subscribe``, for a private channel (a function is asked once,
        then again only when the server says the token ended)."""
        params = {"limit": str(limit)} if limit is not None else {}
        if position.cursor is not None:
            params["since"] = position.cursor
            if position.epoch:
                params["epoch"] = position.epoch
        response = await self._read(channel, params, token)
        data = response.json()
        if data.get("recovered"):
            events = [event_from_message(m) for m in data["events"]]
            position.cursor, position.epoch = str(data["cursor"]), data["epoch"] or position.epoch
            return [e for e in events if e is not None]
        snapshot = Snapshot(
            channel, tuple(Brief.from_json(b) for b in data["briefs"]), str(data["cursor"]),
            str(data["epoch"]), resumed_from=position.cursor,
        )
        position.cursor, position.epoch = snapshot.cursor, snapshot.epoch or position.epoch
        return [snapshot]

    async def channels(self) -> list[str]:
        """The names of the channels that have briefs."""
        response = await self._request("GET", "/v1/channels", idempotent=True)
        return [str(c["name"]) for c in response.json()["channels"]]

    # Plumbing

    async def _read(
        self, channel: str, params: dict[str, str] | None, token: TokenSource | None
    ) -> httpx.Response:
        """``GET .../briefs`` with the channel's reader token, if one is given: the one
        kept from before, else a fresh one; asked again once when the server answers that
        the token ended (expired, revoked) or that the channel needs one."""
        path = self._briefs_path(channel)
        if token is None:
            return await self._request("GET", path, params=params, idempotent=True)
        tokens = self._read_tokens.get(token)
        if tokens is None:
            if len(self._read_tokens) >= MAX_READ_SOURCES:  # a new function per call
                del self._read_tokens[next(iter(self._read_tokens))]
            tokens = self._read_tokens[token] = _Tokens(token)
        if channel not in tokens.current:
            await tokens.fresh(channel)
        try:
            return await self._request("GET", path, params=params, idempotent=True,
                                       headers=self._auth(tokens.current[channel]))
        except AuthenticationError as exc:
            if not tokens.renewable or exc.problem.get("code") not in _RENEW_TOKEN:
                raise
        await tokens.fresh(channel)
        return await self._request("GET", path, params=params, idempotent=True,
                                   headers=self._auth(tokens.current[channel]))

    def _auth(self, api_key: str | None) -> dict[str, str]:
        key = api_key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    @staticmethod
    def _briefs_path(channel: str) -> str:
        if not CHANNEL_RE.fullmatch(channel):
            raise ValueError(
                f"{channel!r} is not a channel name: use 1 to 64 lowercase letters, digits "
                "and hyphens."
            )
        return f"/v1/channels/{channel}/briefs"

    async def _request(
        self, method: str, path: str, *, idempotent: bool, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying what is safe to retry; raise for an error answer.

        An idempotent request is retried on any transport error and on 429/502/503/504;
        another only when the connection could not even be made (nothing was sent).
        Answers that say "later" are retried up to ``max_retries`` times, until the next
        wait would end more than ``retry_for`` seconds after the first attempt: enough to
        ride out a Redis failover (Sentinel's ``down-after-milliseconds`` plus an
        election, or a cluster's node timeout: seconds to about twenty). A server that
        does not answer at all is retried ``max_transport_retries`` times: a node
        restarting is back within seconds, and a wrong URL must fail fast."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        transport_failures = 0
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                retry = idempotent or isinstance(exc, httpx.ConnectError)
                delay = full_jitter(transport_failures, self.backoff_base, self.backoff_max)
                transport_failures += 1
                if (
                    last or not retry or transport_failures > self.max_transport_retries
                    or loop.time() + delay > deadline
                ):
                    raise ServerUnreachable(
                        f"Cannot reach the ticker server at {self.base_url} ({exc!r}). Check "
                        "the URL and that the service is running."
                    ) from None
                await asyncio.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in _RETRY_STATUS and idempotent and not last:
                delay = self._retry_after(response, attempt)
                if loop.time() + delay <= deadline:
                    await asyncio.sleep(delay)
                    continue
            raise _error(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        value = response.headers.get("retry-after", "")
        if value.isdigit():
            return min(float(value), self.backoff_max)
        return full_jitter(attempt, self.backoff_base, self.backoff_max)


class _Tokens:
    """The reader tokens of one subscription (or of HTTP reads), by channel, from a
    ``TokenSource``; and how many times in a row each channel refused a fresh one."""

    def __init__(self, source: TokenSource | None) -> None:
        self.source = source
        self.current: dict[str, str] = {}
        self.refusals: dict[str, int] = {}

    @property
    def renewable(self) -> bool:
        return callable(self.source)

    async def fresh(self, channel: str) -> None:
        """A new token for ``channel`` from the source (a fixed token: that one)."""
        source = self.source
        if source is None:
            raise SubscriptionRefused(
                f"Channel {channel!r} is private: pass token=... (a reader token, or a "
                "function that gets one from your site) to read it.",
                error="token_required", channel=channel,
            )
        got = source if isinstance(source, str) else source(channel)
        value = await got if inspect.isawaitable(got) else got
        if not isinstance(value, str) or not value:
            raise TypeError(f"The token function returned {type(value).__name__} for "
                            f"channel {channel!r}: it must return the token (a str).")
        self.current[channel] = value

    async def renew(self, channel: str, error: dict[str, Any], backoff_base: float) -> None:
        """After the server ended or refused ``channel`` for its token (``error``): a
        new one, after a short full-jitter wait if the last new one was refused too;
        SubscriptionRefused when a new one cannot help."""
        code = error.get("code")
        had = channel in self.current
        refused = self.refusals[channel] = self.refusals.get(channel, 0) + 1
        if (had and not self.renewable) or refused > MAX_TOKEN_REFUSALS:
            raise SubscriptionRefused(
                f"The server refused the token for channel {channel!r}: "
                f"{error.get('message')} ({code}). "
                + ("Pass a function as token= so that a new one can be fetched."
                   if not self.renewable else
                   f"{MAX_TOKEN_REFUSALS} new tokens in a row were refused."),
                error=str(code), channel=channel,
            )
        if refused > 1:
            await asyncio.sleep(full_jitter(refused - 1, backoff_base, 5.0))
        await self.fresh(channel)


def _error(response: httpx.Response) -> TickerClientError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:200]}
    error: ProblemError = problem_error(response.status_code, problem)
    if isinstance(error, ServiceUnavailable):
        error.args = (f"{error} The server is still unavailable after retries; try later.",)
    return error
