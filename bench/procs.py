"""Processes of the benchmark: start, watch, stop; the load client's JSON-lines protocol.

Every process is started through ``Processes`` so that the runner's ``finally`` can stop
them all; every wait here has a bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Bounds of every wait (seconds)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
QUIET_TIMEOUT = 60.0


def _die_with_parent() -> None:  # runs in the child, before exec
    # If the runner dies without its finally (SIGKILL), the kernel stops its children.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every process this runner starts, so that ``finally`` can stop them all."""

    def __init__(self) -> None:
        self.running: list[Proc] = []

    async def start(self, name: str, argv: list[str], log: Path, *, stdin: bool = False,
                    stdout: bool = False, env: dict[str, str] | None = None) -> Proc:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=env,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout else out,
                stderr=out, limit=1 << 20, preexec_fn=_die_with_parent,
            )
        p = Proc(name, proc, log)
        self.running.append(p)
        return p

    async def stop(self, p: Proc, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(sig)
            try:
                await asyncio.wait_for(p.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                await asyncio.wait_for(p.proc.wait(), 10)
        if p in self.running:
            self.running.remove(p)

    async def stop_all(self) -> None:
        for p in list(self.running):
            await self.stop(p, timeout=10)


def cpu_ticks(pid: int | Sequence[int]) -> int:
    """utime + stime of a process (every thread), or the sum over several processes."""
    if not isinstance(pid, int):
        return sum(_ticks_or_zero(p) for p in pid)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _ticks_or_zero(pid: int) -> int:
    try:
        return cpu_ticks(pid)
    except (OSError, IndexError):
        return 0  # gone meanwhile


def cpu_ns(pids: Sequence[int]) -> int:
    """CPU time of every thread of the processes, in ns (/proc/<pid>/task/*/schedstat):
    finer than the clock ticks of /proc/<pid>/stat, for short windows."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError), \
                        open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
    return total


def rss_kib(pid: int | Sequence[int]) -> int:
    """VmRSS of a process, or the sum over several processes."""
    if not isinstance(pid, int):
        return sum(rss_kib(p) for p in pid)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def children(pid: int) -> list[int]:
    """The direct children of a process (/proc/<pid>/task/*/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return sorted(out)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants: a supervisor and its workers."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def tcp_sockets(port: int) -> list[tuple[int, int]]:
    """(state, inode) of every TCP socket whose local port is ``port`` (/proc/net/tcp*):
    state 0x0A listening, 0x01 established."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out.append((int(fields[3], 16), int(fields[9])))
    return out


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds (/proc/<pid>/fd)."""
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def connections_per_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """Established TCP connections on ``port`` held by each process, counted from outside."""
    established = {inode for state, inode in tcp_sockets(port) if state == 0x01}
    return {pid: len(socket_inodes(pid) & established) for pid in pids}


def listeners(port: int) -> int:
    return sum(1 for state, _ in tcp_sockets(port) if state == 0x0A)


async def wait_quiet(pid: int | Sequence[int], timeout: float = QUIET_TIMEOUT) -> float:
    """Wait until the process (or each of the processes, on average) has used at most one
    clock tick of CPU over half a second."""
    pids = [pid] if isinstance(pid, int) else list(pid)
    start = time.monotonic()
    before = cpu_ticks(pids)
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.5)
        now = cpu_ticks(pids)
        if now - before <= len(pids):
            break
        before = now
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, server: Proc, timeout: float = START_TIMEOUT,
                         sockets: int = 1) -> None:
    """Until the server accepts a connection on ``port``, and (several workers, each with
    its own SO_REUSEPORT socket) until ``sockets`` sockets listen there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.returncode is not None:
            raise RuntimeError(f"{server.name} exited at start:\n{server.tail()}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            if listeners(port) >= sockets:
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen on port {port} ({sockets} sockets) "
                       f"within {timeout:.0f} s")


class Client:
    """One run of the load client: JSON lines on its stdout, commands on its stdin."""

    def __init__(self, proc: Proc) -> None:
        self.p = proc

    @property
    def procs(self) -> list[Proc]:
        return [self.p]

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        stdout = self.p.proc.stdout
        assert stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the load client sent no {name!r} within {timeout:.0f} s")
            line = await asyncio.wait_for(stdout.readline(), left)
            if not line:
                raise RuntimeError(f"the load client exited before {name!r}:\n{self.p.tail()}")
            with contextlib.suppress(ValueError):
                msg: dict[str, Any] = json.loads(line)
                if msg.get("event") == name:
                    return msg

    def send(self, command: str) -> None:
        stdin = self.p.proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")


class ClientGroup:
    """Several load client processes as one (N split among them: each stays under its own
    open-file limit). Their events are merged: counts summed, storms timed from the first
    start to the last ready (every process reports on the same CLOCK_MONOTONIC), latency
    percentiles exact over every delivery (each process writes its sorted latencies)."""

    def __init__(self, clients: list[Client], lat_files: list[Path]) -> None:
        self.clients = clients
        self.lat_files = lat_files

    @property
    def procs(self) -> list[Proc]:
        return [c.p for c in self.clients]

    def send(self, command: str) -> None:
        for c in self.clients:
            c.send(command)

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        events = await asyncio.gather(*(c.event(name, timeout) for c in self.clients))
        if name == "ready":
            return _merge_ready(events)
        if name == "down":
            return {"event": "down", "still_open": sum(e["still_open"] for e in events),
                    "closes": _sum_dicts([e["closes"] for e in events])}
        if name == "report":
            return self._merge_report(events)
        return events[0]

    def _merge_report(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        out = _sum_numbers(events)
        out["event"], out["mode"] = "report", events[0]["mode"]
        out["wall_s"] = max(e["wall_s"] for e in events)
        out["error"] = next((e["error"] for e in events if e["error"]), None)
        out["closes"] = _sum_dicts([e["closes"] for e in events])
        worst = max(events, key=lambda e: e["connect"]["all_ready_s"])
        out["connect"] = {"ready": sum(e["connect"]["ready"] for e in events),
                          "all_ready_s": worst["connect"]["all_ready_s"],
                          "per_connection": worst["connect"]["per_connection"]}
        lives = [e["live"] for e in events]
        live = _sum_numbers(lives)
        live["expect"] = lives[0]["expect"]
        live["timed_out"] = any(x["timed_out"] for x in lives)
        live["wall_s"] = max(x["wall_s"] for x in lives)
        firsts = [x["t_first_pub_ns"] for x in lives if x["t_first_pub_ns"]]
        live["t_first_pub_ns"] = min(firsts) if firsts else 0
        live["t_last_recv_ns"] = max(x["t_last_recv_ns"] for x in lives)
        elapsed = (live["t_last_recv_ns"] - live["t_first_pub_ns"]) / 1e9 if firsts else 0.0
        live["elapsed_s"] = elapsed
        live["deliveries_per_s"] = live["deliveries"] / elapsed if elapsed > 0 else 0.0
        live["latency_ms"] = self._latency([x["latency_ms"] for x in lives])
        out["live"] = live
        resumes = [e["resume"] for e in events if e.get("resume")]
        if resumes:
            resume = _sum_numbers(resumes)
            resume["expect"] = resumes[0]["expect"]
            slowest = max(resumes, key=lambda r: r["all_resumed_s"])
            for key in ("ready_s", "all_resumed_s"):
                resume[key] = max(r[key] for r in resumes)
            resume["subscribed"], resume["resumed_at"] = slowest["subscribed"], slowest["resumed_at"]
            resume["timed_out"] = any(r["timed_out"] for r in resumes)
            out["resume"] = resume
        else:
            out["resume"] = None
        out["clients"] = len(events)
        return out

    def _latency(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        arrays = []
        for path in self.lat_files:
            values = array("I")
            with contextlib.suppress(OSError), open(path, "rb") as f:
                values.frombytes(f.read())
            arrays.append(values)
        n = sum(len(a) for a in arrays)
        out: dict[str, Any] = {"n": n, "dropped": sum(p["dropped"] for p in parts)}
        if not n:
            out.update({k: -1.0 for k in ("min", "p50", "p90", "p99", "max", "mean")})
            return out
        out["min"] = min(a[0] for a in arrays if a) / 1e3
        out["max"] = max(a[-1] for a in arrays if a) / 1e3
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[name] = kth_smallest(arrays, int(q * (n - 1) + 0.5)) / 1e3  # as the client
        out["mean"] = sum(p["mean"] * p["n"] for p in parts) / n
        return out


def kth_smallest(arrays: list[array], k: int) -> int:
    """The k-th smallest value (from 0) over several sorted arrays: a search on the value."""
    lo, hi = 0, max(a[-1] for a in arrays if a)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(bisect.bisect_right(a, mid) for a in arrays) > k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _merge_ready(events: list[dict[str, Any]]) -> dict[str, Any]:
    t0 = min(e["t0_ns"] for e in events)
    end = max(e["t0_ns"] + e["connect_s"] * 1e9 for e in events)
    worst = max(events, key=lambda e: e["connect_s"])
    out = {"event": "ready", "t0_ns": t0, "connect_s": (end - t0) / 1e9,
           "connect": worst["connect"], "clients": len(events),
           "per_client_connect_s": [e["connect_s"] for e in events]}
    for key in ("n", "ready", "failed", "retries"):
        out[key] = sum(e[key] for e in events)
    return out


def _sum_dicts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _sum_numbers(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The numeric fields summed (bools and the rest taken from the first)."""
    out: dict[str, Any] = {}
    for k, v in dicts[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = sum(d.get(k, 0) for d in dicts)
        else:
            out[k] = v
    return out


def build_client(build_dir: Path) -> Path:
    """Compile the load client (and the C server of the ceiling check) with gcc -O2."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in ("loadclient", "cserver"):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build_dir / name),
                        str(HERE / f"{name}.c")], check=True, timeout=120)
    return build_dir / "loadclient"
