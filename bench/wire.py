"""What the baseline servers share: ticker's stream layout and its ``ticker.v1`` messages.

The baselines read the very stream ticker writes (``ticker:{ch}:log``, fields ``e`` and
``d``; see ticker/lua/publish.lua) and send byte-for-byte the messages ticker sends
(docs/protocol.md), so that the load client sees the same frames from every server. This
module is self-contained on purpose: the baselines must not change when ticker does.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable

import orjson

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

Entry = tuple[bytes, dict[bytes, bytes]]


def log_key(channel: str) -> str:
    return f"ticker:{{{channel}}}:log"


def meta_key(channel: str) -> str:
    return f"ticker:{{{channel}}}:meta"


def key_of(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def brief_json(entry_id: bytes, fields: dict[bytes, bytes]) -> bytes:
    # A publish event stores the brief without its id (the entry ID): splice it in.
    return b'{"id":"' + entry_id + b'",' + fields[b"d"][1:]


def brief_message(channel: str, entry_id: bytes, fields: dict[bytes, bytes]) -> bytes:
    return (
        b'{"type":"brief","channel":' + orjson.dumps(channel) + b',"brief":'
        + brief_json(entry_id, fields) + b',"cursor":"' + entry_id + b'"}'
    )


def snapshot_message(channel: str, briefs: Iterable[bytes], cursor: str, epoch: str) -> bytes:
    return (
        b'{"type":"snapshot","channel":' + orjson.dumps(channel) + b',"briefs":['
        + b",".join(briefs) + b'],"cursor":"' + cursor.encode() + b'","epoch":'
        + orjson.dumps(epoch) + b"}"
    )


def subscribed_message(channel: str, recovered: bool, epoch: str) -> bytes:
    return orjson.dumps(
        {"type": "subscribed", "channel": channel, "recovered": recovered, "epoch": epoch}
    )


def is_brief(fields: dict[bytes, bytes]) -> bool:
    return fields.get(b"e") == b"brief"


# Raw WebSocket, for the floors (RFC 6455).


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def text_frame(payload: bytes) -> bytes:
    """One unmasked server text frame (FIN, opcode 1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload[:125]
