"""The opening handshake under ticker's own protocol (ticker.wsproto), over raw sockets.

A plain, valid upgrade is answered by ticker's fast path; anything else goes through
websockets' full handshake, whose error answers clients rely on. Both must behave as
RFC 6455 says.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.conftest import RECV_TIMEOUT, Service

# RFC 6455 section 1.3: the sample key and the answer it must get.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def _exchange(port: int, request: bytes) -> tuple[socket.socket, bytes, bytes]:
    """Send ``request``; return the socket, the response head and what followed it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), RECV_TIMEOUT)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head, rest


def _request(port: int, **headers: str) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": SAMPLE_KEY, "Sec-WebSocket-Version": "13", **headers,
    }
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return f"GET /v1/ws HTTP/1.1\r\n{lines}\r\n".encode()


def _headers(head: bytes) -> dict[bytes, bytes]:
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="plain"),
        pytest.param({"Connection": "keep-alive, Upgrade", "Upgrade": "WebSocket"}, id="token-lists"),
        pytest.param({"Sec-WebSocket-Protocol": "other, ticker.v1"}, id="subprotocols"),
    ],
)
async def test_a_valid_upgrade_gets_101_with_the_rfc_accept_value(
    service: Service, extra: dict[str, str]
) -> None:
    port = service.port
    sock, head, _ = await _exchange(port, _request(port, **extra))
    try:
        assert head.startswith(b"HTTP/1.1 101 "), head
        headers = _headers(head)
        assert headers[b"sec-websocket-accept"] == SAMPLE_ACCEPT
        assert headers[b"upgrade"].lower() == b"websocket"
        assert b"upgrade" in headers[b"connection"].lower()
        offered = extra.get("Sec-WebSocket-Protocol", "")
        if "ticker.v1" in offered:
            assert headers[b"sec-websocket-protocol"] == b"ticker.v1"
        else:
            assert b"sec-websocket-protocol" not in headers
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        pytest.param({"Sec-WebSocket-Key": ""}, b"400", id="no-key"),
        pytest.param({"Sec-WebSocket-Key": "c2hvcnQ="}, b"400", id="short-key"),
        pytest.param({"Sec-WebSocket-Version": "8"}, b"400", id="old-version"),
        pytest.param({"Connection": "keep-alive"}, b"400", id="no-upgrade-token"),
    ],
)
async def test_a_bad_upgrade_gets_an_error_that_names_the_problem(
    service: Service, change: dict[str, str], status: bytes
) -> None:
    port = service.port
    request = _request(port, **change)
    if not change.get("Connection", "Upgrade").lower().endswith("upgrade"):
        # Without the token uvicorn serves it as plain HTTP: no WebSocket route there.
        sock, head, _ = await _exchange(port, request)
        sock.close()
        assert not head.startswith(b"HTTP/1.1 101"), head
        return
    sock, head, rest = await _exchange(port, request)
    try:
        assert head.split(b" ")[1] == status, head
        header_name = next(iter(change))
        assert header_name.encode().lower() in rest.lower(), rest  # the body names it
    finally:
        sock.close()
