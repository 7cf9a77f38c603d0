"""The fan-out benchmark: ticker against its baselines, in the same run, on loopback.

    scripts/bench                          # N = 1,000 and 10,000, 3 runs, every server
    scripts/bench --n 1000 --runs 1        # a quick look
    scripts/bench --smoke --servers ticker # what tests/test_bench_smoke.py runs

Layout: the server under test runs alone on core 0 (``taskset -c 0``); the C load client
(bench/loadclient.c, compiled here with ``gcc -O2``) on core 1 (``taskset -c 1``), with
this runner, the publisher and Redis (``ticker.embedded.EmbeddedRedis`` in a temporary
directory). With a server of several workers (``ticker:wN``, ``--workers``), nothing is
pinned, for every server of the run (``--pin``): there is no fair split of two cores.
Above ``--client-n`` connections the load client runs as several processes.

Every server gets a fresh Redis (FLUSHALL, then a few briefs so that the
snapshot is not empty) and a fresh process for every run. One run of one server:

  1. connect storm + memory + burst (one client): N clients connect at once (time until
     every one has its snapshot); RSS of the idle server minus its RSS with no client,
     per connection; then ``--burst`` briefs published back-to-back through ticker's own
     publish path (``Store.publish``: validation by ``models.new_brief``, the Lua script)
     -> deliveries/s from the first publish to the last delivery.
  2. steady: ``--rate`` briefs/s for ``--seconds`` s -> latency p50/p99/max, losses.
  3. reconnect storm: the server is stopped (SIGTERM), ``--missed`` briefs are published
     while it is down, it is started again, then all N clients reconnect at once with
     ``since`` -> time until every one has ``subscribed`` and the briefs it missed.

  4. post-burst (``--scenarios post-burst``, WebSocket subscribers): N connect again, then
     ``--burst`` briefs POSTed back to back to ticker's HTTP API (one keep-alive
     connection, an API key, an Idempotency-Key each; a baseline gets them written to
     Redis) -> first POST to last delivery, and the POST round trips.

``--transport ws,sse``: ticker's runs again with Server-Sent Events subscribers
(``ticker/sse``, the load client's ``--transport sse``), in the same repetition.

Every brief's text carries ``seq=<n> t=<time.monotonic_ns()>``: the client measures
latency against the same clock and finds losses and duplicates by sequence number.
Servers: ``ticker`` (``python -m ticker serve``, the product as shipped), ``naive``
(bench/naive_server.py), ``floor`` and ``joined`` (bench/floor_server.py, one write per
socket per message / all pending frames joined into one write), and ``c-joined``
(bench/cserver.c, a C epoll server with joined writes and its own publisher, used to show
the ceiling of the load client). Results: JSON in bench/results/, a table on stdout.

Stores (``--store single,sentinel,cluster``, each run of each in the same invocation so
that their figures share the machine's state): ``single`` is the Redis above, shared by
the runs; ``sentinel`` (a primary, one replica, three sentinels) and ``cluster`` (3 shards
of a primary and a replica) are started afresh for every run from the test harnesses
(tests/sentinel_cluster.py, tests/redis_cluster.py), and there both ticker and the
publisher answer a publish only once a replica has it (``publish_min_replicas = 1``,
WAIT). A run on them is labelled ``ticker@sentinel``, ``ticker@cluster``; the reconnect
storm is left out there (it restarts the server, not the store: nothing new to see).
``--scenarios failover`` (sentinel and cluster only): briefs at ``FAILOVER_RATE``/s, each
retried with its own idempotency key until it is accepted, the primary holding the
channel SIGKILLed, and the time from the kill to the first delivery of a brief published
after it (see ``failover``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
import websockets  # noqa: E402
from procs import (  # noqa: E402
    Client,
    ClientGroup,
    Proc,
    Processes,
    build_client,
    children,
    connections_per_process,
    cpu_ns,
    cpu_ticks,
    free_port,
    process_tree,
    rss_kib,
    wait_listening,
    wait_quiet,
)
from redis.asyncio.cluster import RedisCluster  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402
from report import (  # noqa: E402
    metric,
    one_line,
    post_burst_table,
    summarize,
    table,
    transport_table,
    workers_table,
)

from ticker.config import Settings  # noqa: E402
from ticker.embedded import EmbeddedRedis  # noqa: E402
from ticker.errors import NotReplicated, StoreUnavailable  # noqa: E402
from ticker.keys import Layout  # noqa: E402
from ticker.models import new_brief  # noqa: E402
from ticker.store import Store, connect  # noqa: E402

CHANNEL = "bench"
PREFILL = 10  # briefs in the stream before a server starts: its snapshot is not empty
# The server alone on one core, everything else on another (one core: both share it).
_CORES = sorted(os.sched_getaffinity(0))
SERVER_CORE, CLIENT_CORE = _CORES[0], _CORES[1 if len(_CORES) > 1 else 0]
SERVERS = ("ticker", "ticker:wN", "naive", "floor", "joined", "c-joined", "c-write")
C_SERVERS = ("c-joined", "c-write")  # publish themselves, on command: no Redis, no resume
CONNECT_TIMEOUT = 300  # seconds for every client to be ready, in each connect storm
CLIENT_N = 10_000  # connections per load client process, at most (--client-n)
STORES = ("single", "sentinel", "cluster")
# The failover scenario: briefs per second, seconds of them before the kill and after it
# (the ones after go on being retried until accepted), the pause between two tries of
# one brief, and how long one brief is tried before it counts as not published.
FAILOVER_RATE = 20.0
FAILOVER_BEFORE_S = 2.0
FAILOVER_AFTER_S = 13.0
RETRY_DELAY_S = 0.05
PUBLISH_GIVE_UP_S = 90.0


def workers_of(name: str) -> int | None:
    """ticker:w4 -> 4 (``ticker serve --workers 4``); plain ticker -> None (as it always ran)."""
    base, _, variant = transport_of(name)[0].partition(":")
    if base == "ticker" and variant.startswith("w") and variant[1:].isdigit():
        return int(variant[1:])
    return None


def transport_of(name: str) -> tuple[str, str]:
    """ticker/sse -> ("ticker", "sse"): the same server, its subscribers on Server-Sent
    Events (``--transport``); a plain name -> (name, "ws")."""
    base, _, transport = name.partition("/")
    return base, transport or "ws"


def pin(argv: list[str], role: str, opts: Options) -> list[str]:
    """``--pin split``: the server alone on core 0, the rest on core 1; ``--pin none``:
    nothing pinned (several workers: every process may use every core)."""
    if opts.pin != "split":
        return argv
    return ["taskset", "-c", str(SERVER_CORE if role == "server" else CLIENT_CORE), *argv]


# ------------------------------------------------------------------ publishing


def brief_text(seq: int) -> str:
    # about 200 bytes of brief JSON once ticker adds its fields
    head = f"seq={seq} t={time.monotonic_ns()} "
    return head + "Breaking: the ticker bench"[: max(0, 44 - len(head))]


class Publisher:
    """Publishes through ticker's own path: models.new_brief, then Store.publish (Lua),
    with the client and key layout of the store's URL (one server, Sentinel's primary, a
    Cluster's partitions) and, on a replicated store, ``publish_min_replicas`` as ticker's."""

    def __init__(self, url: str, min_replicas: int = 0) -> None:
        self.settings = Settings(redis_url=url, publish_min_replicas=min_replicas)
        self.client = connect(self.settings, url)
        self.layout = Layout.for_url(url, self.settings.redis_partitions)
        self.store = Store(self.client, self.settings, layout=self.layout)
        self.trigger: Client | None = None  # c-joined: the server publishes on command

    async def publish(self, seq: int) -> None:
        if self.trigger is not None:
            self.trigger.send(f"brief {seq}")
            return
        brief = new_brief({"text": brief_text(seq)}, CHANNEL)
        await self.store.publish(brief, idempotency=None, fingerprint="bench")

    async def burst(self, seq0: int, count: int) -> float:
        t0 = time.monotonic()
        if self.trigger is not None:
            self.trigger.send(f"burst {seq0} {count}")
        else:
            for i in range(count):
                await self.publish(seq0 + i)
        return time.monotonic() - t0

    async def steady(self, seq0: int, count: int, rate: float) -> float:
        t0 = time.monotonic()
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.publish(seq0 + i)
        return time.monotonic() - t0

    async def publish_until_accepted(self, seq: int, scope: str) -> dict[str, Any]:
        """One brief, tried again after every failure (Redis lost, a failover under way,
        503 for want of a replica) with the same idempotency key, as a careful publisher
        would: a try that was written but not answered is replayed, never doubled."""
        brief = new_brief({"text": brief_text(seq)}, CHANNEL)
        first = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                _, replayed = await self.store.publish(
                    brief, idempotency=(scope, f"seq-{seq}"), fingerprint=f"bench-{seq}")
            except (StoreUnavailable, NotReplicated, RedisError, OSError) as exc:
                if time.monotonic() - first > PUBLISH_GIVE_UP_S:
                    return {"seq": seq, "t_first": first, "tries": tries, "error": repr(exc)}
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            return {"seq": seq, "t_first": first, "t_done": time.monotonic(), "tries": tries,
                    "replayed": replayed}

    async def steady_retrying(self, seq0: int, count: int, rate: float,
                              scope: str) -> list[dict[str, Any]]:
        """``count`` briefs at ``rate``/s, each started on time whatever became of the
        ones before (a brief being retried does not hold the next ones back)."""
        t0 = time.monotonic()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.publish_until_accepted(seq0 + i, scope)))
        return list(await asyncio.gather(*tasks))

    async def reset(self, prefill: int) -> None:
        await self.client.flushall()
        await self.prefill(prefill)

    async def prefill(self, count: int) -> None:
        for i in range(count):
            await self.publish(1_000_000 + i)

    async def close(self) -> None:
        await self.client.aclose()


# ------------------------------------------------------------------ one run of one server


@dataclass
class Options:
    burst: int
    rate: float
    seconds: float
    missed: int
    client: Path
    cserver: Path
    work: Path
    redis_url: str
    src_ips: int
    scenarios: set[str]
    pin: str = "split"  # or "none"
    client_n: int = CLIENT_N
    profile: Path | None = None
    profile_scenario: str = "burst"  # or "connect" (the first connect storm), or "steady"
    profile_format: str = "raw"
    profile_rate: int = 100
    redis_pid: int = 0  # the bench's Redis, for its CPU time
    store: str = "single"  # or "sentinel", "cluster" (redis_url is then that deployment's)
    transport: str = "ws"  # or "sse": the load client's subscribers (run names X/sse)


def server_argv(name: str, port: int, opts: Options) -> tuple[list[str], dict[str, str]]:
    py = sys.executable
    env = dict(os.environ)
    base, _, ws = name.partition(":")  # naive:wsproto = the naive server on uvicorn --ws wsproto
    if base == "naive" and ws:
        argv = [py, str(HERE / "naive_server.py"), "--port", str(port),
                "--redis-url", opts.redis_url, "--ws", ws]
    elif base == "ticker" and (name == "ticker" or workers_of(name)):
        # Every load connection comes from one loopback address: lift the per-address limit
        # (docs/security.md), as for clients behind one large NAT.
        # The post-burst scenario POSTs --burst briefs back to back with one API key: no
        # per-key write limit (publish_rate_per_minute, 600 by default) for the bench.
        env.update(REDIS_URL=opts.redis_url, TICKER_LOG_LEVEL="warning", TICKER_HOST="127.0.0.1",
                   TICKER_MAX_CONNECTIONS_PER_ADDRESS="0", TICKER_PUBLISH_RATE_PER_MINUTE="0")
        if opts.store != "single":  # as the publisher: answered once a replica has it
            env["TICKER_PUBLISH_MIN_REPLICAS"] = "1"
        argv = [py, "-m", "ticker", "serve", "--port", str(port)]
        workers = workers_of(name)
        if workers:  # the supervisor and its workers (ticker/supervisor.py)
            argv += ["--workers", str(workers)]
    elif name == "naive":
        argv = [py, str(HERE / "naive_server.py"), "--port", str(port),
                "--redis-url", opts.redis_url]
    elif name in ("floor", "joined"):
        argv = [py, str(HERE / "floor_server.py"), "--port", str(port), "--redis-url",
                opts.redis_url, "--mode", "write" if name == "floor" else "joined"]
    elif name in C_SERVERS:
        argv = [str(opts.cserver), str(port), "joined" if name == "c-joined" else "write"]
    else:
        raise ValueError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    return pin(argv, "server", opts), env


class Deployment:
    """The Redis of one run. ``single``: the bench's own server, shared by every run and
    emptied before each. ``sentinel`` and ``cluster``: a deployment of the test harnesses
    (real valkey-server processes), started for this run alone, so that a failover leaves
    nothing behind for the next run."""

    def __init__(self, kind: str, url: str, handle: Any = None, pid: int = 0) -> None:
        self.kind, self.url, self.handle, self.pid = kind, url, handle, pid

    @property
    def min_replicas(self) -> int:
        return 0 if self.kind == "single" else 1

    async def primary(self, key: str) -> Any:
        """The harness's node that is the primary for ``key`` now."""
        if self.kind == "sentinel":
            return self.handle.node_at(await self.handle.primary_port())
        return await self.handle.primary_for_key(key)

    async def redis_pid(self, key: str) -> int:
        """The process whose CPU a run charges to Redis: the primary of the channel."""
        if self.kind == "single":
            return self.pid
        node = await self.primary(key)
        return node.proc.pid if node.proc is not None else 0

    async def kill(self, node: Any) -> None:
        if self.kind == "sentinel":
            node.kill()
        else:
            await self.handle.kill_primary(node)

    async def wait_failover(self, node: Any) -> None:
        if self.kind == "sentinel":
            await self.handle.failover_to_another(node.port)
        else:
            await self.handle.wait_failover(node)

    async def restart(self, node: Any) -> None:
        """Start the killed node again; return once it is a replica in sync. With one
        replica and ``publish_min_replicas = 1``, no publish is accepted until then (the
        new primary has no replica to count)."""
        if self.kind == "cluster":
            await self.handle.restart(node)
            return
        node.start()  # the sentinels make it a replica of the new primary
        sentinels = self.handle
        await sentinels._until(lambda: sentinels._in_sync(node), f"{node.name} in sync again")


@contextlib.asynccontextmanager
async def deployment(kind: str, single: EmbeddedRedis) -> AsyncIterator[Deployment]:
    """The store of one run (see Deployment). The harnesses live in tests/ (the repo root
    is on sys.path); imported here, so that a run on one server does not need them."""
    if kind == "single":
        pid = single.process.pid if single.process else 0
        yield Deployment(kind, single.url, pid=pid)
    elif kind == "sentinel":
        from tests.sentinel_cluster import SentinelCluster

        sentinels = SentinelCluster(replicas=1)
        try:
            await sentinels.start()
            yield Deployment(kind, sentinels.url, sentinels)
        finally:
            await sentinels.stop()
    elif kind == "cluster":
        from tests.redis_cluster import cluster

        async with cluster(shards=3, replicas_per_shard=1) as shards:
            yield Deployment(kind, shards.url, shards)
    else:
        raise ValueError(f"unknown store {kind!r}; choose from {', '.join(STORES)}")


def label(name: str, store: str) -> str:
    """A run's name in the results: the server, and the store unless it is the one server
    (``ticker@cluster``), so that earlier results and their tables read as before."""
    return name if store == "single" else f"{name}@{store}"


@dataclass
class Run:
    """One server process (restarted by the reconnect scenario) and its load clients."""

    name: str
    n: int
    opts: Options
    procs: Processes
    publisher: Publisher
    logs: Path
    port: int
    server: Proc | None = None
    seq: int = 0  # the next brief's sequence number
    store: Deployment | None = None

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    @property
    def workers(self) -> int:
        return workers_of(self.name) or 1

    def pids(self) -> list[int]:
        """The server's processes: the supervisor and its workers, or the one process."""
        return process_tree(self.pid)

    def worker_pids(self) -> list[int]:
        """The processes that serve connections: the workers, or the one process."""
        return children(self.pid) if workers_of(self.name) and self.workers > 1 else [self.pid]

    async def start_server(self, log: str) -> None:
        argv, env = server_argv(self.name, self.port, self.opts)
        trigger = self.name in C_SERVERS
        self.server = await self.procs.start(self.name, argv, self.logs / log, env=env,
                                             stdin=trigger)
        self.publisher.trigger = Client(self.server) if trigger else None
        # every worker listens (each its own SO_REUSEPORT socket) before any client comes
        await wait_listening(self.port, self.server, sockets=self.workers)
        await wait_quiet(self.pids())

    async def client(self, log: str, *args: str) -> Client | ClientGroup:
        """The load client; above ``client_n`` connections, several processes (each under
        its own open-file limit) that share the N connections and the source addresses."""
        k = -(-self.n // self.opts.client_n)
        shares = [self.n // k + (1 if i < self.n % k else 0) for i in range(k)]
        clients, lat_files = [], []
        sse = self.opts.transport == "sse"
        url = (f"http://127.0.0.1:{self.port}/v1/channels/{CHANNEL}/events" if sse
               else f"ws://127.0.0.1:{self.port}/v1/ws")
        for i, share in enumerate(shares):
            argv = [str(self.opts.client), "--transport", self.opts.transport,
                    "--url", url, "--n", str(share),
                    "--channel", CHANNEL, "--src-ips", str(self.opts.src_ips),
                    "--connect-timeout", str(CONNECT_TIMEOUT),
                    "--seq-base", str(self.seq), *args]
            name = log if k == 1 else log.replace(".log", f"-{i + 1}.log")
            if k > 1:
                lat_files.append(self.logs / name.replace(".log", ".lat"))
                argv += ["--lat-out", str(lat_files[-1])]
            clients.append(Client(await self.procs.start(
                "client", pin(argv, "client", self.opts), self.logs / name, stdin=True,
                stdout=True)))
        return clients[0] if k == 1 else ClientGroup(clients, lat_files)

    async def stop_client(self, client: Client | ClientGroup) -> None:
        for p in client.procs:
            await self.procs.stop(p, timeout=10)


async def commandstats(client: Any) -> dict[str, dict[str, int]]:
    """Redis's INFO commandstats: calls and microseconds per command, cumulative; on a
    Redis Cluster summed over its primaries (INFO alone goes to one node, at random)."""
    if isinstance(client, RedisCluster):
        replies = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        # {node name: its INFO}, or one INFO when the cluster has one primary
        one = any(k.startswith("cmdstat_") for k in replies)
        nodes = [replies] if one else list(replies.values())
    else:
        nodes = [await client.info("commandstats")]
    out: dict[str, dict[str, int]] = {}
    for info in nodes:
        for k, v in info.items():
            mine = out.setdefault(k.removeprefix("cmdstat_"), {"calls": 0, "usec": 0})
            mine["calls"] += int(v["calls"])
            mine["usec"] += int(v["usec"])
    return out


def commands_diff(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                  per: float) -> dict[str, Any]:
    """The commands Redis ran between two INFO commandstats (INFO itself left out), in
    total and divided by ``per`` (briefs, subscribers or seconds). Commands run by a Lua
    script are counted too, under their own names (the publish script's XADD, HSET...)."""
    calls = {k: v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()}
    calls = {k: v for k, v in calls.items() if v and k != "info"}
    # microseconds in each command (a script's time includes its own commands')
    usec = {k: after[k]["usec"] - before.get(k, {}).get("usec", 0) for k in calls}
    return {"calls": calls, "usec": usec, "total": sum(calls.values()), "per": per,
            "per_unit": {k: v / per for k, v in sorted(calls.items())},
            "total_per_unit": sum(calls.values()) / per}


class Window:
    """What the server's processes and Redis spent over one scenario: CPU (ns, every
    thread of every process) and Redis commands."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def __aenter__(self) -> Window:
        self.pids = self.run.pids()
        self.redis_pid = self.run.opts.redis_pid
        self.cmd0 = await commandstats(self.run.publisher.client)
        self.t0 = time.monotonic()
        self.cpu0 = cpu_ns(self.pids)
        self.redis0 = cpu_ns([self.redis_pid]) if self.redis_pid else 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cpu_s = (cpu_ns(self.pids) - self.cpu0) / 1e9
        self.redis_cpu_s = (cpu_ns([self.redis_pid]) - self.redis0) / 1e9 if self.redis_pid else 0.0
        self.wall_s = time.monotonic() - self.t0
        self.cmd1 = await commandstats(self.run.publisher.client)

    def figures(self, per: float, unit: str) -> dict[str, Any]:
        return {"server_cpu_s": self.cpu_s, "redis_cpu_s": self.redis_cpu_s,
                "wall_s": self.wall_s, "unit": unit, "per": per,
                "redis_commands": commands_diff(self.cmd0, self.cmd1, per)}


def tcp_mem_pages() -> int:
    """The machine's TCP socket buffers in pages (/proc/net/sockstat, "TCP: ... mem")."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def balance(run: Run) -> dict[str, Any]:
    """Established connections held by each worker, counted from outside (/proc/<pid>/fd
    and /proc/net/tcp), and the busiest over the average."""
    counts = connections_per_process(run.worker_pids(), run.port)
    values = list(counts.values())
    mean = sum(values) / len(values) if values else 0
    return {"per_worker": values, "total": sum(values),
            "busiest_over_mean": max(values) / mean if mean else None}


async def connect_memory_burst(run: Run, out: dict[str, Any]) -> None:
    """Connect storm, then memory of N idle subscribers, then the burst (one client)."""
    opts, n = run.opts, run.n
    pids = run.pids()
    rss0 = rss_kib(pids)
    tcp_mem0 = tcp_mem_pages()
    out["processes"] = {"server": len(pids), "workers": run.workers}
    expect = opts.burst if "burst" in opts.scenarios else 0
    # generous: the storm, then at least 10,000 deliveries/s
    deadline = CONNECT_TIMEOUT + 60 + n * max(expect, 1) / 10_000
    profiler = await start_profiler(run, "connect")
    ticks0 = cpu_ticks(pids)
    window = Window(run)
    await window.__aenter__()
    # without a burst the client stays connected ("connect") until told to quit, so that
    # memory and balance are measured with every subscriber there
    client = await run.client("client-burst.log", "--mode", "live" if expect else "connect",
                              "--expect", str(expect), "--timeout", str(deadline))
    try:
        try:
            ready = await client.event("ready", CONNECT_TIMEOUT + 30)
        finally:
            await stop_profiler(run, profiler)
        await window.__aexit__()
        out["connect"] = storm(ready)
        # The server's CPU time (user + system) for the storm, per connection.
        out["connect"]["server_cpu_us"] = (
            (cpu_ticks(pids) - ticks0) / os.sysconf("SC_CLK_TCK") * 1e6 / n)
        out["connect"]["window"] = window.figures(n, "subscribe")
        out["balance"] = balance(run)
        await wait_quiet(pids)
        async with Window(run) as idle:
            await asyncio.sleep(1.0)
        out["idle"] = idle.figures(idle.wall_s, "second")
        rss1 = rss_kib(pids)
        out["memory"] = {"rss_idle_kib": rss0, "rss_n_kib": rss1,
                         "per_connection_kib": (rss1 - rss0) / n,
                         # the kernel's TCP memory (every socket, both ends: not in RSS)
                         "tcp_mem_pages": [tcp_mem0, tcp_mem_pages()],
                         "rss_per_process_kib": {str(p): rss_kib(p) for p in pids}}
        if not expect:
            client.send("quit")
            await client.event("report", 30)
            return
        profiler = await start_profiler(run, "burst")
        try:
            async with Window(run) as window:
                out["burst_publish_s"] = await run.publisher.burst(run.seq, expect)
                report = await client.event("report", deadline)
        finally:
            await stop_profiler(run, profiler)
        out["burst"] = summarize_live(report)
        out["burst"]["window"] = window.figures(expect, "brief")
        run.seq += expect
    finally:
        await run.stop_client(client)
        await wait_quiet(run.pids())


async def steady(run: Run, out: dict[str, Any]) -> None:
    opts = run.opts
    count = int(opts.rate * opts.seconds)
    deadline = CONNECT_TIMEOUT + 60 + opts.seconds + run.n * count / 10_000
    client = await run.client("client-steady.log", "--mode", "live", "--expect", str(count),
                              "--timeout", str(deadline))
    try:
        out["steady_connect"] = storm(await client.event("ready", CONNECT_TIMEOUT + 30))
        await wait_quiet(run.pids())
        profiler = await start_profiler(run, "steady")
        try:
            async with Window(run) as window:
                out["steady_publish_s"] = await run.publisher.steady(run.seq, count, opts.rate)
                report = await client.event("report", deadline)
        finally:
            await stop_profiler(run, profiler)
        out["steady"] = summarize_live(report)
        out["steady"]["window"] = window.figures(count, "brief")
        run.seq += count
    finally:
        await run.stop_client(client)
        await wait_quiet(run.pids())


async def reconnect(run: Run, out: dict[str, Any]) -> None:
    """Stop the server, publish while it is down, start it, then all N resume at once."""
    missed = run.opts.missed
    client = await run.client("client-reconnect.log", "--mode", "reconnect", "--expect", "0",
                              "--resume-expect", str(missed),
                              "--timeout", str(2 * CONNECT_TIMEOUT + 120))
    try:
        out["reconnect_connect"] = storm(await client.event("ready", CONNECT_TIMEOUT + 30))
        await wait_quiet(run.pids())
        t_stop = time.monotonic()
        assert run.server is not None
        await run.procs.stop(run.server)  # a supervisor stops its workers, then exits
        down = await client.event("down", 60)
        out["restart_stop_s"] = time.monotonic() - t_stop
        out["down_closes"] = down["closes"]
        for i in range(missed):
            await run.publisher.publish(run.seq + i)
        await run.start_server("server-restarted.log")
        client.send("go")
        out["reconnect"] = (await client.event("report", CONNECT_TIMEOUT + 60))["resume"]
        run.seq += missed
    finally:
        await run.stop_client(client)


# ------------------------------------------------------------------ publishing over HTTP

POST_TIMEOUT = 60.0  # seconds for one POST's answer


async def create_key(run: Run) -> str:
    """``ticker keys create --name bench --channel '*'`` against the run's Redis (as the
    tests do): the API key the post-burst scenario publishes with. Made afresh in every
    run: the publisher's FLUSHALL before each run removes the previous one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TICKER_") and k not in ("REDIS_URL", "PORT")}
    env["REDIS_URL"] = run.opts.redis_url
    argv = pin([sys.executable, "-m", "ticker", "keys", "create", "--name", "bench",
                "--channel", "*"], "client", run.opts)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        raise RuntimeError("ticker keys create did not finish within 60 s") from None
    key = out.decode().strip()
    if proc.returncode != 0 or not key.startswith("tk_"):
        raise RuntimeError(f"ticker keys create failed: {err.decode()[-500:]}")
    return key


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to the server, one request at a time (what a
    CMS posting a burst would do without pipelining). Small on purpose: the runner shares
    its core with the load client, so it should cost little per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConnection:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 10)
        return self

    async def request(self, method: str, path: str, body: bytes,
                      headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        return await asyncio.wait_for(self._response(), POST_TIMEOUT)

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            for _ in range(10_000):  # bounded: a JSON answer is a few chunks at most
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
            await self.open()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = self.reader = None


async def post_briefs(port: int, key: str, seq0: int, count: int,
                      scope: str) -> dict[str, Any]:
    """``count`` briefs POSTed back to back on one keep-alive connection, each with its own
    Idempotency-Key; the round trip of each (request written -> answer read)."""
    conn = await HttpConnection(port).open()
    rtts: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic_ns()
        for i in range(count):
            seq = seq0 + i
            body = json.dumps({"text": brief_text(seq)}).encode()
            start = time.monotonic_ns()
            status, _, answer = await conn.request(
                "POST", f"/v1/channels/{CHANNEL}/briefs", body,
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "Idempotency-Key": f"{scope}-{seq}"})
            rtts.append((time.monotonic_ns() - start) / 1e6)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 201 and len(failures) < 5:
                failures.append({"seq": seq, "status": status, "body": answer[:300].decode(
                    errors="replace")})
        t1 = time.monotonic_ns()
    finally:
        await conn.close()
    ordered = sorted(rtts)

    def pct(q: float) -> float:
        return ordered[int(q * (len(ordered) - 1) + 0.5)] if ordered else -1.0

    return {"t0_ns": t0, "posting_s": (t1 - t0) / 1e9, "count": count, "statuses": statuses,
            "failures": failures,
            "rtt_ms": {"n": len(rtts), "min": ordered[0] if ordered else -1.0, "p50": pct(0.5),
                       "p90": pct(0.9), "p99": pct(0.99), "max": ordered[-1] if ordered else -1.0,
                       "mean": sum(rtts) / len(rtts) if rtts else -1.0}}


async def post_burst(run: Run, out: dict[str, Any]) -> None:
    """N WebSocket subscribers (a new client), then ``--burst`` briefs back to back: on
    ticker POSTed through its HTTP API (one keep-alive connection, an API key, an
    Idempotency-Key each), on a baseline written to Redis directly (the publisher's
    burst). The figure: first POST (or write) -> last delivery at the load client
    (``span_s``), and on ticker the POST round trips."""
    count = run.opts.burst
    via_http = run.name == "ticker" or bool(workers_of(run.name))
    key = await create_key(run) if via_http else None
    deadline = CONNECT_TIMEOUT + 60 + run.n * count / 10_000
    client = await run.client("client-post-burst.log", "--mode", "live", "--expect", str(count),
                              "--timeout", str(deadline))
    try:
        out["post_burst_connect"] = storm(await client.event("ready", CONNECT_TIMEOUT + 30))
        await wait_quiet(run.pids())
        async with Window(run) as window:
            if key is not None:
                posts = await post_briefs(run.port, key, run.seq, count,
                                          f"bench-{run.logs.name}-{time.monotonic_ns()}")
            else:
                t0 = time.monotonic_ns()
                posts = {"t0_ns": t0, "count": count,
                         "posting_s": await run.publisher.burst(run.seq, count)}
            report = await client.event("report", deadline)
        figures = summarize_live(report)
        figures["via"] = "http" if key is not None else "redis"
        last = report["live"]["t_last_recv_ns"]
        figures["span_s"] = (last - posts["t0_ns"]) / 1e9 if last else None
        figures["post"] = posts
        figures["window"] = window.figures(count, "brief")
        out["post_burst"] = figures
        run.seq += count
    finally:
        await run.stop_client(client)
        await wait_quiet(run.pids())


async def run_in_store(name: str, store: Deployment, n: int, rep: int, opts: Options,
                       procs: Processes, publisher: Publisher) -> dict[str, Any]:
    """One run of one server on ``store``: the bench's publisher on the one server, a
    publisher of the deployment's own (its client, its key layout, WAIT) on the others."""
    if store.kind == "single":
        return await run_server(name, n, rep, opts, procs, publisher, store)
    own = Publisher(store.url, min_replicas=store.min_replicas)
    try:
        pid = await store.redis_pid(own.layout.log(CHANNEL))
        opts = replace(opts, redis_url=store.url, redis_pid=pid, store=store.kind)
        return await run_server(name, n, rep, opts, procs, own, store)
    finally:
        await own.close()


async def run_server(name: str, n: int, rep: int, opts: Options, procs: Processes,
                     publisher: Publisher, store: Deployment | None = None) -> dict[str, Any]:
    """Every scenario against one fresh server process; returns the figures."""
    full = label(name, opts.store)  # ticker/sse: ticker, its subscribers on SSE
    name, transport = transport_of(name)
    opts = replace(opts, transport=transport)
    out: dict[str, Any] = {"server": full, "n": n, "rep": rep,
                           "store": opts.store, "load_before": os.getloadavg(),
                           "pin": opts.pin, "transport": transport}
    publisher.trigger = None
    await publisher.reset(0)
    prefill = PREFILL if name not in C_SERVERS else 0
    if prefill:  # what one publish costs Redis alone, before any server reads the stream
        before = await commandstats(publisher.client)
        await publisher.prefill(prefill)
        out["publish_alone"] = commands_diff(before, await commandstats(publisher.client),
                                             prefill)
    logs = opts.work / f"{full.replace('/', '-')}-{n}-{rep}"
    logs.mkdir(parents=True, exist_ok=True)
    run = Run(name, n, opts, procs, publisher, logs, free_port(), store=store)
    try:
        await run.start_server("server.log")
        await connect_memory_burst(run, out)
        if "steady" in opts.scenarios:
            await steady(run, out)
        if "post-burst" in opts.scenarios:
            if transport == "ws":
                await post_burst(run, out)
            else:
                skip(out, "post-burst", "WebSocket subscribers only")
        if "reconnect" in opts.scenarios and name not in C_SERVERS:
            if opts.store == "single":
                await reconnect(run, out)
            else:
                skip(out, "reconnect", "restarts the server, not the store: run on single")
        if "failover" in opts.scenarios:
            if store is not None and store.kind != "single":
                await failover(run, out)  # last: it kills a node of the deployment
            else:
                skip(out, "failover", "needs a replicated store (--store sentinel,cluster)")
    finally:
        publisher.trigger = None
        if run.server is not None:
            await procs.stop(run.server)
        out["load_after"] = os.getloadavg()
    return out


def skip(out: dict[str, Any], scenario: str, why: str) -> None:
    out.setdefault("skipped", {})[scenario] = why
    print(f"bench:   {scenario} skipped for {out['server']}: {why}", file=sys.stderr, flush=True)


class Observer:
    """One more subscriber, in this process, that notes when each brief first arrives
    (time.monotonic(), the clock of the kill): the load client counts losses and
    duplicates over N, but reports latencies, not which brief came when."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.closed: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, port: int) -> Observer:
        self.ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/ws",
                                           subprotocols=[websockets.Subprotocol("ticker.v1")])
        await self.ws.send(json.dumps({"op": "subscribe", "channel": CHANNEL}))
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message.get("type") != "brief":
                    continue
                found = re.match(r"seq=(\d+) ", message["brief"]["text"])
                if found:
                    self.arrivals.setdefault(int(found[1]), time.monotonic())
        except websockets.ConnectionClosed as exc:
            self.closed = repr(exc)
        else:
            self.closed = "closed"

    async def close(self) -> None:
        if self._task is None:
            return  # never opened
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.ws.close()


async def failover(run: Run, out: dict[str, Any]) -> None:
    """N subscribers, briefs at FAILOVER_RATE/s (each retried until accepted), and the
    primary holding the channel SIGKILLed FAILOVER_BEFORE_S in; then, once the harness
    sees the failover, the killed node restarted (it comes back as a replica: with one
    replica and publish_min_replicas = 1 nothing is accepted without it).

    The figure: from the kill to the arrival, at a subscriber, of the first brief whose
    first try began after the kill. Also: when the harness saw the new primary and the
    replica back in sync, and the losses and duplicates over every subscriber."""
    store, publisher = run.store, run.publisher
    assert store is not None
    count = int(FAILOVER_RATE * (FAILOVER_BEFORE_S + FAILOVER_AFTER_S))
    deadline = CONNECT_TIMEOUT + 2 * PUBLISH_GIVE_UP_S + run.n * count / 10_000
    client = await run.client("client-failover.log", "--mode", "live", "--expect", str(count),
                              "--timeout", str(deadline),
                              "--idle-timeout", str(PUBLISH_GIVE_UP_S + 30))
    observer = Observer()
    publishing: asyncio.Task[list[dict[str, Any]]] | None = None
    try:
        await observer.open(run.port)
        out["failover_connect"] = storm(await client.event("ready", CONNECT_TIMEOUT + 30))
        await wait_quiet(run.pids())
        node = await store.primary(publisher.layout.log(CHANNEL))
        scope = f"{run.logs.name}-{time.monotonic_ns()}"
        publishing = asyncio.create_task(
            publisher.steady_retrying(run.seq, count, FAILOVER_RATE, scope))
        await asyncio.sleep(FAILOVER_BEFORE_S)
        t_kill = time.monotonic()
        await store.kill(node)
        await store.wait_failover(node)
        t_failover = time.monotonic()
        await store.restart(node)
        t_back = time.monotonic()
        tries = await publishing
        report = await client.event("report", deadline)
    finally:
        if publishing is not None and not publishing.done():
            publishing.cancel()  # a failed run: its briefs are not tried on into the next
        await observer.close()
        await run.stop_client(client)
    out["failover"] = failover_figures(tries, observer, t_kill, t_failover, t_back)
    out["failover"]["subscribers"] = summarize_live(report)
    run.seq += count


def failover_figures(tries: list[dict[str, Any]], observer: Observer, t_kill: float,
                     t_failover: float, t_back: float) -> dict[str, Any]:
    after = [t for t in tries if t["t_first"] > t_kill]
    first = after[0]["seq"] if after else None
    arrived = observer.arrivals.get(first) if first is not None else None
    accepted = [t for t in tries if "error" not in t]
    answered = after[0].get("t_done") if after else None
    return {
        "first_new_delivery_s": arrived - t_kill if arrived is not None else None,
        # the publisher's view: its answer comes only once a replica has the brief, which
        # may be long after the subscribers got it (ticker delivers what the primary has)
        "first_new_accepted_s": answered - t_kill if answered is not None else None,
        "failover_seen_s": t_failover - t_kill,
        "replica_back_s": t_back - t_kill,
        "first_new_seq": first,
        "published": len(tries), "accepted": len(accepted),
        "not_published": [t["seq"] for t in tries if "error" in t],
        "retried": sum(1 for t in accepted if t["tries"] > 1),
        "replayed": sum(1 for t in accepted if t["replayed"]),
        "longest_publish_s": max((t["t_done"] - t["t_first"] for t in accepted), default=None),
        "observer_missing": sorted({t["seq"] for t in accepted} - set(observer.arrivals)),
        "observer_closed": observer.closed,
    }


def storm(ready: dict[str, Any]) -> dict[str, Any]:
    return {"all_ready_s": ready["connect_s"], "ready": ready["ready"], "failed": ready["failed"],
            "retries": ready["retries"], "per_connection": ready["connect"]}


def summarize_live(report: dict[str, Any]) -> dict[str, Any]:
    live = report["live"]
    keep = ("deliveries", "missing", "ready_at_start", "missing_on_ready", "closed_during",
            "duplicates", "unexpected", "timed_out", "elapsed_s", "deliveries_per_s",
            "latency_ms", "client_cpu_s", "client_sys_s")
    figures = {k: live[k] for k in keep if k in live}
    figures["expected"] = live["expected_deliveries"]
    figures.update({k: report[k] for k in ("frames", "reads", "bytes", "closes", "error")})
    return figures


async def start_profiler(run: Run, scenario: str) -> Proc | None:
    """py-spy on ticker (only) during one scenario, if asked for (--profile)."""
    if run.opts.profile is None or run.name != "ticker" or scenario != run.opts.profile_scenario:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    p = await run.procs.start(
        "py-spy", pin([py_spy, "record", "--pid", str(run.pid),
                       "--rate", str(run.opts.profile_rate), "--format", run.opts.profile_format,
                       "--nonblocking",
                       "--output", str(profile_path(run.opts))], "client", run.opts),
        run.logs / "py-spy.log")
    await asyncio.sleep(1.0)  # py-spy attaches
    return p


def profile_path(opts: Options) -> Path:
    """--profile's file; for an SSE run, the same name with -sse (both transports in one
    invocation would otherwise write one file twice)."""
    assert opts.profile is not None
    if opts.transport == "ws":
        return opts.profile
    return opts.profile.with_name(f"{opts.profile.stem}-{opts.transport}{opts.profile.suffix}")


async def stop_profiler(run: Run, p: Proc | None) -> None:
    if p is not None:
        await run.procs.stop(p, sig=signal.SIGINT, timeout=30)


# ------------------------------------------------------------------ the machine


async def cpu_busy(seconds: float = 3.0) -> float:
    """Cores busy over the next few seconds, from /proc/stat (the bench itself idle)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values[:8]) - idle, sum(values[:8])

    busy0, total0 = sample()
    await asyncio.sleep(seconds)
    busy1, total1 = sample()
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


async def wait_for_quiet_machine(max_load: float, wait: float) -> dict[str, Any]:
    """Wait (at most ``wait`` s) until the 1-minute load average is below ``max_load``, or,
    since this benchmark's own previous run still weighs on that average for a minute, until
    the cores other processes keep busy, measured now, are below half of ``max_load``."""
    start = time.monotonic()
    first = os.getloadavg()
    busy = await cpu_busy()
    while time.monotonic() - start < wait:
        if os.getloadavg()[0] < max_load or busy < max_load / 2:
            break
        print(f"bench: machine busy (load {os.getloadavg()[0]:.2f}, {busy:.2f} cores in use); "
              f"waiting ({time.monotonic() - start:.0f}/{wait:.0f} s)", file=sys.stderr, flush=True)
        await asyncio.sleep(min(12.0, max(0.0, wait - (time.monotonic() - start))))
        busy = await cpu_busy()
    last = os.getloadavg()
    loaded = last[0] >= max_load and busy >= max_load / 2
    return {"load_before_wait": first, "load": last, "busy_cores": round(busy, 2),
            "waited_s": round(time.monotonic() - start, 1), "loaded": loaded}


@contextlib.asynccontextmanager
async def redis_server(work: Path, pinned: bool = True) -> AsyncIterator[EmbeddedRedis]:
    conf = ROOT / "config" / "redis.conf"
    server = EmbeddedRedis(work / "redis", conf=conf if conf.exists() else None)
    await asyncio.to_thread(server.start)
    try:
        if server.process is not None and pinned:
            os.sched_setaffinity(server.process.pid, {CLIENT_CORE})
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()


def versions(redis_version: str) -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "kernel": platform.release(),
           "redis_server": redis_version}
    for pkg in ("uvicorn", "starlette", "websockets", "redis", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(Exception):
            out[pkg] = version(pkg)
    with contextlib.suppress(Exception):
        out["gcc"] = _run(["gcc", "-dumpfullversion"])
    with contextlib.suppress(Exception):
        out["ticker_commit"] = _run(["git", "rev-parse", "--short", "HEAD"])
        out["ticker_dirty"] = "yes" if _run(["git", "status", "--porcelain", "ticker"]) else "no"
    # What was measured, even with uncommitted changes: a digest of ticker/'s sources.
    digest = hashlib.sha256()
    for path in sorted((ROOT / "ticker").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".lua"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    out["ticker_sources_sha256"] = digest.hexdigest()[:16]
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    out["cores"] = str(os.cpu_count())
    out["server_core"], out["client_core"] = str(SERVER_CORE), str(CLIENT_CORE)
    out["port_range"] = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    out["nofile"] = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return out


# ------------------------------------------------------------------ the whole benchmark


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.pin == "split":
        os.sched_setaffinity(0, {CLIENT_CORE})  # this runner, the publisher and Redis
    # SIGTERM cancels the run, so that every finally below stops what it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    procs = Processes()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()
                                        if k != "out_path"},
                               "machine": {"checks": []}, "runs": []}
    if args.resume and args.out_path.exists():
        # go on with a run that was stopped: keep what it measured, do only the rest
        before = json.loads(args.out_path.read_text())
        results["runs"] = [r for r in before["runs"] if "error" not in r]
        results["machine"]["checks"] = before.get("machine", {}).get("checks", [])
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        work = Path(tmp)
        build_dir = Path(args.build_dir) if args.build_dir else HERE / "build"
        client = await asyncio.to_thread(build_client, build_dir)
        try:
            async with redis_server(work, pinned=args.pin == "split") as redis:
                probe = aioredis.Redis.from_url(redis.url)
                info = await probe.info("server")
                await probe.aclose()
                results["versions"] = versions(
                    str(info.get("valkey_version") or info.get("redis_version")))
                publisher = Publisher(redis.url)
                opts = Options(burst=args.burst, rate=args.rate, seconds=args.seconds,
                               missed=args.missed, client=client, cserver=build_dir / "cserver",
                               work=work, redis_url=redis.url, src_ips=args.src_ips,
                               scenarios=set(args.scenarios.split(",")), pin=args.pin,
                               client_n=args.client_n,
                               redis_pid=redis.process.pid if redis.process else 0,
                               profile=Path(args.profile).resolve() if args.profile else None,
                               profile_scenario=args.profile_scenario,
                               profile_format=args.profile_format)
                try:
                    await measure(args, opts, procs, publisher, results, redis)
                finally:
                    await publisher.close()
        finally:
            await procs.stop_all()
    checks = results["machine"]["checks"]
    results["machine"]["loaded"] = any(c["loaded"] for c in checks) if checks else None
    results["machine"]["load_at_end"] = os.getloadavg()
    results["summary"] = summarize([r for r in results["runs"] if "error" not in r])
    results["stores_summary"] = stores_summary([r for r in results["runs"] if "error" not in r])
    results["failover_summary"] = failover_summary(
        [r for r in results["runs"] if "error" not in r])
    return results


def rotate(items: list[str], k: int) -> list[str]:
    return items[k % len(items):] + items[: k % len(items)]


def runs_of(servers: list[str], stores: list[str], rep: int) -> list[tuple[str, str]]:
    """(server, store) of one repetition, in an order rotated with ``rep`` so that no
    store and no server always comes first. Only ticker runs on sentinel and cluster: the
    baselines know the one-server key layout only."""
    return [(name, store) for store in rotate(stores, rep) for name in rotate(servers, rep)
            if store == "single" or transport_of(name)[0].partition(":")[0] == "ticker"]


async def measure(args: argparse.Namespace, opts: Options, procs: Processes,
                  publisher: Publisher, results: dict[str, Any], redis: EmbeddedRedis) -> None:
    servers, stores = args.servers.split(","), args.store.split(",")
    for n in [int(x) for x in args.n.split(",")]:
        for rep in range(args.runs):
            done = {(r["server"], r["n"], r["rep"]) for r in results["runs"]}
            order = [(name, store) for name, store in runs_of(servers, stores, rep)
                     if (label(name, store), n, rep) not in done]
            if not order:
                continue
            if args.wait_load > 0:
                check = await wait_for_quiet_machine(args.max_load, args.wait_load)
                check.update(n=n, rep=rep)
                results["machine"]["checks"].append(check)
            for name, store in order:
                print(f"bench: N={n} run {rep + 1}/{args.runs} {label(name, store)} "
                      f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
                try:
                    async with deployment(store, redis) as where:
                        figures = await run_in_store(name, where, n, rep, opts, procs,
                                                     publisher)
                except Exception as exc:  # record it and go on with the other servers
                    figures = {"server": label(name, store), "n": n, "rep": rep,
                               "store": store, "error": repr(exc)}
                    print(f"bench:   FAILED: {exc!r}", file=sys.stderr, flush=True)
                else:
                    print("bench:   " + one_line(figures), file=sys.stderr, flush=True)
                    if "failover" in figures:
                        print("bench:   " + failover_line(figures["failover"]),
                              file=sys.stderr, flush=True)
                results["runs"].append(figures)
                save(results, args.out_path)  # so far: a long run that is stopped keeps them


# ------------------------------------------------------------------ stores side by side

STORE_METRICS = ("burst_per_s", "steady_p50_ms", "steady_p99_ms", "steady_max_ms",
                 "connect_s", "memory_kib", "redis_per_brief_steady", "steady_lost",
                 "burst_lost", "duplicates")


def stores_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server on sentinel and cluster: the median of each figure and of its ratios to
    the same server on the one server in the same repetition (report.py's ratios are to
    the baselines; these are to ``single``)."""
    out: dict[str, Any] = {}
    for r in runs:
        if r.get("store", "single") == "single":
            continue
        base = r["server"].partition("@")[0]
        key = f"{r['n']}/{r['server']}"
        if key in out:
            continue
        mine = [o for o in runs if o["n"] == r["n"] and o["server"] == r["server"]]
        entry: dict[str, Any] = {}
        for name in STORE_METRICS:
            values, ratios = [], []
            for o in mine:
                v = metric(o, name)
                if v is None:
                    continue
                values.append(v)
                single = [s for s in runs if s["n"] == o["n"] and s["server"] == base
                          and s["rep"] == o["rep"]]
                b = metric(single[0], name) if single else None
                if b:
                    ratios.append(v / b)
            if values:
                entry[name] = {"median": statistics.median(values), "max": max(values),
                               "runs": len(values),
                               "ratio_to_single": statistics.median(ratios) if ratios else None}
        out[key] = entry
    return out


def stores_table(summary: dict[str, Any]) -> str:
    """Markdown: medians on sentinel and cluster, x the median ratio to single."""
    formats = {"burst_per_s": "{:,.0f}", "steady_p50_ms": "{:.1f}", "steady_p99_ms": "{:.1f}",
               "steady_max_ms": "{:.0f}", "connect_s": "{:.2f}", "memory_kib": "{:.2f}",
               "redis_per_brief_steady": "{:.1f}"}
    lines = ["| N | run | " + " | ".join(formats) + " | lost, dup |",
             "| --- | --- | " + " | ".join("---" for _ in formats) + " | --- |"]
    for key, e in summary.items():
        n, server = key.split("/", 1)
        cells = []
        for name, fmt in formats.items():
            m = e.get(name)
            ratio = m and m["ratio_to_single"]
            cells.append("n/a" if not m else fmt.format(m["median"])
                         + (f" x{ratio:.2f}" if ratio else ""))
        # worst run of each, as in report.table: a loss in any run is a loss
        lost = sum(int(e.get(k, {}).get("max", 0)) for k in ("burst_lost", "steady_lost"))
        dup = int(e.get("duplicates", {}).get("max", 0))
        lines.append(f"| {int(n):,} | {server} | " + " | ".join(cells) + f" | {lost}, {dup} |")
    return "\n".join(lines)


def failover_line(f: dict[str, Any]) -> str:
    sub = f["subscribers"]
    first = f["first_new_delivery_s"]
    return (f"failover: first new brief delivered {first:.2f}s after the kill "
            if first is not None else "failover: no new brief delivered, ") + (
        f"(accepted {f['first_new_accepted_s'] or 0:.2f}s, new primary seen "
        f"{f['failover_seen_s']:.2f}s, replica back {f['replica_back_s']:.2f}s)"
        f", subscribers missing {sub['missing']} dup {sub['duplicates']} closed "
        f"{sub['closed_during']}, not published {len(f['not_published'])}, "
        f"longest publish {f['longest_publish_s'] or 0:.2f}s")


def failover_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server, store and N: medians (min, max) of the failover times over the runs,
    and the losses and duplicates summed over them."""
    out: dict[str, Any] = {}
    for key in sorted({f"{r['n']}/{r['server']}" for r in runs if "failover" in r}):
        mine = [r["failover"] for r in runs
                if "failover" in r and f"{r['n']}/{r['server']}" == key]
        entry: dict[str, Any] = {"runs": len(mine)}
        for name in ("first_new_delivery_s", "first_new_accepted_s", "failover_seen_s",
                     "replica_back_s", "longest_publish_s"):
            values = [f[name] for f in mine if f[name] is not None]
            entry[name] = ({"median": statistics.median(values), "min": min(values),
                            "max": max(values), "runs": len(values)} if values else None)
        entry["missing"] = sum(f["subscribers"]["missing"] for f in mine)
        entry["duplicates"] = sum(f["subscribers"]["duplicates"] for f in mine)
        entry["closed_during"] = sum(f["subscribers"]["closed_during"] for f in mine)
        entry["not_published"] = sum(len(f["not_published"]) for f in mine)
        entry["replayed"] = sum(f["replayed"] for f in mine)
        entry["no_new_delivery"] = sum(1 for f in mine if f["first_new_delivery_s"] is None)
        out[key] = entry
    return out


def failover_table(summary: dict[str, Any]) -> str:
    lines = ["| N | run | runs | kill -> first new brief delivered, s | its publish "
             "accepted, s | kill -> new primary seen, s | kill -> restarted node in sync, s "
             "| longest publish, s | missing, dup (all subscribers, all runs) | closed "
             "| not published | replayed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(m: dict[str, Any] | None) -> str:
        return "n/a" if not m else f"{m['median']:.2f} ({m['min']:.2f}-{m['max']:.2f})"

    for key, e in summary.items():
        n, server = key.split("/")
        lines.append(
            f"| {int(n):,} | {server} | {e['runs']} | {cell(e['first_new_delivery_s'])} "
            f"| {cell(e['first_new_accepted_s'])} "
            f"| {cell(e['failover_seen_s'])} | {cell(e['replica_back_s'])} "
            f"| {cell(e['longest_publish_s'])} | {e['missing']}, {e['duplicates']} "
            f"| {e['closed_during']} | {e['not_published']} | {e['replayed']} |")
    return "\n".join(lines)


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def print_transports(summary: dict[str, Any]) -> None:
    """The tables of SSE against WebSocket and of the post-burst scenario, if any."""
    sse = transport_table(summary)
    if sse:
        print("\nSSE against WebSocket (median (min-max) of each; the median ratio SSE/WS of "
              "the same repetition, issue 12's target in brackets):\n")
        print(sse)
    posts = post_burst_table(summary)
    if posts:
        print("\nPost-burst: ticker's briefs POSTed (one keep-alive connection), a baseline's "
              "written to Redis; WebSocket subscribers (median (min-max); ratio: median of "
              "the same repetition's):\n")
        print(posts)


def print_stores(runs: list[dict[str, Any]]) -> None:
    """The tables of the replicated stores, if the runs had any."""
    stores = stores_summary(runs)
    if stores:
        print("\nOn Sentinel and Cluster (median, x the median ratio to single, same repetition):\n")
        print(stores_table(stores))
    failovers = failover_summary(runs)
    if failovers:
        print("\nFailover (median (min-max) over the runs; losses summed):\n")
        print(failover_table(failovers))


def main() -> int:
    parser = argparse.ArgumentParser(
        description="ticker's fan-out benchmark (see docs/performance.md)")
    parser.add_argument("--n", default="1000,10000", help="subscriber counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (figures are medians)")
    parser.add_argument("--servers",
                        help=f"comma-separated, from {', '.join(SERVERS)}, and naive:WS for "
                        "the naive server on another uvicorn --ws (websockets, wsproto); "
                        "ticker:w4 is ticker serve --workers 4. Default: ticker,naive,floor,"
                        "joined; ticker alone when --store names more than single")
    parser.add_argument("--store", default="single",
                        help=f"comma-separated, from {', '.join(STORES)}: the Redis ticker "
                        "runs on (sentinel: a primary and a replica; cluster: 3 shards of a "
                        "primary and a replica; both with publish_min_replicas = 1), each "
                        "store's runs in the same invocation. Baselines run on single only")
    parser.add_argument("--workers", help="comma-separated worker counts: each 'ticker' in "
                        "--servers becomes ticker:wN (ticker serve --workers N) for each N")
    parser.add_argument("--pin", choices=["auto", "split", "none"], default="auto",
                        help="split: the server on core 0, the rest on core 1; none: no "
                        "pinning; auto (default): none if a server has several workers, "
                        "else split. The same for every server of the run")
    parser.add_argument("--client-n", type=int, default=CLIENT_N,
                        help="connections per load client process (above: several processes)")
    parser.add_argument("--scenarios", default="",
                        help="burst,steady,reconnect,failover,post-burst (connect storm and "
                        "memory always run; reconnect on single only, failover on sentinel "
                        "and cluster only; post-burst: --burst briefs POSTed to ticker's "
                        "HTTP API, written to Redis for a baseline, WebSocket subscribers "
                        "only). Default burst,steady,reconnect; with --smoke also post-burst")
    parser.add_argument("--transport",
                        help="ws,sse: the subscribers of ticker's runs, each transport a run "
                        "of its own in the same repetition (ticker/sse: Server-Sent Events, "
                        "GET /v1/channels/bench/events); the baselines serve WebSocket only. "
                        "Default ws; with --smoke ws,sse")
    parser.add_argument("--burst", type=int, default=200, help="briefs in the burst")
    parser.add_argument("--rate", type=float, default=10.0, help="briefs per second, steady")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the steady run")
    parser.add_argument("--missed", type=int, default=5, help="briefs published while restarting")
    parser.add_argument("--src-ips", type=int, default=16,
                        help="client source addresses 127.0.0.2.. (ephemeral ports per address)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--wait-load", type=float, default=600.0,
                        help="before each run, seconds to wait for a quiet machine (0: don't)")
    parser.add_argument("--profile", help="py-spy profile of ticker, to this file")
    parser.add_argument("--profile-scenario", default="burst",
                        choices=["burst", "connect", "steady"],
                        help="profile the burst, the first connect storm, or the steady run")
    parser.add_argument("--profile-format", default="raw", choices=["raw", "flamegraph",
                        "speedscope"], help="raw: collapsed stacks (bench/profile_summary.py)")
    parser.add_argument("--build-dir", help="where to compile the C programs (bench/build)")
    parser.add_argument("--out", help="results JSON (default bench/results/<time>.json)")
    parser.add_argument("--resume", action="store_true",
                        help="with --out: keep the runs already in that file, do the others")
    parser.add_argument("--smoke", action="store_true",
                        help="N=200, 5-brief burst, 1 s steady, one run, no load wait")
    parser.add_argument("--report", metavar="RESULTS",
                        help="print the table of a results file (also a partial one) and exit")
    import http_bench  # --scenarios http: wrk against the HTTP endpoints, on its own

    http_bench.add_arguments(parser)
    args = parser.parse_args()
    if "http" in args.scenarios.split(","):
        return http_bench.main(args)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        # one run's results, or several sets of them ({"sets": {name: results}})
        for name, one in (saved["sets"].items() if "sets" in saved else [("", saved)]):
            if name:
                print(f"\n{name}: scripts/bench {one.get('command', '')}\n")
            runs = [r for r in one["runs"] if "error" not in r]
            summary = summarize(runs)
            print(table(summary))
            if any(":w" in key for key in summary):
                print()
                print(workers_table(summary))
            print_transports(summary)
            print_stores(runs)
        return 0
    if args.smoke:
        args.n, args.runs, args.burst, args.seconds, args.missed = "200", 1, 5, 1.0, 3
        args.wait_load = 0
        args.scenarios = args.scenarios or "burst,steady,reconnect,post-burst"
        args.transport = args.transport or "ws,sse"
    args.scenarios = args.scenarios or "burst,steady,reconnect"
    args.transport = args.transport or "ws"
    unknown = set(args.transport.split(",")) - {"ws", "sse"}
    if unknown:
        parser.error(f"unknown transport {', '.join(sorted(unknown))}; choose from ws, sse")
    unknown = set(args.store.split(",")) - set(STORES)
    if unknown:
        parser.error(f"unknown store {', '.join(sorted(unknown))}; choose from {', '.join(STORES)}")
    if args.servers is None:
        args.servers = "ticker" if args.store != "single" else "ticker,naive,floor,joined"
    if args.workers:
        counts = [int(x) for x in args.workers.split(",")]
        servers = []
        for name in args.servers.split(","):
            servers += [f"ticker:w{c}" for c in counts] if name == "ticker" else [name]
        args.servers = ",".join(servers)
    # ticker/sse: ticker's runs again with SSE subscribers (the baselines serve WebSocket only)
    transports, servers = args.transport.split(","), []
    for name in args.servers.split(","):
        ticker = name.partition(":")[0] == "ticker"
        servers += [name if t == "ws" else f"{name}/{t}" for t in transports
                    if t == "ws" or ticker]
        if not ticker and "ws" not in transports:
            servers.append(name)
    args.servers = ",".join(servers)
    if args.pin == "auto":
        several = any((workers_of(s) or 1) > 1 for s in args.servers.split(","))
        args.pin = "none" if several else "split"
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for n in (int(x) for x in args.n.split(",")):
        for name in args.servers.split(","):
            # each process needs one descriptor per connection plus its own; several
            # workers share N (the kernel's hash: allow a quarter above the average), and
            # the load client is split into processes of --client-n connections
            share = n if (workers_of(name) or 1) == 1 else n * 1.25 / (workers_of(name) or 1)
            if share + 100 > limit or args.client_n + 100 > limit:
                print(f"bench: N={n} needs more open files than the limit ({limit}) allows "
                      f"in one process of {name}; use a smaller N, or ticker:wK with more "
                      "workers.", file=sys.stderr)
                return 2
    if shutil.which("gcc") is None:
        print("bench: gcc is needed to build the load client (apt-get install gcc).",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    args.out_path = out
    try:
        results = asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"bench: stopped; the runs finished so far are in {out}", file=sys.stderr)
        return 130
    save(results, out)
    if results["machine"]["loaded"]:
        print("TAKEN ON A LOADED MACHINE: other processes kept the cores busy (see machine).")
    print(table(results["summary"]))
    if any(":w" in key for key in results["summary"]):
        print()
        print(workers_table(results["summary"]))
    print_transports(results["summary"])
    print_stores([r for r in results["runs"] if "error" not in r])
    failed = [r for r in results["runs"] if "error" in r]
    for r in failed:
        print(f"FAILED: N={r['n']} run {r['rep'] + 1} {r['server']}: {r['error']}")
    print(f"\nmachine: {results['machine']}\nresults: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
