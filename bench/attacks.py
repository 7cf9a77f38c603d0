"""The attack suite, longer: the attacks of tests/test_attacks.py against ``ticker serve``
with its default settings, each for ``--seconds``, with figures instead of assertions.

    python bench/attacks.py                                  # every attack, 15 s, 3 runs
    python bench/attacks.py --seconds 5 --runs 1             # a quick look
    python bench/attacks.py --attacks idle,drip-http-head --connections 700 --json out.json

One run of one attack: a fresh Redis database is not needed (names are fresh), but the
server is fresh (``python -m ticker serve`` on a free port, REDIS_URL at a valkey-server
started here). The legitimate probe of the tests runs throughout (a WebSocket subscriber
and a publisher posting a brief every 100 ms, from 127.0.0.1); after a second of warm-up
the server's RSS is taken (*before*), then sampled every 50 ms while the attack runs
(*peak*). Attackers connect from 127.0.0.2 and up. Flooding attacks reconnect whenever the
server closes them, so the pressure lasts the whole ``--seconds``; slow ones open
``--connections`` connections once and drip or hold them. Then the attackers stop
sending but keep their sockets for ``--grace`` seconds, and the connections the server
still holds from attacker addresses are counted (*open after*: 0 is the goal, except
for ``hold``, ``churn-unlimited`` and ``per-address``, whose survivors are legitimate).
They close, and a second later the RSS is taken again (*after*).

A run stops early, and says so, when the server's RSS passes ``--rss-limit`` MiB (the
unfixed server grew to 4.8 GiB in 15 s): the machine is shared.

Table: medians over the runs (``--runs``); *answers*: what the attackers got, from the
last run (status codes, ``101+<close code>``, ``closed`` for a close without an answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.attackers import (  # noqa: E402
    ATTACKERS,
    Conn,
    Probe,
    RawWs,
    RssSampler,
    Tally,
    TickerServe,
    big_head,
    churn,
    close_everything,
    drip,
    drip_heads,
    frame_flood,
    hold_subscriptions,
    outcome,
    poll,
    sources,
)
from ticker.embedded import EmbeddedRedis  # noqa: E402

WARMUP = 1.0
CUT_SHORT = 1.0  # seconds: a flooding connection begun this close to the end is not counted
PER_ADDRESS = 50  # max_connections_per_address of the per-address attack


@dataclass
class Ctx:
    server: TickerServe
    key: str
    seconds: float
    connections: int
    tally: Tally = field(default_factory=Tally)
    kept: list[Conn | RawWs] = field(default_factory=list)  # still open when time ran out
    notes: list[str] = field(default_factory=list)

    def deadline(self) -> float:
        return time.monotonic() + self.seconds


def _ended(item: Conn | RawWs) -> bool:
    conn = item.conn if isinstance(item, RawWs) else item
    return conn.closed.is_set()


async def _again(ctx: Ctx, loops: int, attack: Callable[[int, str, float], Awaitable[Conn | RawWs]]) -> None:
    """``loops`` attackers (one address each), each starting ``attack`` again whenever
    the server ends the last one, until the time is up. One that the time cut short
    (begun less than ``CUT_SHORT`` s before, and not answered yet) is closed: left alone,
    it would be another attack (a dripping head, a message never finished). Any other
    still open is kept, and counted in "open after": the server let it be."""
    deadline = ctx.deadline()

    async def loop(n: int) -> None:
        source = ATTACKERS[n % len(ATTACKERS)]
        for i in range(1_000_000):
            started = time.monotonic()
            remaining = deadline - started
            if remaining <= 0:
                return
            try:
                item = await attack(i, source, remaining)
            except OSError as exc:
                ctx.tally.add(f"connect failed ({exc.strerror})")
                await asyncio.sleep(0.05)
                continue
            if isinstance(item, RawWs):
                await item.wait_close(min(1.0, max(0.0, deadline - time.monotonic())))
                answered = item.close_code is not None or not item.open_ok
            else:
                answered = bool(item.answers())
            ended = _ended(item) or (isinstance(item, RawWs) and item.close_code is not None)
            cut = not ended and not answered and deadline - started < CUT_SHORT
            ctx.tally.add("cut short at time-up" if cut else
                          item.outcome() if isinstance(item, RawWs) else outcome(item))
            if ended or cut:
                await item.close()
            else:
                ctx.kept.append(item)
                return

    await asyncio.gather(*(loop(n) for n in range(loops)))


# The attacks: name -> (settings of the server, the attack)


async def _heads(ctx: Ctx, kind: str) -> None:
    port = ctx.server.port
    await _again(ctx, 4, lambda i, source, remaining: big_head(port, source, kind, 1 << 40, remaining))


async def _churn(ctx: Ctx) -> None:
    port, tag = ctx.server.port, uuid.uuid4().hex[:8]
    await _again(ctx, 3, lambda i, source, remaining: churn(
        port, source, remaining, f"{tag}-{source.rsplit('.', 1)[1]}-{i}"))


async def _hold(ctx: Ctx) -> None:
    held = await hold_subscriptions(ctx.server.port, sources(ctx.connections), 32, uuid.uuid4().hex[:8])
    for ws in held:
        ctx.tally.add(f"{ws.outcome()} {ws.messages['snapshot']} snapshots")
    ctx.kept.extend(held)
    await asyncio.sleep(max(0.0, ctx.seconds))


async def _slow(ctx: Ctx, kind: str) -> None:
    port, deadline = ctx.server.port, ctx.deadline()
    addresses = list(sources(ctx.connections))
    conns = list(await asyncio.gather(*(Conn.open(a, port) for a in addresses), return_exceptions=True))
    opened = [c for c in conns if isinstance(c, Conn)]
    if len(opened) < len(conns):
        ctx.notes.append(f"{len(conns) - len(opened)} connects failed")
    if kind == "idle":
        await asyncio.gather(*(c.wait_closed(max(0.0, deadline - time.monotonic())) for c in opened))
    else:
        first, byte = drip_heads()[kind](ctx.key)
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(drip(c, first, byte, 0.5, remaining) for c in opened))
    for conn in opened:
        ctx.tally.add(outcome(conn))
    ctx.kept.extend(opened)


async def _flood(ctx: Ctx, kind: str) -> None:
    port = ctx.server.port
    await _again(ctx, 1, lambda i, source, remaining: frame_flood(port, source, kind, remaining))


async def _per_address(ctx: Ctx) -> None:
    """One address holds its share (PER_ADDRESS WebSockets) and keeps asking for more,
    50 at a time."""
    port, source = ctx.server.port, ATTACKERS[0]
    held = list(await asyncio.gather(*(RawWs.open(source, port) for _ in range(PER_ADDRESS)),
                                     return_exceptions=True))
    kept = [ws for ws in held if isinstance(ws, RawWs)]
    ctx.kept.extend(kept)
    deadline = ctx.deadline()
    while time.monotonic() < deadline:
        extra = list(await asyncio.gather(
            *(RawWs.open(source, port) for _ in range(50)), return_exceptions=True))
        for ws in extra:
            if isinstance(ws, RawWs):
                await ws.wait_close(0.2)
                ctx.tally.add(ws.outcome())
                await ws.close()
            else:
                ctx.tally.add(type(ws).__name__)
    for ws in kept:
        ctx.tally.add(f"held {ws.outcome()}")


Attack = Callable[[Ctx], Coroutine[Any, Any, None]]
ATTACKS: dict[str, tuple[dict[str, object], Attack]] = {
    "endless-headers": ({}, lambda ctx: _heads(ctx, "endless-lines")),
    "8MB-header": ({}, lambda ctx: _heads(ctx, "one-8MB-header")),
    "100000-headers": ({}, lambda ctx: _heads(ctx, "100000-headers")),
    "ws-endless-headers": ({}, lambda ctx: _heads(ctx, "ws-endless-lines")),
    "churn": ({}, _churn),
    "churn-unlimited": ({"ws_message_rate": 1_000_000, "ws_message_burst": 1_000_000}, _churn),
    "hold": ({}, _hold),
    "idle": ({}, lambda ctx: _slow(ctx, "idle")),
    "drip-http-head": ({}, lambda ctx: _slow(ctx, "drip-http-head")),
    "drip-ws-head": ({}, lambda ctx: _slow(ctx, "drip-ws-head")),
    "drip-post-body": ({}, lambda ctx: _slow(ctx, "drip-post-body")),
    "per-address": ({"max_connections_per_address": PER_ADDRESS}, _per_address),
    "empty-continuations": ({}, lambda ctx: _flood(ctx, "empty-continuations")),
    "empty-text-frames": ({}, lambda ctx: _flood(ctx, "empty-text-frames")),
    "pings": ({}, lambda ctx: _flood(ctx, "pings")),
}
HELD_BY_DESIGN = {"hold", "churn-unlimited", "per-address"}  # survivors are legitimate


async def run_one(redis_url: str, logs: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    settings, attack = ATTACKS[name]
    server = TickerServe(redis_url, logs / f"{name}.log", **settings)
    result: dict[str, Any] = {"attack": name}
    try:
        await server.start()
        key = await server.create_key()
        probe = await Probe(server, key, f"probe-{uuid.uuid4().hex[:8]}").start()
        ctx = Ctx(server, key, args.seconds, args.connections)
        try:
            await asyncio.sleep(WARMUP)
            before = server.rss_mib()
            async with RssSampler(server) as sampler:
                task = asyncio.create_task(attack(ctx))
                guard = asyncio.create_task(
                    poll(lambda: sampler.peak > args.rss_limit or task.done(), args.seconds * 3 + 120, 0.05)
                )
                await asyncio.wait([task, guard], return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    ctx.notes.append(
                        f"stopped early: RSS {sampler.peak:.0f} MiB passed --rss-limit {args.rss_limit} MiB"
                    )
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await asyncio.sleep(args.grace)  # attackers quiet, sockets kept
                open_after = server.attacker_connections()
            await close_everything()
        finally:
            await probe.stop()
        await asyncio.sleep(1.0)
        summary = probe.summary()
        result.update(
            rss_before_mib=round(before, 1), rss_peak_mib=round(sampler.peak, 1),
            rss_after_mib=round(server.rss_mib(), 1), attacker_open_after=open_after,
            latency_ms=summary["latency_ms"], published_ok=summary["published_ok"],
            published_failed=summary["published_failed"], delivered=summary["delivered"],
            probe_problems=probe.problems()[:5], answers=dict(ctx.tally.counts), notes=ctx.notes,
        )
    except Exception as exc:  # one attack's failure must not lose the others' figures
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await close_everything()
        result["server_log_tail"] = server.log_tail(5) if "error" in result else ""
        server.stop()
    return result


FIGURES = ("rss_before_mib", "rss_peak_mib", "rss_after_mib", "attacker_open_after",
           "p50", "p99", "max", "published_ok", "published_failed")


def _flat(run: dict[str, Any]) -> dict[str, float | None]:
    latency = run.get("latency_ms") or {}
    return {name: run.get(name, latency.get(name)) for name in FIGURES}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["attack"] for r in runs):
        mine = [r for r in runs if r["attack"] == name and "error" not in r]
        figures: dict[str, Any] = {}
        for figure in FIGURES:
            values = [v for v in (_flat(r)[figure] for r in mine) if v is not None]
            figures[figure] = statistics.median(values) if values else None
        figures["runs"] = len(mine)
        figures["errors"] = [r["error"] for r in runs if r["attack"] == name and "error" in r]
        figures["answers"] = mine[-1]["answers"] if mine else {}
        figures["problems"] = sorted({p for r in mine for p in r["probe_problems"]})[:3]
        figures["notes"] = sorted({n for r in mine for n in r["notes"]})
        summary[name] = figures
    return summary


def table(summary: dict[str, Any]) -> str:
    def num(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = (f"{'attack':<22} {'RSS MiB before/peak/after':>26} {'open after':>10} "
              f"{'legit ms p50/p99/max':>22} {'publish ok/fail':>15}  answers")
    lines = [header, "-" * len(header)]
    for name, f in summary.items():
        if not f["runs"]:
            lines.append(f"{name:<22} error: {f['errors'][:1]}")
            continue
        rss = f"{num(f['rss_before_mib'])}/{num(f['rss_peak_mib'])}/{num(f['rss_after_mib'])}"
        latency = f"{num(f['p50'], 1)}/{num(f['p99'], 1)}/{num(f['max'], 1)}"
        held = "*" if name in HELD_BY_DESIGN else ""
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(f["answers"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(
            f"{name:<22} {rss:>26} {num(f['attacker_open_after']) + held:>10} {latency:>22} "
            f"{num(f['published_ok']) + '/' + num(f['published_failed']):>15}  {answers}"
        )
        for note in f["notes"] + f["problems"]:
            lines.append(f"{'':<22}   ! {note[:150]}")
    lines.append("* connections a legitimate client would hold too (not closed by design)")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    names = list(ATTACKS) if args.attacks == "all" else args.attacks.split(",")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        print(f"Unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}.", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tk-att-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        redis.start()
        try:
            for run in range(args.runs):
                for name in names:
                    result = await run_one(redis.url, Path(tmp), name, args)
                    result["run"] = run
                    runs.append(result)
                    state = result.get("error") or (
                        f"peak {result['rss_peak_mib']} MiB, open after {result['attacker_open_after']}, "
                        f"publish {result['published_ok']}/{result['published_failed']}"
                    )
                    print(f"run {run + 1}/{args.runs} {name}: {state}", file=sys.stderr, flush=True)
        finally:
            redis.stop()
    summary = summarize(runs)
    print(table(summary))
    if args.json:
        out = {
            "args": vars(args), "summary": summary, "runs": runs,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default="all", help=f"comma-separated, or all: {', '.join(ATTACKS)}")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each attack (default 15)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each attack; the table shows medians")
    parser.add_argument("--connections", type=int, default=300,
                        help="connections of the slow attacks and of hold (default 300)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds the attackers stay quiet before open connections are counted")
    parser.add_argument("--rss-limit", type=float, default=2048.0,
                        help="stop an attack when the server's RSS passes this (MiB)")
    parser.add_argument("--json", help="write every run and the summary to this path")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_args())))
