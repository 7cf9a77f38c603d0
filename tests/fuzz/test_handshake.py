"""Fuzzing the subscribers' upgrade parser, ``parse_upgrade`` (ticker.wsproto), against
websockets' ``ServerProtocol`` reading the same bytes (``receive_data``, then ``accept``).

ticker takes the plain, valid upgrades on its fast path and returns None for the rest,
which uvicorn hands to websockets' full path (the 101, or the error that names the
problem). So:

* what clients send (any header order, any case of names, other headers around) is
  taken, with the target, Sec-WebSocket-Accept, Origin and subprotocol websockets finds;
* whatever ticker takes, websockets takes too, with the same values; ticker may leave
  to websockets some that websockets would take (a unique header sent twice, values
  with whitespace around them);
* no bytes make it raise.

Tolerated, where ticker takes what websockets refuses (``_repaired``): ticker reads the
head with httptools, as uvicorn reads every request, and

* CR and LF before the request line are skipped (RFC 9112 section 2.2 asks servers to
  skip at least one empty line there);
* more than one space between the request line's parts is read as one;
* a Connection header whose other tokens websockets cannot parse still has "upgrade";
* a Sec-WebSocket-Protocol header websockets cannot parse is split on commas: ticker
  only ever chooses the exact "ticker.v1", so nothing else can be chosen from it.

Two differences were bugs, found here and fixed, each kept as a test below: a request
with a body was taken (its body then read as frames), and the whitespace after a value
(an Origin's) was kept.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.utils import accept_key

from tests.fuzz import FUZZ
from ticker.wsproto import parse_upgrade

SUBPROTOCOL = Subprotocol("ticker.v1")


def websockets_answer(head: bytes) -> tuple[Request | None, Response | None]:
    """The request websockets reads from ``head`` and its answer (None, None if it
    cannot read a request), choosing "ticker.v1" when offered, as the app does."""
    protocol = ServerProtocol(
        select_subprotocol=lambda _, offered: SUBPROTOCOL if SUBPROTOCOL in offered else None,
    )
    protocol.receive_data(head)
    events = protocol.events_received()
    if not events:
        return None, None
    request = events[0]
    assert isinstance(request, Request)
    return request, protocol.accept(request)


def _takes(head: bytes) -> bool:
    response = websockets_answer(head)[1]
    return response is not None and response.status_code == 101


def _repaired(head: bytes) -> tuple[list[str], bytes] | None:
    """What ticker tolerates in ``head`` and websockets does not (see the module's
    docstring), and the head without it, which websockets takes; None if there is none
    of that, or if websockets refuses the head even without it."""
    tolerated = []
    if head[:1] in (b"\r", b"\n"):
        head = head.lstrip(b"\r\n")
        tolerated.append("empty lines before the request")
    lines = head.split(b"\r\n")
    line = re.sub(rb" +", b" ", lines[0])
    if line != lines[0]:
        lines[0] = line
        tolerated.append("request line spacing")
    for name, plain, why in [
        (b"connection", b"Connection: Upgrade", "Connection tokens"),
        (b"sec-websocket-protocol", None, "Sec-WebSocket-Protocol syntax"),
    ]:
        kept = [x for x in lines if not x.lower().startswith(name + b":")]
        if len(kept) < len(lines):
            lines = kept[:1] + ([plain] if plain else []) + kept[1:]
            tolerated.append(why)
    repaired = b"\r\n".join(lines)
    return (tolerated, repaired) if tolerated and _takes(repaired) else None


def check_agrees(head: bytes) -> None:
    """ticker takes only what websockets takes (or tolerates, ``_repaired``), with the
    same values."""
    upgrade = parse_upgrade(head)
    request, response = websockets_answer(head)
    websockets_takes = response is not None and response.status_code == 101
    event(f"ticker {'takes' if upgrade else 'leaves'}, websockets "
          f"{'takes' if websockets_takes else 'refuses'}")
    if upgrade is None:
        return
    tolerated: list[str] = []
    if not websockets_takes:
        repaired = _repaired(head)
        assert repaired is not None, (
            f"ticker takes an upgrade websockets refuses ({response and response.body!r}): "
            f"{head!r}")
        tolerated, head = repaired
        event(f"tolerated: {', '.join(tolerated)}")
        request, response = websockets_answer(head)
    assert request is not None and response is not None
    assert upgrade.target == request.path.encode()
    key = request.headers["Sec-WebSocket-Key"]
    assert upgrade.accept.decode() == response.headers["Sec-WebSocket-Accept"] == accept_key(key)
    assert upgrade.origin == request.headers.get("Origin")
    if "Sec-WebSocket-Protocol syntax" not in tolerated:  # (else websockets chose from nothing)
        chosen = response.headers.get("Sec-WebSocket-Protocol")
        assert (SUBPROTOCOL if SUBPROTOCOL in upgrade.protocols else None) == chosen


# Heads ----------------------------------------------------------------------------------

keys = st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode())
bad_keys = st.sampled_from([
    "", "abc", "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAA===",
    "AAAAAAAAAAAAAAAAAAAAAB==", "AAAAAAAA AAAAAAAAAAAAA==", "AAAAAAAAAAAAAAAAAAAA-A==",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "=AAAAAAAAAAAAAAAAAAAAAA=",
]) | st.text(max_size=30)
origins = st.sampled_from(
    ["https://news.example", "null", "http://[::1]:8000", "https://a.example/path"]
) | st.from_regex(r"https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
tokens = st.sampled_from(["chat", "ticker.v1", "ticker.v2", "x"])
protocol_lists = st.lists(tokens, min_size=1, max_size=3).map(", ".join)

# Headers a client may add around the handshake's own.
EXTRA: dict[str, st.SearchStrategy[str]] = {
    "Host": st.just("ticker.example:8000"),
    "User-Agent": st.just("Mozilla/5.0 (X11; Linux x86_64)"),
    "Origin": origins,
    "Sec-WebSocket-Protocol": protocol_lists,
    "Sec-WebSocket-Extensions": st.just("permessage-deflate; client_max_window_bits"),
    "Cookie": st.just("a=b; c=d"),
    "Cache-Control": st.just("no-cache"),
    "X-Forwarded-For": st.just("203.0.113.9, 198.51.100.2"),
    "Forwarded": st.just('for="[2001:db8::1]:4711";proto=https'),
}

# Values near the right ones, for the headers that decide.
NEAR: dict[str, st.SearchStrategy[str]] = {
    "Upgrade": st.sampled_from(["websocket", "WebSocket", "WEBSOCKET", "websocket, h2c",
                                "h2c, websocket", "h2c", "", "websocket/13", "web socket"]),
    "Connection": st.sampled_from(["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, close",
                                   "close", ",upgrade", "upgrade,", "keep-alive", "upgrade, @@",
                                   "Upgrade;x", "up grade", "", "upgrade upgrade"]),
    "Sec-WebSocket-Key": keys | bad_keys,
    "Sec-WebSocket-Version": st.sampled_from(["13", "8", "13, 8", "", "013", "13.0", "1 3"]),
    "Origin": origins | st.text(max_size=20),
    "Sec-WebSocket-Protocol": protocol_lists | st.sampled_from(
        ["", ",", "ticker.v1,", "a b, ticker.v1", "ticker.v1;q=1", "\xfe", "ticker.v1 ,x"]),
    "Sec-WebSocket-Extensions": st.sampled_from(["permessage-deflate", ";;", 'x="', ""]),
    "X-Other": st.text(max_size=20),
}


def _encode(text: str) -> bytes:
    return text.encode("latin-1") if all(ord(c) < 256 for c in text) else text.encode()


@st.composite
def client_heads(draw: st.DrawFn) -> bytes:
    """A handshake as clients send it: the four headers that make it, in any order, with
    names in any case, among other headers."""
    fields = [
        ("Upgrade", draw(st.sampled_from(["websocket", "WebSocket"]))),
        ("Connection", draw(st.sampled_from(["Upgrade", "upgrade", "keep-alive, Upgrade"]))),
        ("Sec-WebSocket-Key", draw(keys)),
        ("Sec-WebSocket-Version", "13"),
    ]
    for name in draw(st.sets(st.sampled_from(sorted(EXTRA)))):
        fields.append((name, draw(EXTRA[name])))
    fields = draw(st.permutations(fields))
    names = [draw(st.sampled_from([n, n.lower(), n.upper()])) for n, _ in fields]
    target = draw(st.sampled_from(["/v1/ws", "/v1/ws?client=widget", "/v1/%77s", "/"]))
    lines = [f"GET {target} HTTP/1.1"] + [f"{n}: {v}" for n, (_, v) in zip(names, fields, strict=True)]
    return _encode("\r\n".join(lines) + "\r\n\r\n")


DECIDING = ("Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version")
MUTATIONS = ("method", "target", "version", "spacing", "drop", "twice", "value", "case",
             "colon", "whitespace", "extra", "bare-lf")


@st.composite
def near_heads(draw: st.DrawFn) -> bytes:
    """A client's handshake with a few things changed: one of the four headers that make
    it with a value near the right one (half the time), and up to two changes of any
    kind (the request line, a header dropped, sent twice, spelt differently, ...)."""
    line = ["GET", " ", "/v1/ws", " ", "HTTP/1.1"]
    fields = [["Host", ": ", "ticker.example"], ["Upgrade", ": ", "websocket"],
              ["Connection", ": ", "Upgrade"], ["Sec-WebSocket-Key", ": ", draw(keys)],
              ["Sec-WebSocket-Version", ": ", "13"]]
    bare_lf = -1
    if draw(st.booleans()):
        name = draw(st.sampled_from(DECIDING))
        fields[[f[0] for f in fields].index(name)][2] = draw(NEAR[name])
    for change in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        field = draw(st.sampled_from(fields)) if fields else ["X-Other", ": ", ""]
        if change == "method":
            line[0] = draw(st.sampled_from(["get", "POST", "HEAD", "GETT", "OPTIONS"]))
        elif change == "target":
            line[2] = draw(st.sampled_from(
                ["/v1/ws?x=1", "/", "*", "http://h/v1/ws", "/v1/ws#f", "/\xff", "/v1/ws?\xe9", "",
                 "/a b"]) | st.text(max_size=10).map(lambda t: "/" + t))
        elif change == "version":
            line[4] = draw(st.sampled_from(
                ["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/1.10", "HTTP/01.1"]))
        elif change == "spacing":
            line[draw(st.sampled_from([1, 3]))] = draw(st.sampled_from(["  ", "\t", " \t"]))
        elif change == "drop" and fields:
            fields.remove(field)
        elif change == "twice" and fields:
            again = [field[0], ": ", draw(NEAR.get(field[0], st.just(field[2])) | st.just(field[2]))]
            fields.insert(draw(st.integers(0, len(fields))), again)
        elif change == "value":
            field[2] = draw(NEAR.get(field[0], st.text(max_size=8)))
        elif change == "case":
            field[0] = draw(st.sampled_from([field[0].lower(), field[0].upper(), field[0].swapcase()]))
        elif change == "colon":
            field[1] = draw(st.sampled_from([":", ":  ", ":\t", " : ", "\t:"]))
        elif change == "whitespace":
            field[2] = draw(st.sampled_from(["", " ", "\t"])) + field[2] + draw(
                st.sampled_from([" ", "\t", "  "]))
        elif change == "extra":
            name = draw(st.sampled_from(sorted(NEAR)))
            fields.insert(draw(st.integers(0, len(fields))), [name, ": ", draw(NEAR[name])])
        elif change == "bare-lf":
            bare_lf = draw(st.integers(0, len(fields)))
    lines = ["".join(line)] + ["".join(f) for f in fields]
    text = "".join(x + ("\n" if i == bare_lf else "\r\n") for i, x in enumerate(lines)) + "\r\n"
    return _encode(text)


# The targets ----------------------------------------------------------------------------

# A head takes about a millisecond: three times the examples of the other targets.
FUZZ_HEADS = settings(FUZZ, max_examples=3 * FUZZ.max_examples)


@FUZZ
@given(client_heads())
def test_the_handshakes_clients_send_are_taken_with_the_values_websockets_reads(
    head: bytes,
) -> None:
    assert parse_upgrade(head) is not None, head
    check_agrees(head)


@FUZZ_HEADS
@given(near_heads())
@example(b"GET  /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n")
@example(b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade, @@\r\n"
         b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Protocol: a b, ticker.v1\r\n\r\n")
def test_an_upgrade_ticker_takes_is_one_websockets_takes(head: bytes) -> None:
    check_agrees(head)


@st.composite
def broken_heads(draw: st.DrawFn) -> bytes:
    """Heads with bytes changed, cut or added anywhere."""
    data = bytearray(draw(near_heads()))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or i == len(data):
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"\r\n", b"\n", b"\r", b":", b"\x00", b" ", b"\r\n\r\n"]))
        elif action == "flip":
            data[i] = draw(st.integers(0, 255))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ_HEADS
@given(st.binary(max_size=300) | broken_heads())
def test_any_bytes_are_an_upgrade_or_none(head: bytes) -> None:
    upgrade = parse_upgrade(head)
    if upgrade is not None:
        assert len(base64.b64decode(upgrade.accept, validate=True)) == 20
        assert all(isinstance(p, str) for p in upgrade.protocols)
        check_agrees(head)


# Bugs, reported to the lead: each fails until fixed ----------------------------------

_HEAD = (b"GET /v1/ws HTTP/1.1\r\nHost: ticker.example\r\nUpgrade: websocket\r\n"
         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         b"Sec-WebSocket-Version: 13\r\n")


@pytest.mark.parametrize("field", [b"Content-Length: 5", b"Transfer-Encoding: chunked"])
def test_an_upgrade_with_a_body_is_left_to_websockets(field: bytes) -> None:
    head = _HEAD + field + b"\r\n\r\n"
    assert not _takes(head)
    assert parse_upgrade(head) is None


def test_the_origin_is_read_without_the_whitespace_around_it() -> None:
    head = _HEAD + b"Origin: https://a.example \t\r\n\r\n"
    request, _ = websockets_answer(head)
    assert request is not None and request.headers["Origin"] == "https://a.example"
    upgrade = parse_upgrade(head)
    assert upgrade is not None and upgrade.origin == "https://a.example"
