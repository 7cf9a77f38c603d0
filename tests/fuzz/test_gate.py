"""Fuzzing the gate's hand-written reading of untrusted bytes (``ticker.gate``,
``ticker.admission``): the first request head of a connection, whatever its bytes and
however TCP cuts them, and the forwarded client addresses a proxy passes on.

The head reader's oracle is itself, cut differently: a head read in one piece and the
same bytes read in any chunks must come to the same end (an answer, a hand-over, or
waiting), and what the gate holds stays within its limit. The recording transport below
stands in for a socket: this is the parser's behaviour; the socket's is tested on real
sockets in tests/test_gate.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from tests.fuzz import FUZZ
from ticker.admission import Admission, address_key, forwarded_for
from ticker.config import Settings
from ticker.gate import Gate, GateProtocol

LIMITS = {"max_head_bytes": 512, "max_header_count": 8}


class Transport:
    """What GateProtocol calls on its socket, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.eof and not self.closed, "written after the end"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.eof

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        pass


class Recorded(GateProtocol):
    """The gate's reading, with where the connection would go next recorded instead."""

    gate = Gate(Settings(**LIMITS), "/v1/ws", lambda: None)
    __slots__ = ("handed",)

    def _to_uvicorn(self, data: bytes) -> None:
        self.handed = ("uvicorn", data)
        self._handed_over()

    def _subscriber(self, head: bytes, early: bytes) -> bool:
        return False  # every complete head goes to uvicorn, with everything after it


def read(chunks: list[bytes], loop: asyncio.AbstractEventLoop) -> tuple[Any, ...]:
    """Feed the chunks to a fresh gate: how it ended, and the most it ever held."""
    protocol = Recorded(Config(app=None), ServerState(), {}, _loop=loop)
    transport = Transport()
    protocol.handed = None
    protocol.connection_made(transport)  # type: ignore[arg-type]
    admitted, key = protocol.verdict, protocol.key
    held = 0
    for chunk in chunks:
        if protocol.handed is not None:  # the socket's protocol now: it gets the rest
            protocol.handed = ("uvicorn", protocol.handed[1] + chunk)
            continue
        protocol.data_received(chunk)
        held = max(held, len(protocol.buffer))
        if transport.is_closing():
            break
    # The end of the connection gives its admission back (the next protocol's part, once
    # handed over), so that every example starts from an empty gate.
    if protocol.handed is not None:
        protocol.gate.admission.leave(admitted, key)
    protocol.connection_lost(None)
    assert protocol.gate.admission.open == 0
    status = bytes(transport.written[:12])
    return (status, transport.is_closing(), protocol.handed), held


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


_header_line = st.builds(
    lambda name, value: name + b": " + value + b"\r\n",
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\n" not in b and b":" not in b),
    st.binary(max_size=200).filter(lambda b: b"\n" not in b),
)
heads = st.one_of(
    st.binary(max_size=1200),
    st.builds(
        lambda method, lines, end, rest: method + b" / HTTP/1.1\r\n" + b"".join(lines) + end + rest,
        st.sampled_from([b"GET", b"POST", b"PATCH", b"get", b"G\x00T", b"\x16\x03"]),
        st.lists(_header_line, max_size=14),
        st.sampled_from([b"\r\n", b"\n", b"", b"\r"]),
        st.binary(max_size=40),
    ),
)


@FUZZ
@given(heads, st.lists(st.integers(0, 2000), max_size=12))
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [1, 2, 3, 24, 25, 26])
@example(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 8 + b"\r\n", [17])
@example(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 9 + b"\r\n", [5, 40])
def test_a_head_comes_to_the_same_end_however_it_is_cut(data: bytes, cuts: list[int]) -> None:
    loop = asyncio.new_event_loop()
    try:
        whole, _ = read([data], loop)
        cut, held = read(split(data, cuts), loop)
    finally:
        loop.close()
    status, _, handed = whole
    if status.startswith(b"HTTP/1.1 431"):
        # Too large found sooner or later: the answer is the same, not the moment.
        assert cut[0] == status and cut[1]
    else:
        assert cut == whole
    # The gate never holds more than its limit and one chunk.
    assert held <= LIMITS["max_head_bytes"] + max((len(c) for c in split(data, cuts)), default=0)
    if handed is not None:
        assert handed[1] == data  # every byte is handed on, in order
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            assert head_end + 4 <= LIMITS["max_head_bytes"]


# Forwarded addresses


@FUZZ
@given(st.lists(st.text(max_size=80), max_size=4))
@example(['for=192.0.2.60;proto=http, For="[2001:db8::1]:4711"'])
@example(['for="[', "for=:", "for", ";;,,=", 'for=""'])
def test_forwarded_for_reads_any_text(values: list[str]) -> None:
    nodes = forwarded_for(values)
    assert len(nodes) <= sum(v.lower().count("for") for v in values)
    for node in nodes:
        assert not node.startswith("[")  # brackets (IPv6) and ports are taken off


@FUZZ
@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
def test_an_address_key_is_total_and_groups_ipv6_by_64(host: str) -> None:
    key = address_key(host)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        assert key == host or "%" in host
        return
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        network = ipaddress.ip_network(key)
        assert network.prefixlen == 64 and ip in network
    else:
        assert ipaddress.ip_address(key) in (ip, getattr(ip, "ipv4_mapped", None))


@FUZZ
@given(
    st.sampled_from(["10.0.0.1", "192.0.2.9", "::1", "unix"]),
    st.lists(st.text(max_size=40), max_size=3),
    st.lists(st.one_of(st.text(max_size=40), st.ip_addresses().map(str)), max_size=3),
)
def test_the_client_behind_a_proxy_is_one_it_names(peer: str, forwarded: list[str], xff: list[str]) -> None:
    admission = Admission(100, 10, ["10.0.0.0/8", "::1"])
    client = admission.client_of(peer, forwarded, xff)
    if peer not in ("10.0.0.1", "::1"):
        assert client is None  # an untrusted peer names nobody
    elif client is not None:
        named = ", ".join(xff) if xff else ", ".join(forwarded_for(forwarded))
        assert client.strip("[]") in named or client in forwarded_for(forwarded)
