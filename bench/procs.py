"""Processes of the benchmark: start, watch, stop; the load client's JSON-lines protocol.

Every process is started through ``Processes`` so that the runner's ``finally`` can stop
them all; every wait here has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import socket
import subprocess
import time
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


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def wait_quiet(pid: int, timeout: float = QUIET_TIMEOUT) -> float:
    """Wait until the process has used at most one clock tick of CPU over half a second."""
    start = time.monotonic()
    before = cpu_ticks(pid)
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.5)
        now = cpu_ticks(pid)
        if now - before <= 1:
            break
        before = now
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, server: Proc, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.returncode is not None:
            raise RuntimeError(f"{server.name} exited at start:\n{server.tail()}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen on port {port} within {timeout:.0f} s")


class Client:
    """One run of the load client: JSON lines on its stdout, commands on its stdin."""

    def __init__(self, proc: Proc) -> None:
        self.p = proc

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


def build_client(build_dir: Path) -> Path:
    """Compile the load client (and the C server of the ceiling check) with gcc -O2."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in ("loadclient", "cserver"):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build_dir / name),
                        str(HERE / f"{name}.c")], check=True, timeout=120)
    return build_dir / "loadclient"
