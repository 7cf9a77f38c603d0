"""Fuzzing the subscribers' frame reader, ``Subscriber.data_received`` (ticker.wsproto).

The Subscriber is driven without a socket: a recording transport (``Recorder``) takes
what it writes and its end, and is its listener too, so that one log holds everything
in order. Socket behaviour is tested with real sockets in tests/test_wsproto.py.

* Arbitrary bytes in arbitrary chunks: it never raises; the listener hears of the end
  at most once, and nothing after it; nothing is written after the socket is closed;
  what it holds stays bounded (one incomplete frame, a bounded list of fragments); and
  the outcome does not depend on how the bytes were cut.
* Client frame streams generated from their structure (opcodes, FIN, reserved bits,
  masks, payloads, the three length encodings, fragments with control frames between
  them, close frames, and defects), cut anywhere: the same messages, pongs and close as
  websockets' own sans-I/O server parser (``reference``), within the differences below.

Where ticker differs from websockets, on purpose (each also shown on its own below):

* Control frames are judged on their own. RFC 6455 (section 5.4) lets them come between
  the fragments of a message, and they are not part of it; websockets counts their
  payload against ``max_size`` (a 100-byte ping after fragments that leave 50 bytes is
  refused with 1009) and refuses a close frame there with 1002 ("incomplete fragmented
  message"). ticker limits control frames to 125 bytes only, and echoes that close.
  The oracle gives each control frame to a fresh websockets parser of its own.
* Text in UTF-8 is checked when the message is whole (websockets' sans-I/O layer does
  not decode; its asyncio layer fails the connection with 1007 when it does).
* A frame with several defects may close with the code of any of them: RFC 6455 orders
  no checks; websockets checks the opcode, the mask, the size, then reserved bits,
  ticker the mask, reserved bits, control frame rules, the size, then the opcode.
* ticker's own limits: a message of more than ``max_fragments`` frames closes with 1009
  (its next continuation frame); each message and each ping is spent from an allowance
  (``burst``, refilled at ``rate`` per second) and one past it closes with 1008. The
  oracle counts both, with a rate of 0 so that the allowance does not depend on time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets import frames as ws_frames
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from tests.fuzz import FUZZ
from ticker.admission import Admission
from ticker.wsproto import Subscriber, _Shared

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
UNLIMITED = 10**9


# Driving a Subscriber without a socket -------------------------------------------------


class Recorder:
    """The Subscriber's transport and its listener: what it does, in order. ``eof``: the
    transport can half-close (TCP), or cannot (TLS)."""

    def __init__(self, eof: bool = True) -> None:
        self.log: list[tuple[str, Any]] = []
        self.closing = False
        self.eof = eof

    # asyncio.WriteTransport, as much as Subscriber uses

    def write(self, data: bytes) -> None:
        self.log.append(("write", bytes(data)))

    def close(self) -> None:
        self.log.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.log.append(("abort", None))
        self.closing = True

    def can_write_eof(self) -> bool:
        return self.eof

    def write_eof(self) -> None:
        assert self.eof
        self.log.append(("eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    # ticker.wsproto.Listener

    def message(self, data: str | bytes) -> None:
        self.log.append(("message", data))

    def gone(self) -> None:
        self.log.append(("gone", None))


@functools.lru_cache
def _config(max_size: int) -> Config:
    return Config(
        app=_no_app, ws_max_size=max_size, ws_ping_interval=None, ws_ping_timeout=None,
        log_config=None,
    )


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the parser target runs no app")


@functools.lru_cache
def _admission() -> Admission:
    return Admission(max_connections=0, per_address=0, trusted=[])


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop the Subscribers' shared state is made in (it is never run for them:
    ``data_received`` is called directly)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def open_subscriber(
    loop: asyncio.AbstractEventLoop, max_size: int, *, max_fragments: int = UNLIMITED,
    burst: int = UNLIMITED, rate: float = 0.0, eof: bool = True,
) -> tuple[Subscriber, Recorder]:
    """A Subscriber after its handshake, attached to a Recorder: the one place that knows
    how ticker.wsproto builds them (``ticker.gate`` does it for ``ticker serve``)."""

    async def shared() -> _Shared:
        return _Shared(_config(max_size), ServerState(), _admission(), max_fragments, rate, burst)

    recorder = Recorder(eof)
    sub = Subscriber(recorder, loop.run_until_complete(shared()), b"not-used-by-the-parser")
    sub.attach(recorder)
    return sub, recorder


# Client frames, built from their structure ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frame:
    """One client frame. ``form`` is the length encoding (0: the shortest; 126, 127: that
    one even for a short payload, which RFC 6455 forbids and parsers accept);
    ``declared`` is a length announced in the header and never sent."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    mask: bytes = b"\x00\x00\x00\x00"
    form: int = 0
    declared: int | None = None

    @property
    def length(self) -> int:
        return len(self.payload) if self.declared is None else self.declared

    @property
    def header_defect(self) -> bool:
        return not self.masked or bool(self.rsv) or 3 <= self.opcode <= 7

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | self.rsv << 4 | self.opcode
        mask_bit = 0x80 if self.masked else 0
        length = self.length
        form = max(self.form, 0 if length < 126 else 126 if length < 1 << 16 else 127)
        if form == 0:
            head = struct.pack("!BB", first, mask_bit | length)
        elif form == 126:
            head = struct.pack("!BBH", first, mask_bit | 126, length)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, length)
        if self.masked:
            head += self.mask
        if self.declared is not None:
            return head
        return head + (apply_mask(self.payload, self.mask) if self.masked else self.payload)


masks = st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]) | st.binary(min_size=4, max_size=4)
forms = st.sampled_from([0, 0, 0, 126, 127])
valid_close_codes = st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                     1012, 1013, 1014, 3000, 4000, 4999])
bad_close_codes = st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
close_reasons = st.text(max_size=40).map(str.encode).filter(lambda r: len(r) <= 123)


def _close_payload(code: int, reason: bytes) -> bytes:
    return struct.pack("!H", code) + reason


close_payloads = st.just(b"") | st.builds(_close_payload, valid_close_codes, close_reasons)
bad_close_payloads = st.one_of(
    st.binary(min_size=1, max_size=1),
    st.builds(_close_payload, bad_close_codes, close_reasons),
    st.builds(_close_payload, valid_close_codes, st.sampled_from([b"\xff", b"ok\xc3", b"\xed\xa0\x80"])),
)


def control_frames(opcodes: list[int] | None = None) -> st.SearchStrategy[Frame]:
    return st.builds(
        Frame, opcode=st.sampled_from(opcodes or [PING, PONG]),
        payload=st.binary(max_size=125), mask=masks, form=forms,
    )


close_frames = st.builds(Frame, opcode=st.just(CLOSE), payload=close_payloads, mask=masks)


def payloads(max_size: int, clean: bool = False) -> st.SearchStrategy[tuple[int, bytes]]:
    """A message's opcode and payload: mostly valid and well within the limit, now and
    then at the limit (one byte under, at, over) or text that is not UTF-8; ``clean``:
    only valid ones, well within the limit."""
    small = min(max_size, 40)
    at_limit = st.sampled_from([max_size - 1, max_size, max_size + 1]).filter(lambda n: n >= 0)
    kinds: dict[str, st.SearchStrategy[tuple[int, bytes]]] = {
        "text": st.tuples(st.just(TEXT), st.text(max_size=small).map(str.encode)),
        "binary": st.tuples(st.just(BINARY), st.binary(max_size=small)),
        "text-at-limit": st.tuples(st.just(TEXT), at_limit.map(lambda n: b"x" * n)),
        "binary-at-limit": st.tuples(
            st.just(BINARY), at_limit.flatmap(lambda n: st.binary(min_size=n, max_size=n))),
        "not-utf8": st.tuples(st.just(TEXT), st.sampled_from(
            [b"\xff", b"caf\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok \xf4\x90\x80\x80"])),
    }
    if clean:
        return kinds["text"] | kinds["binary"]
    return st.sampled_from(["text", "text", "binary", "text-at-limit", "binary-at-limit",
                            "not-utf8"]).flatmap(kinds.__getitem__)


@st.composite
def fragments(draw: st.DrawFn, payload: bytes) -> list[bytes]:
    count = draw(st.integers(1, 4) | st.integers(5, 12))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=count - 1,
                                max_size=count - 1)))
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


DEFECTS = ("opcode", "fin", "rsv", "unmasked", "long-control", "huge", "close-payload")


@st.composite
def defective(draw: st.DrawFn, frame: Frame, max_size: int) -> Frame:
    """The frame with a defect, now and then two (the opcode first: the others depend
    on whether it is a control frame)."""
    kinds = {draw(st.sampled_from(DEFECTS))}
    if draw(st.integers(0, 3)) == 0:
        kinds.add(draw(st.sampled_from(DEFECTS)))
    if "opcode" in kinds:
        frame = dataclasses.replace(frame, opcode=draw(st.integers(0, 15)))
    if "fin" in kinds:
        frame = dataclasses.replace(frame, fin=not frame.fin)
    if "rsv" in kinds:
        frame = dataclasses.replace(frame, rsv=draw(st.sampled_from([4, 2, 1, 7, 3, 5, 6])))
    if "unmasked" in kinds:
        frame = dataclasses.replace(frame, masked=False)
    if "long-control" in kinds:
        size = draw(st.sampled_from([126, 127, 200]))
        opcode = frame.opcode if frame.opcode >= CLOSE else draw(st.sampled_from([PING, PONG]))
        frame = dataclasses.replace(frame, opcode=opcode, payload=b"c" * size)
    if "close-payload" in kinds:
        frame = dataclasses.replace(frame, opcode=CLOSE, payload=draw(bad_close_payloads))
    if "huge" in kinds and frame.opcode < CLOSE:
        declared = draw(st.sampled_from([max_size + 1, 1 << 16, 2**63, 2**64 - 1])
                        | st.integers(max_size + 1, 2**64 - 1))
        frame = dataclasses.replace(frame, payload=b"", declared=declared)
    return frame


@st.composite
def client_streams(draw: st.DrawFn, max_size: int, broken: bool = False) -> list[Frame]:
    """Messages in fragments with control frames between them, perhaps a close, and
    frames after that (which must change nothing); ``broken``: valid messages, and one
    frame with a defect."""
    frames: list[Frame] = []
    for _ in range(draw(st.integers(0, 4))):
        opcode, payload = draw(payloads(max_size, clean=broken))
        pieces = draw(fragments(payload))
        for i, piece in enumerate(pieces):
            frames.append(Frame(
                opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1,
                mask=draw(masks), form=draw(forms),
            ))
            frames.extend(draw(st.lists(control_frames(), max_size=1)))
    frames.extend(draw(st.lists(close_frames, max_size=1)))
    if broken:
        frames = frames or [draw(control_frames())]
        i = draw(st.integers(0, len(frames) - 1))
        frames[i] = draw(defective(frames[i], max_size))
    frames.extend(draw(st.lists(control_frames([PING, PONG, CLOSE]), max_size=2)))
    return frames


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` in chunks, as TCP may deliver it (one byte at a time included)."""
    if draw(st.integers(0, 9)) == 0:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# What a Subscriber did, and what websockets would have done ---------------------------


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The frames a server wrote: (opcode, payload). They must be whole, unmasked and
    unfragmented, with no reserved bit."""
    frames, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert first & 0xF0 == 0x80 and not second & 0x80, data[pos:pos + 2]
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack("!H", data[pos:pos + 2]), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack("!Q", data[pos:pos + 8]), pos + 8
        assert pos + length <= len(data), "a frame cut short"
        frames.append((first & 0x0F, data[pos:pos + length]))
        pos += length
    return frames


@dataclasses.dataclass
class Outcome:
    """What a server did with a client's stream: the messages it took, the pongs and the
    close frame it sent, whether it ended the connection."""

    messages: list[str | bytes] = dataclasses.field(default_factory=list)
    pongs: list[bytes] = dataclasses.field(default_factory=list)
    close: bytes | None = None  # the payload of the close frame sent
    ended: bool = False
    # The oracle's side only:
    echo: bool = False  # the close is the echo of the client's (else a failure's)
    codes: frozenset[int] = frozenset()  # the close codes a failure may have

    @property
    def code(self) -> int | None:
        if self.close is None or len(self.close) < 2:
            return None
        return int(struct.unpack("!H", self.close[:2])[0])


def outcome(log: list[tuple[str, Any]]) -> Outcome:
    """A Subscriber's outcome, from its Recorder's log."""
    out = Outcome()
    for kind, value in log:
        if kind == "message":
            out.messages.append(value)
        elif kind == "write":
            for opcode, payload in server_frames(value):
                assert opcode in (PONG, CLOSE), opcode
                if opcode == PONG:
                    out.pongs.append(payload)
                else:
                    out.close = payload
        elif kind in ("close", "abort", "eof"):
            out.ended = True
    return out


def _sent(protocol: ServerProtocol) -> list[tuple[int, bytes]]:
    return server_frames(b"".join(protocol.data_to_send()))


def _received(protocol: ServerProtocol) -> list[ws_frames.Frame]:
    events = protocol.events_received()
    assert all(isinstance(e, ws_frames.Frame) for e in events)
    return events  # type: ignore[return-value]


def reference(
    frames: list[Frame], max_size: int, max_fragments: int = UNLIMITED, burst: int = UNLIMITED,
) -> Outcome:
    """What websockets' sans-I/O server (``ServerProtocol`` in the OPEN state, with the
    same ``max_size``) does with the frames, one at a time, and ticker's own rules on
    top (see the module's docstring for each difference)."""
    out = Outcome()
    data_frames = ServerProtocol(state=State.OPEN, max_size=max_size)
    parts: list[bytes] | None = None  # of the message in progress
    text = False
    spent = 0  # of the allowance: messages and pings

    def failed(protocol: ServerProtocol) -> Outcome:
        """websockets failed the connection: the close frame it sent."""
        (out.close,) = [payload for opcode, payload in _sent(protocol) if opcode == CLOSE]
        return closed(out.code or 0)

    def closed(code: int) -> Outcome:
        out.close = out.close or struct.pack("!H", code)
        out.codes, out.ended = out.codes | {code}, True
        return out

    for frame in frames:
        if frame.opcode >= CLOSE:
            # A control frame, judged on its own (its payload is not part of a message).
            alone = ServerProtocol(state=State.OPEN, max_size=None)
            alone.receive_data(frame.encode())
            if alone.parser_exc is not None:
                return failed(alone)
            (event,) = _received(alone)
            if event.opcode is Opcode.PING:
                spent += 1
                if spent > burst:
                    return closed(1008)
                out.pongs.append(bytes(event.data))
            elif event.opcode is Opcode.CLOSE:
                out.close, out.echo, out.ended = bytes(event.data), True, True
                return out
            continue
        room = max_size - (data_frames.current_size or 0)
        data_frames.receive_data(frame.encode())
        if data_frames.parser_exc is not None:
            if frame.header_defect and frame.length > room:
                out.codes = frozenset([1002, 1009])  # two defects: either code
            return failed(data_frames)
        (event,) = _received(data_frames)
        if event.opcode is not Opcode.CONT:
            spent += 1
            if spent > burst:
                return closed(1008)
            parts, text = [bytes(event.data)], event.opcode is Opcode.TEXT
        else:
            assert parts is not None
            if len(parts) >= max_fragments:
                return closed(1009)
            parts.append(bytes(event.data))
        if event.fin:
            message = b"".join(parts)
            parts = None
            if text:
                try:
                    out.messages.append(message.decode())
                except UnicodeDecodeError:
                    return closed(1007)
            else:
                out.messages.append(message)
    return out


def assert_agrees(got: Outcome, expected: Outcome) -> None:
    assert got.messages == expected.messages
    assert got.pongs == expected.pongs
    assert got.ended == expected.ended
    if expected.echo:
        assert got.close == expected.close, "the client's close frame is echoed as it came"
    elif expected.close is None:
        assert got.close is None
    else:
        assert got.code in expected.codes, (got.close, expected.codes)


def check_log(log: list[tuple[str, Any]]) -> None:
    """What must hold whatever the client sent."""
    kinds = [kind for kind, _ in log]
    assert kinds.count("gone") <= 1, "the listener hears of the end once"
    ends = [i for i, kind in enumerate(kinds) if kind in ("close", "abort", "eof")]
    if ends:
        assert "write" not in kinds[ends[0]:], "nothing is written after our side ended"
        assert "gone" in kinds[:ends[0]], "the listener hears of the end first"
    end = min((i for i, k in enumerate(kinds) if k == "gone"), default=len(kinds))
    assert "message" not in kinds[end:], "no message after the end"
    closes = [i for i, (kind, value) in enumerate(log)
              if kind == "write" and any(op == CLOSE for op, _ in server_frames(value))]
    assert len(closes) <= 1, "one close frame"
    if closes:
        assert "write" not in kinds[closes[0] + 1:], "the close frame is the last one"
        assert ends and ends[0] > closes[0], "and our side ends after it"


def finish(sub: Subscriber, recorder: Recorder) -> None:
    """The socket goes (as it does in the end): the listener has heard of the end, once,
    and the Subscriber's timers are cancelled."""
    sub.connection_lost(None)
    assert recorder.log.count(("gone", None)) == 1
    assert sub._closer is None


def check_bounded(sub: Subscriber, max_size: int, max_fragments: int) -> None:
    """What a Subscriber holds between two reads: at most one incomplete frame (its
    header, at most 14 bytes, and a payload within the limits), and the fragments of
    one message within the limits."""
    assert len(sub._buffer) <= max(max_size, 125) + 14, len(sub._buffer)
    if sub._fragments is not None:
        assert len(sub._fragments) <= max_fragments
        assert sub._size == sum(map(len, sub._fragments)) <= max_size


# The targets ----------------------------------------------------------------------------

max_sizes = st.integers(1, 300) | st.sampled_from([125, 126, 4096])

any_frames = st.builds(
    Frame, opcode=st.integers(0, 15), payload=st.binary(max_size=140), fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 4]), masked=st.booleans() | st.just(True), mask=masks,
    form=forms,
)
wild_chunks = st.lists(st.binary(max_size=40) | any_frames.map(Frame.encode), max_size=16)


@FUZZ
@given(max_sizes, st.integers(1, 64), st.booleans(), wild_chunks)
@example(4096, 64, True, [b"\x81\xff" + struct.pack("!Q", 1 << 30) + b"mask"])
@example(16, 2, False, [Frame(TEXT, fin=False).encode()] + [Frame(CONT, fin=False).encode()] * 9)
def test_any_bytes_are_read_within_bounds_and_their_cut_changes_nothing(
    loop: asyncio.AbstractEventLoop, max_size: int, max_fragments: int, eof: bool,
    chunks: list[bytes],
) -> None:
    sub, recorder = open_subscriber(loop, max_size, max_fragments=max_fragments, eof=eof)
    for chunk in chunks:
        sub.data_received(chunk)
        check_bounded(sub, max_size, max_fragments)
    check_log(recorder.log)
    whole, whole_recorder = open_subscriber(loop, max_size, max_fragments=max_fragments, eof=eof)
    whole.data_received(b"".join(chunks))
    assert whole_recorder.log == recorder.log
    finish(sub, recorder)
    finish(whole, whole_recorder)


Case = tuple[int, int, int, list[Frame], list[bytes]]


@st.composite
def differential_cases(draw: st.DrawFn, broken: bool) -> Case:
    """(max_size, max_fragments, burst, frames, the frames' bytes in chunks)."""
    max_size = draw(max_sizes)
    limit = "size" if broken else draw(st.sampled_from(["size", "size", "fragments", "allowance"]))
    max_fragments = draw(st.integers(1, 8)) if limit == "fragments" else UNLIMITED
    burst = draw(st.integers(1, 8)) if limit == "allowance" else UNLIMITED
    frames = draw(client_streams(max_size, broken))
    chunks = draw(cut(b"".join(f.encode() for f in frames)))
    return max_size, max_fragments, burst, frames, chunks


def check_against_websockets(loop: asyncio.AbstractEventLoop, case: Case) -> None:
    max_size, max_fragments, burst, frames, chunks = case
    sub, recorder = open_subscriber(loop, max_size, max_fragments=max_fragments, burst=burst)
    for chunk in chunks:
        sub.data_received(chunk)
        check_bounded(sub, max_size, max_fragments)
    check_log(recorder.log)
    finish(sub, recorder)
    expected = reference(frames, max_size, max_fragments, burst)
    event("echo" if expected.echo else f"closed {sorted(expected.codes)}" if expected.codes
          else "open")
    event(f"messages: {min(len(expected.messages), 3)}{'+' if len(expected.messages) >= 3 else ''}")
    assert_agrees(outcome(recorder.log), expected)


@FUZZ
@given(differential_cases(broken=False))
def test_client_frames_are_read_as_websockets_reads_them(
    loop: asyncio.AbstractEventLoop, case: Case,
) -> None:
    check_against_websockets(loop, case)


@FUZZ
@given(differential_cases(broken=True))
def test_a_broken_client_frame_closes_the_connection_as_websockets_would(
    loop: asyncio.AbstractEventLoop, case: Case,
) -> None:
    check_against_websockets(loop, case)


# The differences, each on its own: websockets' answer, and ticker's -------------------


def _websockets(frames: list[Frame], max_size: int) -> tuple[list[Any], int | None]:
    """Frames websockets' server parser took, and the code it closed with (if any)."""
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    protocol.receive_data(b"".join(f.encode() for f in frames))
    events = _received(protocol)
    closes = [payload for opcode, payload in _sent(protocol) if opcode == CLOSE]
    code = struct.unpack("!H", closes[0][:2])[0] if closes else None
    return [(e.opcode, e.data) for e in events], code


def _ticker(
    loop: asyncio.AbstractEventLoop, frames: list[Frame], max_size: int, *,
    max_fragments: int = UNLIMITED, burst: int = UNLIMITED,
) -> Outcome:
    """What a Subscriber did with the frames (all in one read), until its socket went."""
    sub, recorder = open_subscriber(loop, max_size, max_fragments=max_fragments, burst=burst)
    sub.data_received(b"".join(f.encode() for f in frames))
    finish(sub, recorder)
    return outcome(recorder.log)


def test_a_ping_between_fragments_does_not_count_against_the_message_size(
    loop: asyncio.AbstractEventLoop,
) -> None:
    frames = [Frame(TEXT, b"a" * 90, fin=False), Frame(PING, b"p" * 20), Frame(CONT, b"b" * 10)]
    assert _websockets(frames, 100)[1] == 1009
    got = _ticker(loop, frames, 100)
    assert (got.messages, got.pongs, got.close) == (["a" * 90 + "b" * 10], [b"p" * 20], None)


def test_a_close_between_fragments_is_echoed(loop: asyncio.AbstractEventLoop) -> None:
    close = struct.pack("!H", 1001) + b"bye"
    frames = [Frame(TEXT, b"half", fin=False), Frame(CLOSE, close)]
    assert _websockets(frames, 100)[1] == 1002  # "incomplete fragmented message"
    got = _ticker(loop, frames, 100)
    assert (got.messages, got.close, got.ended) == ([], close, True)


@pytest.mark.parametrize(
    ("frame", "websockets_code", "ticker_code"),
    [
        pytest.param(Frame(TEXT, rsv=4, declared=1 << 20), 1009, 1002, id="reserved-bit-and-too-big"),
        pytest.param(Frame(3, declared=1 << 20), 1002, 1009, id="reserved-opcode-and-too-big"),
    ],
)
def test_a_frame_with_two_defects_closes_with_the_code_of_either(
    loop: asyncio.AbstractEventLoop, frame: Frame, websockets_code: int, ticker_code: int,
) -> None:
    assert _websockets([frame], 100)[1] == websockets_code
    assert _ticker(loop, [frame], 100).code == ticker_code


def test_text_in_utf8_is_checked_by_websockets_only_above_its_sans_io_layer(
    loop: asyncio.AbstractEventLoop,
) -> None:
    frames = [Frame(TEXT, b"\xff")]
    assert _websockets(frames, 100) == ([(Opcode.TEXT, b"\xff")], None)
    assert _ticker(loop, frames, 100).code == 1007


def test_the_fragment_limit_counts_frames_not_bytes(loop: asyncio.AbstractEventLoop) -> None:
    frames = [Frame(TEXT, b"", fin=False)] + [Frame(CONT, fin=False)] * 7 + [Frame(CONT)]
    assert _ticker(loop, frames * 2, 100, max_fragments=9).messages == ["", ""]
    got = _ticker(loop, frames, 100, max_fragments=8)
    assert (got.messages, got.code) == ([], 1009)


def test_the_allowance_is_spent_by_messages_and_pings(loop: asyncio.AbstractEventLoop) -> None:
    frames = [Frame(TEXT, b"1"), Frame(PING, b"p"), Frame(PONG, b"free"), Frame(BINARY, b"2")]
    got = _ticker(loop, frames, 100, burst=3)
    assert (got.messages, got.pongs, got.close) == (["1", b"2"], [b"p"], None)
    got = _ticker(loop, [*frames, Frame(PING, b"one too many")], 100, burst=3)
    assert (got.messages, got.pongs, got.code) == (["1", b"2"], [b"p"], 1008)
