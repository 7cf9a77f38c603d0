"""ticker.protocol, sans I/O: client messages in, server messages out, no sockets.

Also the pure parts of ticker.store that decide what a client gets: recoverable() (resume
or snapshot) and fold_snapshot() (the newest live briefs from the log, newest first).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ticker import protocol
from ticker.protocol import (
    Close,
    ErrorCode,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    event_message,
    parse_client_message,
    snapshot_message,
    subscribed_message,
)
from ticker.store import ZERO, ChannelMeta, Event, Snapshot, fold_snapshot, recoverable

Entry = tuple[bytes, dict[bytes, bytes]]


def loads(message: bytes) -> Any:
    message.decode()  # UTF-8: sent as a text frame
    return orjson.loads(message)


def brief_body(text: str, **fields: Any) -> dict[str, Any]:
    """A stored brief without its id, as the publish event holds it."""
    return {
        "channel": "world", "text": text, "url": None, "time": "2026-02-14T16:30:00+01:00",
        "urgency": 5, "tags": [], "lang": "fr", "version": 1, "updated_at": None,
        "status": "usable", "pinned": False, **fields,
    }


def events(entries: list[Entry]) -> list[Event]:
    return [Event.from_entry("world", eid, fields) for eid, fields in entries]


def published(entry_id: str, text: str) -> Entry:
    return entry_id.encode(), {b"e": b"brief", b"d": orjson.dumps(brief_body(text))}


def changed(entry_id: str, kind: str, brief_id: str, brief: dict[str, Any]) -> Entry:
    fields = {b"e": kind.encode(), b"b": brief_id.encode(), b"d": orjson.dumps(brief)}
    return entry_id.encode(), fields


def correction_of(entry_id: str, brief_id: str, text: str, version: int = 2) -> Entry:
    brief = {"id": brief_id, **brief_body(text, version=version, updated_at="2026-02-14T17:00:00Z")}
    return changed(entry_id, "correction", brief_id, brief)


def retraction_of(entry_id: str, brief_id: str, text: str) -> Entry:
    brief = {"id": brief_id, **brief_body(text, status="canceled", version=2,
                                          updated_at="2026-02-14T17:00:00Z")}
    return changed(entry_id, "retraction", brief_id, brief)


# parse_client_message: every valid form


@pytest.mark.parametrize(
    "frame, expected",
    [
        ({"op": "subscribe", "channel": "world"}, Subscribe("world")),
        ({"op": "subscribe", "channel": "world", "since": "1732850000000-3"},
         Subscribe("world", (1732850000000, 3))),
        ({"op": "subscribe", "channel": "world", "since": "1732850000000"},
         Subscribe("world", (1732850000000, 0))),
        ({"op": "subscribe", "channel": "world", "since": "0-0"}, Subscribe("world", ZERO)),
        ({"op": "subscribe", "channel": "world", "since": "5-1", "epoch": "9f2c1d0e8a7b6c5d"},
         Subscribe("world", (5, 1), "9f2c1d0e8a7b6c5d")),
        ({"op": "subscribe", "channel": "world", "since": None, "epoch": None}, Subscribe("world")),
        ({"op": "subscribe", "channel": "world", "epoch": ""}, Subscribe("world")),
        ({"channel": "a" * 64, "op": "subscribe"}, Subscribe("a" * 64)),
        ({"op": "unsubscribe", "channel": "world"}, Unsubscribe("world")),
        ({"op": "ping"}, protocol.Ping()),
    ],
)
def test_parse_client_message_reads_every_valid_form(
    frame: dict[str, Any], expected: protocol.ClientMessage
) -> None:
    text = orjson.dumps(frame).decode()
    assert parse_client_message(text) == expected
    assert parse_client_message(text.encode()) == expected  # binary frames too


# parse_client_message: every error


@pytest.mark.parametrize(
    "frame, code, channel",
    [
        # bad_json
        ("not json", ErrorCode.BAD_JSON, None),
        ("", ErrorCode.BAD_JSON, None),
        ('{"op": "subscribe"', ErrorCode.BAD_JSON, None),
        (b"\xff\xfe", ErrorCode.BAD_JSON, None),
        # bad_message: not an object
        ("[]", ErrorCode.BAD_MESSAGE, None),
        ('["subscribe", "world"]', ErrorCode.BAD_MESSAGE, None),
        ('"subscribe"', ErrorCode.BAD_MESSAGE, None),
        ("42", ErrorCode.BAD_MESSAGE, None),
        ("null", ErrorCode.BAD_MESSAGE, None),
        # unknown_op
        ('{"channel": "world"}', ErrorCode.UNKNOWN_OP, None),
        ('{"op": "publish", "channel": "world"}', ErrorCode.UNKNOWN_OP, None),
        ('{"op": "Subscribe", "channel": "world"}', ErrorCode.UNKNOWN_OP, None),
        ('{"op": null, "channel": "world"}', ErrorCode.UNKNOWN_OP, None),
        ('{"op": ["subscribe"], "channel": "world"}', ErrorCode.UNKNOWN_OP, None),
        ('{"op": "ping", "channel": "world"}', ErrorCode.BAD_MESSAGE, None),
        # bad_channel
        ('{"op": "subscribe"}', ErrorCode.BAD_CHANNEL, None),
        ('{"op": "subscribe", "channel": "World"}', ErrorCode.BAD_CHANNEL, None),
        ('{"op": "subscribe", "channel": "-world"}', ErrorCode.BAD_CHANNEL, None),
        ('{"op": "subscribe", "channel": ""}', ErrorCode.BAD_CHANNEL, None),
        ('{"op": "subscribe", "channel": 5}', ErrorCode.BAD_CHANNEL, None),
        (orjson.dumps({"op": "unsubscribe", "channel": "a" * 65}), ErrorCode.BAD_CHANNEL, None),
        # bad_cursor
        *[
            (orjson.dumps({"op": "subscribe", "channel": "world", "since": since}),
             ErrorCode.BAD_CURSOR, "world")
            for since in ["abc", "1-2-3", "", 5, "$", ">", "-1", "18446744073709551616-0"]
        ],
        ('{"op": "subscribe", "channel": "world", "epoch": 5}', ErrorCode.BAD_CURSOR, "world"),
        (orjson.dumps({"op": "subscribe", "channel": "world", "epoch": "e" * 65}),
         ErrorCode.BAD_CURSOR, "world"),
        # unknown fields
        ('{"op": "subscribe", "channel": "world", "from": "1-0"}', ErrorCode.BAD_MESSAGE, "world"),
        ('{"op": "unsubscribe", "channel": "world", "since": "1-0"}', ErrorCode.BAD_MESSAGE,
         "world"),
    ],
)
def test_parse_client_message_refuses_with_the_documented_code(
    frame: str | bytes, code: ErrorCode, channel: str | None
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(frame)
    assert info.value.code == code
    assert info.value.channel == channel
    assert info.value.message and info.value.message[0].isupper()


def test_unknown_field_error_names_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"op": "subscribe", "channel": "world", "cursor": "1-0"}')
    assert "'cursor'" in info.value.message


def test_error_codes_and_close_codes_are_the_documented_values() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad_json", "bad_message", "unknown_op", "bad_channel", "bad_cursor",
        "already_subscribed", "not_subscribed", "channel_deleted", "bad_token",
        "token_required", "invalid_token", "token_wrong_channel", "token_expired",
        "token_revoked", "unauthorized", "forbidden",
    }
    assert {c.name: c.value for c in Close} == {
        "NORMAL": 1000, "GOING_AWAY": 1001, "POLICY_VIOLATION": 1008, "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011, "SERVICE_RESTART": 1012, "TRY_AGAIN_LATER": 1013,
        "TOKEN_REQUIRED": 4001, "TOKEN_REVOKED": 4003, "CHANNEL_DELETED": 4004,
        "SLOW_CONSUMER": 4008, "TOKEN_EXPIRED": 4010,
    }
    assert protocol.SUBPROTOCOL == "ticker.v1"


# Server messages


def test_event_message_for_a_published_brief() -> None:
    entry_id, fields = published("1732850000001-0", "Summit opens")
    event = Event.from_entry("world", entry_id, fields)
    message = event_message(event)
    assert loads(message) == {
        "type": "brief",
        "channel": "world",
        "brief": {"id": "1732850000001-0", **brief_body("Summit opens")},
        "cursor": "1732850000001-0",
    }
    assert next(iter(loads(message)["brief"])) == "id"


def test_event_message_for_a_correction_carries_the_whole_corrected_brief() -> None:
    entry_id, fields = correction_of("1732850000007-0", "1732850000001-0", "Summit opened")
    message = event_message(Event.from_entry("world", entry_id, fields))
    assert loads(message) == {
        "type": "correction",
        "channel": "world",
        "brief": {
            "id": "1732850000001-0",
            **brief_body("Summit opened", version=2, updated_at="2026-02-14T17:00:00Z"),
        },
        "cursor": "1732850000007-0",
    }


def test_event_message_for_a_retraction_names_the_brief_only() -> None:
    entry_id, fields = retraction_of("1732850000009-0", "1732850000001-0", "Summit opens")
    message = event_message(Event.from_entry("world", entry_id, fields))
    assert loads(message) == {
        "type": "retraction",
        "channel": "world",
        "id": "1732850000001-0",
        "cursor": "1732850000009-0",
    }


def test_snapshot_message_holds_the_briefs_in_the_given_order() -> None:
    newer = {"id": "2-0", **brief_body("newer")}
    older = {"id": "1-0", **brief_body("older", version=3)}
    snapshot = Snapshot("world", "7-0", "9f2c", [orjson.dumps(newer), orjson.dumps(older)])
    assert loads(snapshot_message(snapshot)) == {
        "type": "snapshot", "channel": "world", "briefs": [newer, older],
        "cursor": "7-0", "epoch": "9f2c",
    }


def test_snapshot_message_of_an_empty_channel() -> None:
    assert loads(snapshot_message(Snapshot("quiet", "0-0", "", []))) == {
        "type": "snapshot", "channel": "quiet", "briefs": [], "cursor": "0-0", "epoch": "",
    }


@pytest.mark.parametrize("recovered", [True, False])
def test_subscribed_message(recovered: bool) -> None:
    assert loads(subscribed_message("world", recovered, "9f2c")) == {
        "type": "subscribed", "channel": "world", "recovered": recovered, "epoch": "9f2c",
    }


def test_unsubscribed_and_error_messages() -> None:
    assert loads(protocol.unsubscribed_message("world")) == {
        "type": "unsubscribed", "channel": "world",
    }
    assert loads(protocol.error_message(ErrorCode.BAD_JSON, "Messages must be JSON objects.")) == {
        "type": "error", "code": "bad_json", "message": "Messages must be JSON objects.",
    }
    assert loads(protocol.error_message(ErrorCode.BAD_CURSOR, "No.", "world")) == {
        "type": "error", "code": "bad_cursor", "message": "No.", "channel": "world",
    }


# store.recoverable(): resume exactly, or not at all


META = ChannelMeta(epoch="e1", last=(50, 0), floor=(10, 0))


@pytest.mark.parametrize(
    "since, epoch, meta, expected",
    [
        pytest.param((30, 0), "e1", META, True, id="inside-the-log"),
        pytest.param((30, 0), None, META, True, id="inside-the-log-without-epoch"),
        pytest.param((50, 0), "e1", META, True, id="at-the-newest-event"),
        pytest.param((10, 0), "e1", META, True, id="at-the-floor"),
        pytest.param((9, 5), "e1", META, False, id="before-the-floor"),
        pytest.param(ZERO, "e1", META, False, id="from-the-start-after-trimming"),
        pytest.param((50, 1), "e1", META, False, id="from-the-future"),
        pytest.param((30, 0), "e0", META, False, id="another-epoch"),
        pytest.param(ZERO, None, ChannelMeta("e1", (50, 0), ZERO), True,
                     id="from-the-start-nothing-trimmed"),
        pytest.param(ZERO, None, ChannelMeta(None, ZERO, ZERO), True, id="empty-channel"),
        pytest.param((5, 0), None, ChannelMeta(None, ZERO, ZERO), False, id="log-lost"),
        pytest.param((5, 0), "e1", ChannelMeta(None, ZERO, ZERO), False, id="log-lost-with-epoch"),
    ],
)
def test_recoverable(
    since: tuple[int, int], epoch: str | None, meta: ChannelMeta, expected: bool
) -> None:
    assert recoverable(since, epoch, meta, present=True) is expected


@pytest.mark.parametrize(
    "since, expected",
    [
        pytest.param((30, 0), False, id="an-event-this-log-never-had"),
        pytest.param((50, 0), False, id="a-newest-event-lost-in-a-failover"),
        pytest.param((10, 0), True, id="at-the-floor-no-entry-needed"),
        pytest.param((9, 0), False, id="before-the-floor"),
    ],
)
def test_a_cursor_missing_from_the_log_is_not_recovered(
    since: tuple[int, int], expected: bool
) -> None:
    """A cursor is always an event's ID: one between the floor and the newest event that
    the log does not hold was lost with a former primary (docs/architecture.md)."""
    assert recoverable(since, "e1", META, present=False) is expected


# store.fold_snapshot(): the newest live briefs from the log


# The log of a channel, oldest first.
LOG: list[Entry] = [
    published("1-0", "A"),
    published("2-0", "B"),
    published("3-0", "C"),
    correction_of("4-0", "1-0", "A2"),
    retraction_of("5-0", "2-0", "B"),
    published("6-0", "D"),
    correction_of("7-0", "1-0", "A3", version=3),
    published("8-0", "E"),
    retraction_of("9-0", "8-0", "E"),
]
NEWEST_FIRST = list(reversed(LOG))


def fold(entries: list[Entry], limit: int) -> tuple[list[dict[str, Any]], bool]:
    out: list[bytes] = []
    full = fold_snapshot(events(entries), limit, {}, out)
    return [orjson.loads(b) for b in out], full


def test_fold_snapshot_applies_corrections_leaves_out_retractions_newest_first() -> None:
    briefs, full = fold(NEWEST_FIRST, 10)
    assert [(b["id"], b["text"], b["version"]) for b in briefs] == [
        ("6-0", "D", 1), ("3-0", "C", 1), ("1-0", "A3", 3),
    ]
    assert briefs[0] == {"id": "6-0", **brief_body("D")}
    assert full is False  # fewer live briefs than the limit


@pytest.mark.parametrize(
    "limit, ids", [(1, ["6-0"]), (2, ["6-0", "3-0"]), (3, ["6-0", "3-0", "1-0"])]
)
def test_fold_snapshot_respects_the_limit(limit: int, ids: list[str]) -> None:
    briefs, full = fold(NEWEST_FIRST, limit)
    assert [b["id"] for b in briefs] == ids
    assert full is True


def test_fold_snapshot_over_several_pages_equals_one_pass() -> None:
    state: dict[str, bytes | None] = {}
    out: list[bytes] = []
    for start in range(0, len(NEWEST_FIRST), 2):
        if fold_snapshot(events(NEWEST_FIRST[start : start + 2]), 10, state, out):
            break
    assert [orjson.loads(b)["text"] for b in out] == ["D", "C", "A3"]


def test_fold_snapshot_of_an_empty_log() -> None:
    assert fold([], 5) == ([], False)


def test_fold_snapshot_ignores_changes_to_briefs_no_longer_in_the_log() -> None:
    # The publish event of 1-0 was trimmed away; only its correction is left.
    briefs, _ = fold([correction_of("4-0", "1-0", "A2"), published("3-0", "C")], 10)
    assert [b["id"] for b in briefs] == ["3-0"]
