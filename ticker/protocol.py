"""The WebSocket protocol ``ticker.v1``, without I/O: client messages in, server messages out.

Every server message is a JSON text frame. Messages about one event are encoded once per
process and the same bytes go to every subscriber (``ticker.frames``). See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import orjson

from ticker.models import CHANNEL_RE, parse_stream_id
from ticker.store import Event, Snapshot, StreamKey

SUBPROTOCOL = "ticker.v1"


class Close(enum.IntEnum):
    """Close codes the server uses (RFC 6455 section 7.4, and 4000-4999 for ticker)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is going away for good
    POLICY_VIOLATION = 1008  # origin not allowed, too many subscriptions
    MESSAGE_TOO_BIG = 1009  # an inbound message above ws_max_message_bytes
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # reconnect with jitter and resume from the cursor
    TRY_AGAIN_LATER = 1013  # Redis unreachable during a subscribe: reconnect later
    TOKEN_REQUIRED = 4001  # an event stream's channel became private: reconnect with a token
    TOKEN_REVOKED = 4003  # an event stream's token was revoked: get a new one
    CHANNEL_DELETED = 4004  # the connection's only channel was deleted: do not resume it
    SLOW_CONSUMER = 4008  # fell behind past the outbox bound: reconnect and resume
    TOKEN_EXPIRED = 4010  # an event stream's token expired: reconnect with a new one and resume


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_OP = "unknown_op"
    BAD_CHANNEL = "bad_channel"
    BAD_CURSOR = "bad_cursor"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    CHANNEL_DELETED = "channel_deleted"
    BAD_TOKEN = "bad_token"  # 'token' is not a string of at most MAX_TOKEN bytes
    # A private channel refused (ticker.access, ticker.tokens): the connection goes on.
    TOKEN_REQUIRED = "token_required"
    INVALID_TOKEN = "invalid_token"
    TOKEN_WRONG_CHANNEL = "token_wrong_channel"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    UNAUTHORIZED = "unauthorized"  # an API key as token that does not authenticate
    FORBIDDEN = "forbidden"  # an API key as token that may not read the channel


class ProtocolError(Exception):
    """A client message that cannot be served; answered with an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.channel = channel


MAX_TOKEN = 4096  # a reader token's length (ticker.tokens.MAX_TOKEN_BYTES)


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: StreamKey | None = None
    epoch: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)  # never in a log


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """A client checking that the connection is alive (after a sleep, say): ``pong``."""


ClientMessage = Subscribe | Unsubscribe | Ping
PONG = b'{"type":"pong"}'


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Parse one client frame, or raise ProtocolError saying what was expected."""
    try:
        msg: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON, "Messages must be JSON objects.") from None
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "Messages must be JSON objects.")
    op = msg.get("op")
    if op == "ping":
        if set(msg) != {"op"}:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "A 'ping' has no other field.")
        return Ping()
    if op not in ("subscribe", "unsubscribe"):
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f"Expected 'op' to be 'subscribe', 'unsubscribe' or 'ping', but got {_shown(op)}.",
        )
    channel = msg.get("channel")
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        raise ProtocolError(
            ErrorCode.BAD_CHANNEL,
            "Expected 'channel' to be a channel name: 1 to 64 lowercase letters, digits "
            "and hyphens.",
        )
    allowed = ({"op", "channel", "since", "epoch", "token"} if op == "subscribe"
               else {"op", "channel"})
    extra = set(msg) - allowed
    if extra:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"Unknown field {sorted(extra)[0][:40]!r} in {op!r}; allowed: {', '.join(sorted(allowed))}.",
            channel,
        )
    if op == "unsubscribe":
        return Unsubscribe(channel)
    since = msg.get("since")
    epoch = msg.get("epoch")
    key = None
    if since is not None:
        key = parse_stream_id(since) if isinstance(since, str) else None
        if key is None:
            raise ProtocolError(
                ErrorCode.BAD_CURSOR,
                "Expected 'since' to be a cursor such as '1732850000000-0' (the 'cursor' of "
                "the last message received).",
                channel,
            )
    if epoch is not None and (not isinstance(epoch, str) or len(epoch) > 64):
        raise ProtocolError(
            ErrorCode.BAD_CURSOR, "Expected 'epoch' to be the string the server sent.", channel
        )
    token = msg.get("token")
    if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN):
        raise ProtocolError(
            ErrorCode.BAD_TOKEN,
            f"Expected 'token' to be a reader token (a string of at most {MAX_TOKEN} bytes).",
            channel,
        )
    return Subscribe(channel, key, epoch or None, token)


class Allowance:
    """How many messages a client may still send: ``burst`` at once, refilled at
    ``rate`` per second (a token bucket). A client past it is closed with 1008
    (``too_many_messages``): what one anonymous connection makes the server do
    (subscribe, unsubscribe, answer) is bounded."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now  # when it was last refilled

    def spend(self, now: float, rate: float, burst: int) -> bool:
        """Take one message; False when none is left."""
        tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


def too_many_messages(rate: float, burst: int) -> str:
    """The reason of the close (1008) when a client's allowance is spent."""
    return f"too many messages: at most {rate:g} per second, {burst} at once"


def _shown(value: Any) -> str:
    """A client's JSON value, for an error message: strings and numbers as they are (40
    characters at most), arrays and objects by their kind only (``str()`` of one nested a
    thousand deep would recurse past Python's limit)."""
    if isinstance(value, str):
        return repr(value[:40])
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:40]
    return "an array" if isinstance(value, list) else "an object"


# Server messages. Brief JSON is spliced in as bytes: it is never parsed on this path.


def _str(value: str) -> bytes:
    return orjson.dumps(value)


def event_message(event: Event) -> bytes:
    head = b'{"type":"' + event.kind.encode() + b'","channel":' + _str(event.channel)
    # A retraction names the brief; the others carry it whole.
    body = (
        b',"id":' + _str(event.brief_id) if event.kind == "retraction" else b',"brief":' + event.brief
    )
    return head + body + b',"cursor":"' + event.id.encode() + b'"}'


def snapshot_message(snapshot: Snapshot) -> bytes:
    return (
        b'{"type":"snapshot","channel":' + _str(snapshot.channel)
        + b',"briefs":[' + b",".join(snapshot.briefs)
        + b'],"cursor":"' + snapshot.cursor.encode()
        + b'","epoch":' + _str(snapshot.epoch) + b"}"
    )


def subscribed_message(channel: str, recovered: bool, epoch: str) -> bytes:
    return orjson.dumps(
        {"type": "subscribed", "channel": channel, "recovered": recovered, "epoch": epoch}
    )


def unsubscribed_message(channel: str) -> bytes:
    return orjson.dumps({"type": "unsubscribed", "channel": channel})


def token_expiring_message(channel: str, seconds: int) -> bytes:
    """The subscription's token expires in ``seconds``: subscribe again with a new one."""
    return orjson.dumps({"type": "token-expiring", "channel": channel, "in": seconds})


def error_message(code: str, message: str, channel: str | None = None) -> bytes:
    msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if channel is not None:
        msg["channel"] = channel
    return orjson.dumps(msg)
