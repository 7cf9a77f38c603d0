"""Memory per idle subscriber: N Server-Sent Events streams against N WebSockets.

Each repetition starts a fresh ``python -m ticker serve`` (its embedded store in a
temporary directory), opens N idle subscribers of one kind on one channel, waits until
every one has its snapshot and the server is quiet, and reads the server process's RSS;
RSS with no subscriber (after a few connections came and went, so that what is made once
is made) is subtracted, and the difference divided by N. SSE and WebSocket run in
separate processes of the same repetition; the report gives each figure, the medians,
and the ratio SSE / WebSocket of each repetition.

    python bench/sse_memory.py                 # N = 5000, 3 repetitions
    python bench/sse_memory.py --n 1000 --runs 1 --src /tmp/before   # another tree

``--src`` runs the server from another checkout (its ``ticker`` package first on the
path), to compare before and after a change with the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import free_port, rss_kib, wait_quiet  # noqa: E402

WARM_UP = 50  # connections opened and closed before the baseline reading
CHANNEL = "mem"


def request(kind: str, port: int) -> bytes:
    if kind == "sse":
        return (f"GET /v1/channels/{CHANNEL}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n").encode()
    key = base64.b64encode(os.urandom(16)).decode()
    subscribe = json.dumps({"op": "subscribe", "channel": CHANNEL}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(subscribe))
    frame = bytes([0x81, 0x80 | len(subscribe)]) + mask + masked
    return (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ticker.v1\r\n\r\n").encode() + frame


async def connect(kind: str, port: int) -> socket.socket:
    """A subscriber that has received its snapshot; it then reads nothing more."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request(kind, port))
    got = b""
    async with asyncio.timeout(60):
        while b"snapshot" not in got:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise RuntimeError(f"the server closed a {kind} subscriber: {got[:300]!r}")
            got += chunk
    return sock


async def open_many(kind: str, port: int, n: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    for start in range(0, n, 200):  # in waves: the accept queue stays short
        socks += await asyncio.gather(*(connect(kind, port) for _ in range(min(200, n - start))))
    return socks


async def measure(kind: str, n: int, src: Path) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tk-mem-") as data:
        env = {**os.environ, "PYTHONPATH": str(src), "TICKER_DATA_DIR": data,
               "TICKER_LOG_LEVEL": "warning", "TICKER_MAX_CONNECTIONS_PER_ADDRESS": "0",
               "TICKER_PORT": str(port), "TICKER_HOST": "127.0.0.1"}
        env.pop("REDIS_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "ticker", "serve"], cwd=data, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("ticker serve did not start") from None
                    await asyncio.sleep(0.1)
            for sock in await open_many(kind, port, WARM_UP):
                sock.close()
            await asyncio.sleep(1)
            await wait_quiet(proc.pid)
            before = rss_kib(proc.pid)
            socks = await open_many(kind, port, n)
            await asyncio.sleep(2)
            await wait_quiet(proc.pid)
            after = rss_kib(proc.pid)
            for sock in socks:
                sock.close()
            return (after - before) / n
        finally:
            proc.terminate()
            proc.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--src", type=Path, default=HERE.parent)
    opts = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, opts.n * 2 + 1000)), hard))
    rows = []
    for run in range(opts.runs):
        ws = await measure("ws", opts.n, opts.src)
        sse = await measure("sse", opts.n, opts.src)
        rows.append((ws, sse, sse / ws))
        print(f"run {run + 1}: websocket {ws:.2f} KiB, sse {sse:.2f} KiB, sse/ws {sse / ws:.2f}",
              flush=True)
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(json.dumps({"n": opts.n, "src": str(opts.src), "runs": [
        {"ws_kib": round(w, 2), "sse_kib": round(s, 2), "ratio": round(r, 2)} for w, s, r in rows],
        "median": {"ws_kib": round(med[0], 2), "sse_kib": round(med[1], 2),
                   "ratio": round(med[2], 2)}}))


if __name__ == "__main__":
    asyncio.run(main())
