"""Fuzzing the event streams' request parser, ``parse_events_request`` (ticker.sseproto).

The gate hands a connection to the fast path when this parser takes its first head, and
to uvicorn and the ASGI endpoint otherwise; so it must take exactly the heads the route
would serve as a stream, with the values the endpoint would read. The oracle is the
grammar written out again: heads are built from parts (method, version, path with any
percent-encoding, headers in any order and case, duplicates, bodies, upgrades), and what
the route would see is computed from the parts:

* taken: a ``GET`` of HTTP/1.1 without a body (no ``Transfer-Encoding``, a
  ``Content-Length`` of 0 at most) and not an upgrade, whose path, percent-decoded as
  uvicorn decodes it, is ``/v1/channels/{one segment}/events``;
* the channel is that segment, the query the target's, ``Origin`` the first one without
  the whitespace around it, ``Last-Event-ID`` the first one as Starlette would read it
  (without the whitespace before it; ``parse_resume_point`` strips the rest);
* no bytes make it raise, whole heads or any cut of them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import FUZZ
from ticker.sseproto import EventsRequest, parse_events_request

_SEGMENTS = st.one_of(
    st.sampled_from(["world", "sport-1", "Bad_Name", "a" * 70, "", "é", "a/b", "%2F", "events"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
)


@st.composite
def heads(draw: Any) -> tuple[bytes, dict[str, Any]]:
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "OPTIONS"]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    prefix = draw(st.sampled_from(["/v1/channels/", "/v1/channels/", "/v1/channel/", "/v1/channels//"]))
    segment = draw(_SEGMENTS)
    suffix = draw(st.sampled_from(["/events", "/events", "/events/", "/event", "/events/x"]))
    path = prefix + segment + suffix
    # A client may percent-encode any character: none, only what must be, or every one
    # but the slashes. A raw "%" is kept as sent (then decoded, as uvicorn decodes it).
    style = draw(st.sampled_from(["as-is", "needed", "every"]))
    if style == "every":
        raw_path = "".join(c if c == "/" else "".join(f"%{b:02X}" for b in c.encode()) for c in path)
    else:
        raw_path = quote(path, safe="/%" if style == "as-is" else "/")
    query = draw(st.sampled_from(["", "since=1-0", "since=1-0&epoch=e", "epoch=" + "e" * 70, "a=%20b"]))
    target = raw_path + ("?" + query if query else "")
    headers: list[tuple[str, str]] = [("Host", "x")]
    optional = [
        ("Origin", draw(st.sampled_from(["https://a.example", " https://a.example ", "null"]))),
        ("Origin", "https://second.example"),
        ("Last-Event-ID", draw(st.sampled_from(["5-0", " 5-0", "yesterday", ""]))),
        ("Last-Event-ID", "9-9"),
        ("Content-Length", draw(st.sampled_from(["0", "5"]))),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Connection", draw(st.sampled_from(["Upgrade", "keep-alive", "close"]))),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Accept", "text/event-stream"),
    ]
    for name, value in optional:
        if draw(st.booleans()):
            headers.append((draw(st.sampled_from([name, name.lower(), name.upper()])), value))
    headers = draw(st.permutations(headers))
    lines = [f"{method} {target} HTTP/{version}", *(f"{n}: {v}" for n, v in headers)]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head, {"method": method, "version": version, "target": target, "headers": headers}


def expected(parts: dict[str, Any]) -> EventsRequest | None:
    """What the route would serve as a stream, from the parts of the head."""
    headers = [(n.lower(), v) for n, v in parts["headers"]]
    if parts["method"] != "GET" or parts["version"] != "1.1":
        return None
    if any(n == "transfer-encoding" for n, _ in headers):
        return None
    if any(n == "content-length" and v != "0" for n, v in headers):
        return None
    connection = [v for n, v in headers if n == "connection"]
    if any(n == "upgrade" for n, _ in headers) and any("upgrade" in v.lower() for v in connection):
        return None
    raw_path, _, query = parts["target"].partition("?")
    path = unquote(raw_path)
    prefix, suffix = "/v1/channels/", "/events"
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    channel = path[len(prefix) : -len(suffix)]
    if not channel or "/" in channel:
        return None

    def first(name: str) -> str | None:
        # The whitespace before a value is not part of it (RFC 9110 section 5.5); the
        # whitespace after it, httptools keeps (as uvicorn passes it to Starlette).
        return next((v.lstrip(" \t") for n, v in headers if n == name), None)

    origin = first("origin")
    return EventsRequest(
        channel, query.encode(), None if origin is None else origin.strip(" \t"),
        first("last-event-id"), [], [v for n, v in headers if n == "x-forwarded-for"],
    )


@FUZZ
@given(heads())
@example((b"GET /v1/channels/world/events HTTP/1.1\r\nHost: x\r\n\r\n", {
    "method": "GET", "version": "1.1", "target": "/v1/channels/world/events",
    "headers": [("Host", "x")]}))
def test_a_head_is_taken_exactly_when_the_route_would_stream_it(case: tuple[bytes, dict[str, Any]]) -> None:
    head, parts = case
    assert parse_events_request(head) == expected(parts)


@FUZZ
@given(heads(), st.integers(min_value=0, max_value=400), st.binary(max_size=8))
def test_no_cut_or_change_of_a_head_makes_the_parser_raise(
    case: tuple[bytes, dict[str, Any]], at: int, noise: bytes
) -> None:
    head, _ = case
    at = min(at, len(head))
    for variant in (head[:at], head[:at] + noise + head[at:], head[:at] + head[at + 1 :]):
        result = parse_events_request(variant)
        assert result is None or isinstance(result, EventsRequest)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_a_request_or_none(data: bytes) -> None:
    result = parse_events_request(b"GET /v1/channels/" + data)
    assert result is None or isinstance(result, EventsRequest)
