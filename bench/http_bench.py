"""HTTP throughput: ticker's reads and its publish against ``GET /healthz`` and a bare XADD.

    scripts/bench --scenarios http                     # 3 repetitions, 10 s windows
    scripts/bench --scenarios http --runs 5 --http-seconds 20
    scripts/bench --scenarios http --smoke             # 1 repetition, 1 s windows
    scripts/bench --scenarios http --report bench/results/RESULTS.json

The figures of issue 12: requests per second that ``wrk -t1 -c64`` gets from each
endpoint, as a ratio to a baseline measured in the same repetition (the machine is shared
and noisy: the ratio moves less than either side). The reads (``GET .../briefs?limit=20``,
``/embed/world``, ``feed.rss``, each also revalidated with ``If-None-Match`` for a 304) are
divided by ``GET /healthz`` of the same ticker process; ``POST .../briefs`` (no subscriber,
every check on) by bench/bare_xadd.py (Starlette on uvicorn doing one XADD) on the same
core with the same requests.

Layout, as in the fan-out benchmark (run.py): the server under test alone on core 0
(``taskset -c 0``), wrk on core 1 (``taskset -c 1``) with this runner and Redis (the
runner's embedded one). Every repetition starts afresh: Redis emptied, an API key created
with ``ticker keys create --name bench --channel '*'``, ticker and the bare server
started, 30 briefs published to ``world`` through ticker's HTTP API; then every endpoint
once, in an order rotated per repetition, each a warm-up (``--http-warmup`` s, discarded)
and a measured window (``--http-seconds`` s) of wrk with bench/wrk_requests.lua.

ticker runs with its defaults (config/ticker.toml) except two limits, set through
``TICKER_*``: ``max_connections_per_address = 0`` (all of wrk's connections come from
127.0.0.1) and ``publish_rate_per_minute`` raised to ``RATE_PER_MINUTE``: on, so that every
publish is counted in Redis as in production, but never reached in a run.

Every answer's status is counted by the wrk script: a window with an unexpected status (a
304 target answered 200, a publish answered 4xx/5xx, a replayed idempotency key), a socket
error or a timeout is recorded as failed and the run exits 1. A missed issue target is
reported ("not met"), not failed. A read whose 200 answer has no ETag cannot be revalidated:
its 304 row says so ("no ETag") and counts as not met.

Not named ``http.py``: the runner is started as ``python bench/run.py``, so bench/ comes
first on ``sys.path`` and a bench/http.py would stand in for the standard library's ``http``
package (Starlette imports ``http.cookies``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import run
from procs import Proc, Processes, cpu_ns, free_port, wait_listening, wait_quiet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "wrk_requests.lua"
WRK_THREADS, WRK_CONNECTIONS = 1, 64  # issue 12's "wrk -t1 -c64"
WRK_GRACE_S = 30.0  # how long past its window a wrk may take before it is stopped
# wrk's own default (2 s) counts a request as timed out, and not in the latencies, when a
# shared core stalls the server for a moment: wait longer, so that such a stall shows in
# p99, and only a request unanswered this long fails the window.
WRK_TIMEOUT_S = 10
READ_CHANNEL, READ_BRIEFS = "world", 30  # the channel read, and the briefs put in it first
PUBLISH_CHANNEL = "bench"  # the channel published to (no subscriber)
# On, so that every publish is counted in Redis as in production; never reached: a loopback
# run of ticker on one core publishes some thousands a second, some 10^5 a minute.
RATE_PER_MINUTE = 100_000_000
PUBLISH_BODY = orjson.dumps({
    "text": "Bench: a brief published under load, about as long as a news headline usually is",
    "urgency": 3, "lang": "en"}).decode()
PROBE_TIMEOUT = 10.0  # seconds for one request of the runner's own (setup and probes)
KEYS_TIMEOUT = 60.0  # seconds for ticker keys create


@dataclass(frozen=True)
class Target:
    """One endpoint measured: what wrk sends, what every answer must be, and what its
    requests/s is divided by."""

    name: str
    server: str  # "ticker" or "bare"
    method: str
    path: str
    status: int  # the status of every answer
    baseline: str | None = None  # the target whose req/s of the same repetition divides this
    goal: float | None = None  # issue 12's least ratio to the baseline
    revalidates: str | None = None  # sends If-None-Match: the ETag of this target's answer
    items: int | None = None  # briefs in the answer (checked once, before the windows)

    @property
    def label(self) -> str:
        conditional = " (If-None-Match)" if self.revalidates else ""
        server = " on bare_xadd.py" if self.server == "bare" else ""
        return f"{self.method} {self.path}{conditional}{server}"


LIST = f"/v1/channels/{READ_CHANNEL}/briefs?limit=20"
EMBED = f"/embed/{READ_CHANNEL}"
RSS = f"/v1/channels/{READ_CHANNEL}/feed.rss"
PUBLISH = f"/v1/channels/{PUBLISH_CHANNEL}/briefs"
TARGETS = (
    Target("healthz", "ticker", "GET", "/healthz", 200),
    Target("list", "ticker", "GET", LIST, 200, "healthz", 0.5, items=20),
    Target("list_304", "ticker", "GET", LIST, 304, "healthz", 0.8, revalidates="list"),
    Target("embed", "ticker", "GET", EMBED, 200, "healthz", 0.5, items=20),
    Target("embed_304", "ticker", "GET", EMBED, 304, "healthz", 0.8, revalidates="embed"),
    Target("rss", "ticker", "GET", RSS, 200, "healthz", 0.5, items=READ_BRIEFS),
    Target("rss_304", "ticker", "GET", RSS, 304, "healthz", 0.8, revalidates="rss"),
    Target("publish", "ticker", "POST", PUBLISH, 201, "bare_xadd", 0.6),
    Target("bare_xadd", "bare", "POST", PUBLISH, 201),
)
BY_NAME = {t.name: t for t in TARGETS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--scenarios http`` (run.py's --runs, --smoke, --out, --report,
    --wait-load and --max-load apply too)."""
    group = parser.add_argument_group(
        "HTTP throughput (--scenarios http: wrk against ticker's reads and publish, "
        "bench/http_bench.py)")
    group.add_argument("--http-seconds", type=int, default=10,
                       help="measured window of each endpoint, whole seconds (wrk -d)")
    group.add_argument("--http-warmup", type=int, default=2,
                       help="warm-up before each window, whole seconds, not measured")


def ticker_env(redis_url: str) -> dict[str, str]:
    """The environment of ``ticker serve`` and ``ticker keys``: none of the caller's
    ``TICKER_*`` (so that a shell's settings do not leak into the figures), the bench's
    Redis, and the two limits lifted (see the module's docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKER_")}
    env.update(REDIS_URL=redis_url, TICKER_HOST="127.0.0.1", TICKER_LOG_LEVEL="warning",
               TICKER_MAX_CONNECTIONS_PER_ADDRESS="0",
               TICKER_PUBLISH_RATE_PER_MINUTE=str(RATE_PER_MINUTE))
    return env


# ------------------------------------------------------------------ the runner's own requests


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a connection of its own (blocking: call in a thread). The
    Host header is 127.0.0.1:PORT, as wrk's, so that a feed's ETag (which depends on the
    links' base) is the one wrk's requests get."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


async def create_key(redis_url: str, procs: Processes, logs: Path) -> str:
    """``ticker keys create --name bench --channel '*'`` against the bench's Redis: the
    key it prints alone on standard output."""
    argv = [sys.executable, "-m", "ticker", "keys", "create", "--name", "bench",
            "--channel", "*"]
    p = await procs.start("keys", argv, logs / "keys-create.log", stdout=True,
                          env=ticker_env(redis_url))
    assert p.proc.stdout is not None
    try:
        out = await asyncio.wait_for(p.proc.stdout.read(), KEYS_TIMEOUT)
        await asyncio.wait_for(p.proc.wait(), KEYS_TIMEOUT)
    finally:
        await procs.stop(p, timeout=5)  # a no-op once it has exited
    if p.proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"ticker keys create failed ({p.proc.returncode}):\n{p.tail()}")
    return out.decode().strip()


def world_brief(i: int) -> dict[str, Any]:
    """The i-th brief of the read channel: headline-sized, a third of them with a link
    (feeds and pages render those differently), a few urgent."""
    brief: dict[str, Any] = {
        "text": f"World {i}: ministers of the region meet again on the water agreement; "
                f"talks resume on day {i} with observers from the neighbouring countries",
        "urgency": 2 if i % 10 == 0 else 4, "lang": "en"}
    if i % 3 == 0:
        brief["url"] = f"https://news.example.org/world/{i}"
    return brief


async def publish_world(port: int, key: str, scope: str) -> None:
    """READ_BRIEFS briefs into the read channel, through ticker's HTTP API."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for i in range(READ_BRIEFS):
        status, _, body = await asyncio.to_thread(
            request, port, "POST", f"/v1/channels/{READ_CHANNEL}/briefs",
            {**headers, "Idempotency-Key": f"{scope}-world-{i}"}, orjson.dumps(world_brief(i)).decode())
        if status != 201:
            raise RuntimeError(f"publishing brief {i} to {READ_CHANNEL!r} answered {status}: "
                               f"{body[:500]!r}")


def count_items(target: Target, body: bytes) -> int:
    """Briefs in a read's answer: the list's JSON, the page's <li>, the feed's <item>."""
    if target.name == "list":
        return len(json.loads(body)["briefs"])
    if target.name == "embed":
        return len(re.findall(rb"<li[ >]", body))
    return body.count(b"<item>")


async def probe_reads(port: int) -> dict[str, dict[str, Any]]:
    """One GET of each read before the windows: it must answer 200 with every brief asked
    for; its ETag (or None) is what the 304 targets send."""
    out: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        if target.server != "ticker" or target.method != "GET" or target.revalidates:
            continue
        status, headers, body = await asyncio.to_thread(request, port, "GET", target.path)
        if status != 200:
            raise RuntimeError(f"{target.label} answered {status}, not 200: {body[:500]!r}")
        items = count_items(target, body) if target.items is not None else None
        if items != target.items:
            raise RuntimeError(f"{target.label} answered {items} briefs, not {target.items}")
        out[target.name] = {"etag": headers.get("etag"), "bytes": len(body), "items": items,
                            "cache_control": headers.get("cache-control")}
    return out


# ------------------------------------------------------------------ wrk


def wrk_argv(target: Target, port: int, seconds: int, key: str, etag: str | None,
             scope: str) -> list[str]:
    """wrk pinned to the client's core, with the script's arguments: method, body, and an
    idempotency prefix of its own for every POST window (a key used before would be
    answered from its record: another, cheaper path)."""
    wrk = shutil.which("wrk") or "wrk"
    argv = ["taskset", "-c", str(run.CLIENT_CORE), wrk, f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s", "--latency",
            "-s", str(WRK_SCRIPT)]
    body = prefix = ""
    if target.method == "POST":
        # the same bytes to ticker and to the bare server (which ignores the key)
        argv += ["-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]
        body, prefix = PUBLISH_BODY, f"{scope}-{time.monotonic_ns()}"
    if etag is not None:
        argv += ["-H", f"If-None-Match: {etag}"]
    return [*argv, f"http://127.0.0.1:{port}{target.path}", "--", target.method, body, prefix,
            str(target.status)]


async def run_wrk(procs: Processes, argv: list[str], log: Path, seconds: int) -> dict[str, Any]:
    """Run wrk to its end; its figures, from the script's ``wrk-json:`` line (wrk's text,
    with its latency distribution, stays in ``log``)."""
    p = await procs.start("wrk", argv, log)
    try:
        await asyncio.wait_for(p.proc.wait(), seconds + WRK_GRACE_S)
    finally:
        await procs.stop(p, timeout=5)  # a no-op once it has exited
    text = log.read_text(errors="replace")
    if p.proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {p.proc.returncode}:\n{text[-2000:]}")
    found = re.search(r"^wrk-json: (.*)$", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no figures (wrk-json):\n{text[-2000:]}")
    figures: dict[str, Any] = json.loads(found[1])
    figures["statuses"] = {int(k): v for k, v in figures["statuses"].items()}
    duration = figures["duration_us"] / 1e6
    figures["requests_per_s"] = figures["requests"] / duration if duration > 0 else 0.0
    return figures


def wrong_answers(target: Target, figures: dict[str, Any]) -> list[str]:
    """Why a window does not count: any answer but the expected status, any socket error
    or timeout, any replayed idempotency key, no answer at all."""
    problems = []
    if not figures["requests"]:
        problems.append("no request answered")
    others = {s: n for s, n in figures["statuses"].items() if s != target.status}
    if others:
        problems.append(f"answers other than {target.status}: "
                        + ", ".join(f"{n} x {s}" for s, n in sorted(others.items()))
                        + f" (the first: {figures.get('unexpected', '')[:200]!r})")
    errors = {k: v for k, v in figures["errors"].items() if v and k != "status"}
    if errors:
        problems.append("socket errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    if figures["replayed"]:
        problems.append(f"{figures['replayed']} answers replayed an idempotency key")
    return problems


def core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each core, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]
            out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def cores_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
               ) -> dict[str, float]:
    """Each core's busy share between two core_ticks(): whoever used it (on core 1: wrk,
    Redis, this runner, and other tenants of the machine)."""
    return {str(core): round((after[core][0] - b[0]) / max(1, after[core][1] - b[1]), 3)
            for core, b in before.items() if core in after}


# ------------------------------------------------------------------ one repetition


@dataclass
class Servers:
    ticker: Proc
    ticker_port: int
    bare: Proc
    bare_port: int
    key: str
    probes: dict[str, dict[str, Any]]

    def of(self, target: Target) -> tuple[Proc, int]:
        return (self.ticker, self.ticker_port) if target.server == "ticker" else (
            self.bare, self.bare_port)


async def start_servers(redis_url: str, procs: Processes, logs: Path, scope: str) -> Servers:
    """A key, ticker and the bare server on the server's core, and the read channel filled."""
    key = await create_key(redis_url, procs, logs)
    server_core = ["taskset", "-c", str(run.SERVER_CORE)]
    ticker_port, bare_port = free_port(), free_port()
    ticker = await procs.start(
        "ticker", [*server_core, sys.executable, "-m", "ticker", "serve", "--port",
                   str(ticker_port)], logs / "ticker.log", env=ticker_env(redis_url))
    bare = await procs.start(
        "bare_xadd", [*server_core, sys.executable, str(HERE / "bare_xadd.py"), "--port",
                      str(bare_port), "--redis-url", redis_url], logs / "bare_xadd.log")
    await wait_listening(ticker_port, ticker)
    await wait_listening(bare_port, bare)
    await publish_world(ticker_port, key, scope)
    probes = await probe_reads(ticker_port)
    await wait_quiet([ticker.pid, bare.pid])
    return Servers(ticker, ticker_port, bare, bare_port, key, probes)


async def measure(target: Target, servers: Servers, procs: Processes, redis: aioredis.Redis,
                  redis_pid: int, opts: argparse.Namespace, logs: Path,
                  scope: str) -> dict[str, Any]:
    """A warm-up, then one measured window of wrk against ``target``; its figures."""
    server, port = servers.of(target)
    etag = None
    if target.revalidates:
        etag = servers.probes[target.revalidates]["etag"]
        if etag is None:
            return {"skipped": f"{BY_NAME[target.revalidates].label} sends no ETag: "
                               "nothing to revalidate"}
    out: dict[str, Any] = {"etag": etag}
    await wait_quiet(server.pid)
    if opts.http_warmup > 0:
        await run_wrk(procs, wrk_argv(target, port, opts.http_warmup, servers.key, etag, scope),
                      logs / f"wrk-{target.name}-warmup.log", opts.http_warmup)
    argv = wrk_argv(target, port, opts.http_seconds, servers.key, etag, scope)
    commands0 = await run.commandstats(redis)
    cores0, server0 = core_ticks(), cpu_ns([server.pid])
    redis0 = cpu_ns([redis_pid]) if redis_pid else 0
    figures = await run_wrk(procs, argv, logs / f"wrk-{target.name}.log", opts.http_seconds)
    server_cpu_s = (cpu_ns([server.pid]) - server0) / 1e9
    redis_cpu_s = (cpu_ns([redis_pid]) - redis0) / 1e9 if redis_pid else 0.0
    cores = cores_busy(cores0, core_ticks())
    commands = run.commands_diff(commands0, await run.commandstats(redis),
                                 max(1, figures["requests"]))
    wall = figures["duration_us"] / 1e6
    out.update(
        wrk=figures, requests_per_s=figures["requests_per_s"],
        p50_ms=figures["latency_us"]["p50"] / 1e3, p99_ms=figures["latency_us"]["p99"] / 1e3,
        # the server's CPU over the window, in cores: about 1.0 when it is what limits
        server_cores=server_cpu_s / wall if wall else None,
        server_core_busy=cores.get(str(run.SERVER_CORE)),
        redis_cores=redis_cpu_s / wall if wall else None, cores_busy=cores,
        redis_commands=commands, redis_per_request=commands["total_per_unit"],
        command=" ".join(argv).replace(servers.key, "KEY"))  # a key has no place in results
    problems = wrong_answers(target, figures)
    if problems:
        out["error"] = "; ".join(problems)
    return out


async def repetition(rep: int, redis_url: str, redis_pid: int, procs: Processes,
                     opts: argparse.Namespace, work: Path,
                     save: Callable[[dict[str, Any]], None]) -> None:
    """Every target once, in an order rotated with ``rep``, against fresh servers."""
    logs = work / f"rep-{rep}"
    logs.mkdir(parents=True, exist_ok=True)
    scope = f"bench-{rep}-{time.time_ns()}"
    redis = aioredis.Redis.from_url(redis_url)
    servers: Servers | None = None
    try:
        await redis.flushall()
        servers = await start_servers(redis_url, procs, logs, scope)
        order = [t.name for t in TARGETS]
        for name in run.rotate(order, rep):
            target = BY_NAME[name]
            print(f"bench: run {rep + 1}/{opts.runs} {target.label} "
                  f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
            entry: dict[str, Any] = {"rep": rep, "target": name, "label": target.label,
                                     "load_before": os.getloadavg()}
            try:
                entry.update(await measure(target, servers, procs, redis, redis_pid, opts,
                                           logs, scope))
            except (RuntimeError, OSError, TimeoutError) as exc:
                entry["error"] = repr(exc)
            print("bench:   " + progress_line(entry), file=sys.stderr, flush=True)
            save(entry)
        save({"rep": rep, "target": "probes", "probes": servers.probes})
    finally:
        if servers is not None:
            for p in (servers.ticker, servers.bare):
                await procs.stop(p)
        else:
            await procs.stop_all()  # a server that started before the setup failed
        await redis.aclose()


def progress_line(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    if "wrk" not in entry:
        return f"FAILED: {entry.get('error')}"
    line = (f"{entry['requests_per_s']:,.0f} req/s, p50 {entry['p50_ms']:.1f} ms, "
            f"p99 {entry['p99_ms']:.1f} ms, server {entry['server_cores']:.2f} cores, "
            f"Redis {entry['redis_per_request']:.2f} commands/request")
    return line + (f" FAILED: {entry['error']}" if "error" in entry else "")


# ------------------------------------------------------------------ figures


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target: requests/s median, min, max over the repetitions, and the median of
    its ratios to its baseline measured in the same repetition; latency and CPU medians."""
    good = [r for r in runs if r.get("target") in BY_NAME and "error" not in r]
    out: dict[str, Any] = {}
    for target in TARGETS:
        mine = [r for r in good if r["target"] == target.name]
        measured = [r for r in mine if "requests_per_s" in r]
        failed = [r for r in runs if r.get("target") == target.name and "error" in r]
        entry: dict[str, Any] = {"label": target.label, "runs": len(measured),
                                 "failed": len(failed), "baseline": target.baseline,
                                 "goal": target.goal,
                                 # not in the medians: what the failed windows got, to show
                                 "failed_requests_per_s": [r["requests_per_s"] for r in failed
                                                           if "requests_per_s" in r]}
        skipped = [r["skipped"] for r in mine if "skipped" in r]
        if skipped:
            entry["skipped"] = skipped[0]
        if measured:
            for name in ("requests_per_s", "p50_ms", "p99_ms", "server_cores",
                         "server_core_busy", "redis_per_request"):
                values = [r[name] for r in measured if r.get(name) is not None]
                if values:
                    entry[name] = {"median": statistics.median(values), "min": min(values),
                                   "max": max(values)}
        ratios = []
        for r in measured:
            base = [b for b in good if b["target"] == target.baseline and b["rep"] == r["rep"]
                    and b.get("requests_per_s")]
            if base:
                ratios.append(r["requests_per_s"] / base[0]["requests_per_s"])
        if ratios:
            entry["ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                              "max": max(ratios), "runs": len(ratios)}
        out[target.name] = entry
    return out


def verdict(entry: dict[str, Any]) -> str:
    if entry["goal"] is None:
        return "baseline"
    if "ratio" in entry:
        return "met" if entry["ratio"]["median"] >= entry["goal"] else "not met"
    return "not met (no ETag)" if "skipped" in entry else "not measured"


def table(summary: dict[str, Any]) -> str:
    """Markdown: requests/s median (min-max), x the median same-repetition ratio to the
    baseline (min-max), the issue's target, latency and the server's CPU."""
    lines = ["| endpoint | req/s median (min-max) | ratio (min-max) | target | met "
             "| p50 ms | p99 ms | server CPU (its core busy) | Redis cmds/req |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in summary.values():
        rate, ratio = entry.get("requests_per_s"), entry.get("ratio")
        failed = ""
        if entry.get("failed"):
            got = entry.get("failed_requests_per_s") or []
            failed = f" ({entry['failed']} failed" + (
                f": {min(got):,.0f}-{max(got):,.0f} with wrong answers)" if got else ")")
        cells = [
            (f"{rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f})" if rate
             else "not measured") + failed,
            f"{ratio['median']:.2f} x {entry['baseline']} ({ratio['min']:.2f}-{ratio['max']:.2f})"
            if ratio else "-",
            f">= {entry['goal']} x {entry['baseline']}" if entry["goal"] is not None else "-",
            verdict(entry),
        ]
        for name, fmt in (("p50_ms", "{:.1f}"), ("p99_ms", "{:.1f}"), ("server_cores", "{:.2f}"),
                          ("redis_per_request", "{:.2f}")):
            m = entry.get(name)
            cells.append(fmt.format(m["median"]) if m else "-")
        # the server's core in use by anyone: well above the server's CPU, another process
        # shared that core; both well below 1, the server was not what set the pace
        busy = entry.get("server_core_busy")
        if busy:
            cells[-2] += f" ({busy['median']:.2f})"
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    """The table (of a finished run, or of the windows a stopped one saved), the publish's
    Redis commands and the settings that differ from ticker's defaults."""
    if "summary" not in results:
        results["summary"] = summarize(results["runs"])
    if results.get("machine", {}).get("loaded"):
        print("TAKEN ON A LOADED MACHINE: other processes kept the cores busy (see machine).")
    rate = int(results["settings"]["TICKER_PUBLISH_RATE_PER_MINUTE"])
    print(f"\nscripts/bench {results.get('command', '')}: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, "
          f"{results['args'].get('http_seconds')} s windows; ticker with "
          f"publish_rate_per_minute = {rate:,} (on, never reached) and "
          "max_connections_per_address = 0\n")
    print(table(results["summary"]))
    publish = [r for r in results["runs"] if r.get("target") == "publish" and "redis_commands" in r]
    if publish:
        calls = publish[-1]["redis_commands"]["per_unit"]
        print("\nRedis commands per POST (last run; a script's commands under their names): "
              + ", ".join(f"{k} {v:.2f}" for k, v in calls.items()))
    for r in results["runs"]:
        if "error" in r:
            print(f"FAILED: run {r['rep'] + 1} {r.get('label', r['target'])}: {r['error']}")


# ------------------------------------------------------------------ the whole scenario


async def bench(opts: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    os.sched_setaffinity(0, {run.CLIENT_CORE})  # this runner, wrk and Redis
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    procs = Processes()

    def save(entry: dict[str, Any]) -> None:
        results["runs"].append(entry)
        run.save(results, out)  # so far: a long run that is stopped keeps them

    with tempfile.TemporaryDirectory(prefix="tk-http-bench-") as tmp:
        work = Path(tmp)
        try:
            async with run.redis_server(work) as redis:
                probe = aioredis.Redis.from_url(redis.url)
                info = await probe.info("server")
                await probe.aclose()
                results["versions"] = run.versions(
                    str(info.get("valkey_version") or info.get("redis_version")))
                redis_pid = redis.process.pid if redis.process else 0
                for rep in range(opts.runs):
                    if opts.wait_load > 0:
                        check = await run.wait_for_quiet_machine(opts.max_load, opts.wait_load)
                        check.update(rep=rep)
                        results["machine"]["checks"].append(check)
                    try:
                        await repetition(rep, redis.url, redis_pid, procs, opts, work, save)
                    except (RuntimeError, OSError, TimeoutError) as exc:  # its setup failed
                        print(f"bench:   FAILED: {exc!r}", file=sys.stderr, flush=True)
                        save({"rep": rep, "target": "setup", "error": repr(exc)})
        finally:
            await procs.stop_all()
    checks = results["machine"]["checks"]
    results["machine"]["loaded"] = any(c["loaded"] for c in checks) if checks else None
    results["machine"]["load_at_end"] = os.getloadavg()


def main(args: argparse.Namespace) -> int:
    """``scripts/bench --scenarios http``: called by run.py's main with its arguments."""
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        if saved.get("scenario") != "http":
            print(f"bench: {args.report} holds no HTTP results: leave out --scenarios http "
                  "to print its table.", file=sys.stderr)
            return 2
        print_report(saved)
        return 0
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        packages = " ".join("util-linux" if t == "taskset" else t for t in missing)
        print(f"bench: the HTTP scenario needs {' and '.join(missing)}, not installed here: "
              f"apt-get install {packages}", file=sys.stderr)
        return 2
    if args.smoke:
        args.runs, args.http_seconds, args.http_warmup, args.wait_load = 1, 1, 1, 0
    if args.http_seconds < 1 or args.http_warmup < 0 or args.runs < 1:
        print("bench: --http-seconds and --runs must be at least 1, --http-warmup at least 0 "
              "(wrk takes whole seconds).", file=sys.stderr)
        return 2
    out = (Path(args.out) if args.out
           else HERE / "results" / time.strftime("http-%Y%m%d-%H%M%S.json"))
    results: dict[str, Any] = {
        "scenario": "http", "command": " ".join(sys.argv[1:]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "settings": {k: v for k, v in ticker_env("").items() if k.startswith("TICKER_")},
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS, "timeout_s": WRK_TIMEOUT_S,
                "script": WRK_SCRIPT.name, "publish_body": PUBLISH_BODY},
        "machine": {"checks": []}, "runs": []}
    print(f"bench: HTTP throughput, {args.runs} run(s) of {len(TARGETS)} endpoints, "
          f"{args.http_warmup} s warm-up + {args.http_seconds} s each; ticker with "
          f"publish_rate_per_minute = {RATE_PER_MINUTE:,} (the limit stays on, every publish "
          "counted in Redis, but it is never reached) and max_connections_per_address = 0 "
          "(every connection comes from 127.0.0.1)", file=sys.stderr, flush=True)
    try:
        asyncio.run(bench(args, results, out))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"bench: stopped; the windows measured so far are in {out}", file=sys.stderr)
        return 130
    results["summary"] = summarize(results["runs"])
    run.save(results, out)
    print_report(results)
    print(f"\nmachine: {results['machine']}\nresults: {out}")
    return 1 if any("error" in r for r in results["runs"]) else 0
