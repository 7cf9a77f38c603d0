"""Fuzzing the small parsers of untrusted text: the cursor (``parse_stream_id``), the
client messages of ``ticker.v1`` (``parse_client_message``) and the SSE resume point
(``resume_point``). Each either answers or raises the one error its caller turns into an
answer to the client; nothing else may escape."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from tests.fuzz import FUZZ
from ticker.errors import ProblemError
from ticker.models import CHANNEL_RE, check_brief_id, parse_stream_id
from ticker.protocol import (
    ErrorCode,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    parse_client_message,
)
from ticker.routes.sse import resume_point
from ticker.store import format_key

U64 = 2**64

# Cursors ------------------------------------------------------------------------------

# Digits of every kind (Arabic-Indic, fullwidth, superscript), signs, spaces: what an
# int() or a \d without re.ASCII would take and the grammar does not.
_CURSOR_CHARS = "0123456789-" + "٠١٢٣٤٥٦٧٨٩" + "\uff10\uff11\uff19" + "²³" + "+_ \t\n."


def _number_text(n: int) -> st.SearchStrategy[str]:
    return st.integers(0, 3).map(lambda zeros: "0" * zeros + str(n))


_near_limit = st.one_of(
    st.integers(0, 2**64 - 1), st.integers(2**64 - 3, 2**64 + 3), st.integers(0, 10**21),
).flatmap(_number_text)

cursor_texts = st.one_of(
    st.text(),
    st.text(alphabet=_CURSOR_CHARS, max_size=45),
    st.tuples(_near_limit, st.sampled_from(["-", "", "--", "-+", " -"]), _near_limit)
    .map(lambda t: "".join(t)),
)


def cursor_grammar(text: str) -> tuple[int, int] | None:
    """The documented grammar, independently: ``ms`` or ``ms-seq``, each 1 to 20 ASCII
    digits (leading zeros allowed), each below 2**64; a missing ``seq`` is 0."""
    parts = text.split("-")
    if len(parts) > 2:
        return None
    if not all(1 <= len(p) <= 20 and all(c in "0123456789" for c in p) for p in parts):
        return None
    numbers = [int(p) for p in parts] + [0]
    if numbers[0] >= U64 or numbers[1] >= U64:
        return None
    return numbers[0], numbers[1]


@FUZZ
@given(cursor_texts)
@example("18446744073709551615-18446744073709551615")
@example("18446744073709551616-0")
@example("٣-0")
@example("1-2\n")
def test_a_cursor_is_accepted_exactly_by_its_grammar(text: str) -> None:
    key = parse_stream_id(text)
    assert key == cursor_grammar(text)
    try:
        brief_id = check_brief_id(text)  # a brief id is a cursor with both parts
    except ProblemError as exc:
        assert exc.status == 400 and _is_sentence(exc.detail), exc.detail
        assert key is None or "-" not in text
    else:
        assert key is not None and "-" in text
        assert brief_id == format_key(key) == f"{int(text.split('-')[0])}-{key[1]}"


@FUZZ
@given(st.integers(0, U64 - 1), st.integers(0, U64 - 1))
def test_a_cursor_round_trips_through_format_key(ms: int, seq: int) -> None:
    assert parse_stream_id(format_key((ms, seq))) == (ms, seq)


# Client messages ---------------------------------------------------------------------

ECHO_LIMIT = 40  # characters of the input an error message may repeat


def _is_sentence(text: str) -> bool:
    """Starts with a capital (or the quoted value it is about) and ends with a stop."""
    return bool(text) and (text[0].isupper() or text[0] in "'\"") and text.endswith(".")


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value: keys and values, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _echoes(message: str, text: str) -> bool:
    """Does ``message`` repeat more than ECHO_LIMIT characters of ``text`` in a row, as
    they are or as ``repr`` escapes them?"""
    n = ECHO_LIMIT + 1
    for i in range(len(text) - n + 1):
        window = text[i:i + n]
        if window in message or repr(window)[1:-1] in message:
            return True
    return False


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
channels = st.from_regex(CHANNEL_RE, fullmatch=True)
cursors = st.tuples(st.integers(0, U64 - 1), st.integers(0, U64 - 1)).map(format_key)

# Message-shaped objects: the right keys, with values right, nearly right or anything.
shaped_messages = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["subscribe", "unsubscribe", "ping", "Subscribe", ""]) | json_values,
        "channel": channels | st.text(max_size=80) | json_values,
        "since": cursors | cursor_texts | json_values,
        "epoch": st.text(max_size=80) | json_values,
        "extra": json_values,
        "o" * 50: json_values,
    },
)


def _encodings(value: Any) -> st.SearchStrategy[str | bytes]:
    text = json.dumps(value)
    return st.sampled_from([text, text.encode(), json.dumps(value, ensure_ascii=False)])


client_frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.flatmap(_encodings),
    shaped_messages.flatmap(_encodings),
)


def _parse(data: str | bytes) -> Ping | Subscribe | Unsubscribe | ProtocolError:
    try:
        return parse_client_message(data)
    except ProtocolError as exc:
        return exc


@FUZZ
@given(client_frames)
@example(b"\xff")
@example("\ud800")
@example('{"op": "subscribe", "channel": "a", "since": "99999999999999999999-0"}')
@example('{"op": ' + json.dumps("x" * 100) + "}")
def test_a_client_message_parses_or_is_a_protocol_error_that_echoes_little(
    data: str | bytes,
) -> None:
    result = _parse(data)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(result, ProtocolError):
        _check_parsed(value, result)
        return
    assert result.code in set(ErrorCode)
    assert _is_sentence(result.message), result.message
    # The channel an error names goes back to the client: only a valid one.
    assert result.channel is None or CHANNEL_RE.fullmatch(result.channel)
    texts = _strings(value) + [str(v) for v in (value.values() if isinstance(value, dict) else [])]
    for text in texts:
        assert not _echoes(result.message, text), (result.message, text)


def _check_parsed(value: Any, result: Ping | Subscribe | Unsubscribe) -> None:
    """What a parsed message must have been (docs/protocol.md)."""
    assert isinstance(value, dict)
    if isinstance(result, Ping):
        assert value == {"op": "ping"}
        return
    assert CHANNEL_RE.fullmatch(value["channel"]) and value["channel"] == result.channel
    if isinstance(result, Unsubscribe):
        assert set(value) == {"op", "channel"} and value["op"] == "unsubscribe"
        return
    assert value["op"] == "subscribe" and set(value) <= {"op", "channel", "since", "epoch"}
    since, epoch = value.get("since"), value.get("epoch")
    assert result.since == (None if since is None else parse_stream_id(since))
    assert result.epoch == (epoch or None)


valid_messages = st.one_of(
    st.just(({"op": "ping"}, Ping())),
    channels.map(lambda c: ({"op": "unsubscribe", "channel": c}, Unsubscribe(c))),
    st.tuples(
        channels,
        st.none() | st.tuples(st.integers(0, U64 - 1), st.integers(0, U64 - 1)),
        st.none() | st.text(max_size=64),
        st.booleans(),
    ).map(lambda t: _subscribe(*t)),
)


def _subscribe(
    channel: str, since: tuple[int, int] | None, epoch: str | None, explicit_nulls: bool,
) -> tuple[dict[str, Any], Subscribe]:
    message: dict[str, Any] = {"op": "subscribe", "channel": channel}
    if since is not None or explicit_nulls:
        message["since"] = None if since is None else format_key(since)
    if epoch is not None or explicit_nulls:
        message["epoch"] = epoch
    return message, Subscribe(channel, since, epoch or None)


@FUZZ
@given(valid_messages.flatmap(lambda m: st.tuples(st.just(m[1]), _encodings(m[0]))))
def test_a_valid_message_parses_to_its_dataclass(case: tuple[Any, str | bytes]) -> None:
    expected, data = case
    assert parse_client_message(data) == expected


@pytest.mark.parametrize(
    "value", ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000], ids=["array", "object"],
)
def test_a_deeply_nested_op_is_an_unknown_op(value: str) -> None:
    """Found by the target above: str() of a value nested a thousand deep (orjson takes
    up to 1023 levels, in 2 KB) raised RecursionError out of the parser (fixed in ac2e102)."""
    with pytest.raises(ProtocolError) as caught:
        parse_client_message('{"op":' + value + "}")
    assert caught.value.code == ErrorCode.UNKNOWN_OP


# The SSE resume point ------------------------------------------------------------------


def _request(last_event_id: bytes | None, query: bytes) -> Request:
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id)]
    return Request({
        "type": "http", "method": "GET", "path": "/v1/channels/world/events",
        "raw_path": b"/v1/channels/world/events", "query_string": query,
        "headers": headers,
    })


_query_values = st.none() | cursors | cursor_texts | st.text(max_size=100)
_header_values = (
    st.none() | cursors.map(str.encode) | cursor_texts.map(str.encode) | st.binary(max_size=100)
)


def expected_resume_point(
    header: bytes | None, since: str | None, epoch: str | None,
) -> tuple[tuple[int, int] | None, str | None] | None:
    """The documented answer (None: a problem): Last-Event-ID wins over ?since=, either
    may have spaces around it; ?epoch= is at most 64 characters."""
    raw = (header.decode("latin-1") if header is not None else None) or since or None
    epoch = epoch or None
    if epoch is not None and len(epoch) > 64:
        return None
    if raw is None:
        return None, epoch
    key = parse_stream_id(raw.strip())
    return None if key is None else (key, epoch)


@FUZZ
@given(_header_values, _query_values, _query_values)
@example(b"1-1", None, "e" * 65)
@example(b"", "  7-0 ", None)
@example(b" \xa07-0\x85", None, None)  # Latin-1 spaces around the cursor
def test_a_resume_point_is_the_documented_cursor_or_a_problem(
    header: bytes | None, since: str | None, epoch: str | None,
) -> None:
    query = urlencode({k: v for k, v in (("since", since), ("epoch", epoch)) if v is not None})
    expected = expected_resume_point(header, since, epoch)
    try:
        got = resume_point(_request(header, query.encode()))
    except ProblemError as exc:
        assert exc.status == 400 and exc.type_suffix == "bad-cursor"
        assert _is_sentence(exc.detail), exc.detail
        assert expected is None
    else:
        assert got == expected


@FUZZ
@given(st.none() | st.binary(max_size=100), st.binary(max_size=200))
def test_any_resume_point_request_is_answered_or_a_problem(
    header: bytes | None, query: bytes,
) -> None:
    try:
        key, epoch = resume_point(_request(header, query))
    except ProblemError as exc:
        assert exc.status == 400 and _is_sentence(exc.detail)
    else:
        assert key is None or (0 <= key[0] < U64 and 0 <= key[1] < U64)
        assert epoch is None or 0 < len(epoch) <= 64
