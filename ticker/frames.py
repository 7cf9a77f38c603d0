"""Outbound messages, encoded once per process and framed once per transport.

A ``Message`` is one server message of ``ticker.v1`` (JSON, as ``protocol`` builds it).
Its WebSocket frame is built with it and its Server-Sent Events form on first use, so
that ten thousand subscribers of a channel share one frame per brief. A ``Batch`` is a
run of consecutive event messages of one channel, as one read of the log brings them:
its frames joined once, so that a WebSocket connection gets everything pending in one
write (the frames stay separate WebSocket messages; see "Delivery" in docs/protocol.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# Messages that carry a cursor: their SSE ``id:`` is where a reconnecting client resumes.
_WITH_CURSOR = frozenset({"brief", "correction", "retraction", "snapshot"})


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 section 5.2): a text frame by
    default. Payloads are never compressed (per-message deflate is off)."""
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


class Message:
    """One server message: its JSON, its type, the cursor it carries (if any)."""

    __slots__ = ("_sse", "cursor", "data", "frame", "kind")

    count = 1  # messages in this item of an outbox

    def __init__(self, data: bytes, kind: str, cursor: str | None = None) -> None:
        self.data = data
        self.kind = kind
        self.cursor = cursor if kind in _WITH_CURSOR else None
        self.frame = ws_frame(data)  # as a WebSocket text frame
        self._sse: bytes | None = None

    @classmethod
    def control(cls, data: bytes) -> Message:
        """A message that is not about an event (``pong``, ``error``, ...): its type
        read from the JSON, which always starts with it."""
        start = len(b'{"type":"')
        return cls(data, data[start : data.index(b'"', start)].decode())

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def messages(self) -> Sequence[Message]:
        return (self,)

    @property
    def text(self) -> str:
        return self.data.decode()

    @property
    def sse(self) -> bytes:
        """``event:`` is the type, ``id:`` the cursor where there is one, ``data:`` the
        JSON (orjson never writes a raw newline, so it is one line)."""
        if self._sse is None:
            kind = self.kind.encode()
            if self.cursor is not None:
                head = b"event: " + kind + b"\nid: " + self.cursor.encode() + b"\ndata: "
            else:
                head = b"event: " + kind + b"\ndata: "
            self._sse = head + self.data + b"\n\n"
        return self._sse


class Batch:
    """Consecutive messages that go out together, each framing joined once."""

    __slots__ = ("_sse", "count", "frame", "messages", "size")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.count = len(messages)
        self.size = sum(len(m.data) for m in messages)
        self.frame = b"".join([m.frame for m in messages])
        self._sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"".join([m.sse for m in self.messages])
        return self._sse


Item = Message | Batch


def slices(messages: Sequence[Message], max_count: int, max_bytes: int) -> list[Batch]:
    """``messages`` cut into batches of at most ``max_count`` messages and about
    ``max_bytes`` bytes (a single larger message makes a batch of its own)."""
    out: list[Batch] = []
    start = size = 0
    for i, message in enumerate(messages):
        if i > start and (i - start >= max_count or size + message.size > max_bytes):
            out.append(Batch(messages[start:i]))
            start, size = i, 0
        size += message.size
    if start < len(messages):
        out.append(Batch(messages[start:]))
    return out
