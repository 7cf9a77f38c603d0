"""The attacks of issue 9 ("Hardening for the open internet") against ``ticker serve`` as
a user runs it: a real process, real sockets, nothing mocked (tests/attackers.py).

Every test runs a legitimate probe during its attack (a WebSocket subscriber and a
publisher posting a brief every 100 ms, from 127.0.0.1) and asserts that every publish
was answered 201 and every brief delivered, in order, none later than 2 s (a liveness
bound: deliveries normally take about 5 ms); that the server's RSS stayed within 64 MiB
of what it was after warm-up, during the attack and after; that the attackers got the
answer the contract gives (a status, or a close code and a reason); and that the
attackers' connections are gone from the server afterwards. Attackers connect from
127.0.0.2 and up: never the trusted proxy 127.0.0.1, never the probe's address.
bench/attacks.py runs the same attacks for longer and prints figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.attackers import (
    ATTACKERS,
    FLOODS,
    HEAD_ATTACKS,
    LEGIT,
    Conn,
    Probe,
    RawWs,
    RssSampler,
    Tally,
    TickerServe,
    big_head,
    churn,
    churn_on,
    close_all,
    close_everything,
    drip,
    drip_heads,
    frame_flood,
    hold_subscriptions,
    idle,
    idle_after_request,
    json_frames,
    outcome,
    poll,
    request_head,
    sources,
)
from ticker.embedded import EmbeddedRedis

pytestmark = pytest.mark.attacks

MEMORY_BOUND = 64.0  # MiB over the RSS after warm-up, during and after an attack
WARMUP = 1.0  # seconds of the probe alone before the baseline is taken
GONE_WITHIN = 5.0  # seconds for the server to let go of connections it ended
# Descriptors over the count after warm-up: the two Redis pools may grow meanwhile (keyed
# requests look their key up), to redis_pool_size + redis_read_pool_size (64 + 16) at most.
FD_SLACK = 64 + 16 + 8
SLACK = 4.0  # seconds over a timeout before a connection not closed is a failure (2 shared cores)
TIMEOUT = 1.0  # every timeout of the slow-connection tests (TICKER_*_TIMEOUT)

Serve = Callable[..., Awaitable[TickerServe]]


@pytest.fixture
async def serve(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Serve]:
    """Start ``ticker serve`` with some settings (``await serve(idle_timeout=1)``); every
    process started is ended when the test ends."""
    servers: list[TickerServe] = []

    async def start(open_files: int | None = None, **settings: object) -> TickerServe:
        log = tmp_path / f"serve-{len(servers)}.log"
        server = TickerServe(redis_server.url, log, open_files, **settings)
        servers.append(server)
        return await server.start()

    try:
        yield start
    finally:
        await close_everything()
        for server in servers:
            server.stop()


@dataclass
class Watch:
    server: TickerServe
    probe: Probe
    baseline: float  # RSS in MiB after warm-up
    sampler: RssSampler
    legit_peers: int  # the server's connections from the probe's address
    fds: int  # the server's open descriptors after warm-up


@contextlib.asynccontextmanager
async def watched(server: TickerServe) -> AsyncIterator[Watch]:
    """The legitimate probe on a channel of its own, and the server's RSS sampled, for the
    block's duration; on the way out the probe must have seen nothing wrong and the RSS
    must have stayed within the bound."""
    key = await server.create_key()
    probe = await Probe(server, key, f"probe-{uuid.uuid4().hex[:8]}").start()
    try:
        await asyncio.sleep(WARMUP)
        baseline = server.rss_mib()
        legit, fds = server.peers()[LEGIT], server.open_fds()
        async with RssSampler(server) as sampler:
            yield Watch(server, probe, baseline, sampler, legit, fds)
    finally:
        await probe.stop()
    problems = probe.problems()
    assert not problems, f"the legitimate clients suffered: {problems}\n{server.log_tail()}"
    assert sampler.peak - baseline < MEMORY_BOUND, (
        f"RSS went from {baseline:.0f} MiB to a peak of {sampler.peak:.0f} MiB during the attack"
    )


async def assert_attackers_gone(watch: Watch) -> None:
    server = watch.server
    gone = await poll(lambda: server.attacker_connections() == 0, GONE_WITHIN)
    assert gone, f"attackers' connections still open on the server: {server.peers()}"
    # Descriptors too: a socket closed but not released would hold one (a few hundred
    # attacker connections stand far above the pools' growth).
    released = await poll(lambda: server.open_fds() <= watch.fds + FD_SLACK, GONE_WITHIN)
    assert released, f"{server.open_fds()} descriptors open after the attack, {watch.fds} before"
    after = server.rss_mib()
    assert after - watch.baseline < MEMORY_BOUND, (
        f"RSS {after:.0f} MiB after the attack, {watch.baseline:.0f} MiB before"
    )


def problem_of(conn: Conn, status: int) -> str | None:
    """Why the last answer on ``conn`` is not a problem+json ``status`` followed by the
    end of the connection; None when it is."""
    answers = conn.answers()
    if not answers or answers[-1].status != status:
        return f"answered {[a.status for a in answers] or 'nothing'} ({outcome(conn)}), not {status}"
    body = answers[-1].problem()
    if body is None or body.get("status") != status or not body.get("title"):
        return f"{status} without an RFC 9457 problem body: {answers[-1].headers} {answers[-1].body[:200]!r}"
    if not conn.closed.is_set():
        return f"{status}, but the connection was left open"
    return None


# 1. Request heads


async def test_oversized_request_heads_are_answered_431_and_closed(serve: Serve) -> None:
    """Endless 4 KB header lines, one 8 MB header, 100,000 small headers: 431 and the
    connection closed, with memory bounded; on a first request, on a kept-alive one, and
    on WebSocket upgrades (one head over the size limit, one over the count limit)."""
    server = await serve()  # the defaults: max_head_bytes 32768, max_header_count 100
    async with watched(server) as watch:
        failures, conns = [], []
        for n, attack in enumerate(HEAD_ATTACKS):
            conn = await big_head(server.port, ATTACKERS[n % 4], attack)
            conns.append(conn)
            expected = [200, 431] if attack.startswith("keepalive-") else [431]
            statuses = [a.status for a in conn.answers()]
            why = problem_of(conn, 431)
            if statuses != expected or why:
                failures.append(
                    f"{attack}: {why or statuses}, after {conn.sent / 1024:.0f} KiB sent"
                )
            await asyncio.sleep(0.2)
        assert not failures, "\n".join(failures)
        await assert_attackers_gone(watch)
        await close_all(conns)


# 2. Subscriptions


async def test_subscription_churn_is_closed_by_the_message_rate_limit(serve: Serve) -> None:
    """subscribe X / unsubscribe X for fresh junk names, pipelined, on one WebSocket and
    then on three at once: each is closed with 1008 and a reason (ws_message_burst 100,
    ws_message_rate 10/s) while publishes and deliveries go on."""
    server = await serve()
    async with watched(server) as watch:
        tag = uuid.uuid4().hex[:8]
        first = await churn(server.port, ATTACKERS[0], 10.0, f"{tag}-a")
        three = await asyncio.gather(*(
            churn(server.port, source, 10.0, f"{tag}-{n}") for n, source in enumerate(ATTACKERS[1:4])
        ))
        for ws in (first, *three):
            await ws.wait_close(3.0)
        got = [(ws.outcome(), ws.close_reason, sum(ws.messages.values())) for ws in (first, *three)]
        assert all(o == "101+1008" and reason for o, reason, _ in got), got
        assert await poll(lambda: all(ws.conn.closed.is_set() for ws in (first, *three)), GONE_WITHIN), \
            "closed with 1008, but the TCP connection stayed open"
        await assert_attackers_gone(watch)
        await close_all([first, *three])


async def test_subscription_churn_without_a_rate_limit_does_not_stall_publishes_or_deliveries(
    serve: Serve,
) -> None:
    """The same churn with the rate limit out of the way (1,000,000/s): one WebSocket for
    3 s, then three for 3 s. It may cost the server work, but never the publishers'
    answers (separate pools) or the subscribers' deliveries."""
    server = await serve(ws_message_rate=1_000_000, ws_message_burst=1_000_000)
    async with watched(server) as watch:
        tag = uuid.uuid4().hex[:8]
        sessions = [await churn_on(server.port, ATTACKERS[0], 3.0, f"{tag}-a")]
        sessions += await asyncio.gather(*(
            churn_on(server.port, source, 3.0, f"{tag}-{n}") for n, source in enumerate(ATTACKERS[1:4])
        ))
        # The attack really ran: every churner had pairs answered (some connections may
        # have been ended, e.g. 4008 for falling behind; a churner then reconnects).
        served = [sum(ws.messages["unsubscribed"] for ws in mine) for mine in sessions]
        assert all(n >= 100 for n in served), f"churners were hardly served: {served}"
        await close_all(ws for mine in sessions for ws in mine)
        await assert_attackers_gone(watch)


async def test_holding_subscriptions_to_never_published_channels_costs_no_redis_reads(
    serve: Serve, redis_server: EmbeddedRedis,
) -> None:
    """300 WebSockets (from four addresses) x 32 never-published channels each: every
    subscribe is answered (an empty snapshot) without a Redis read, and publishes and
    deliveries are not delayed while they come and while they are held."""
    server = await serve()
    connections, channels = 300, 32
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        async with watched(server) as watch:
            before = (await redis.info("stats"))["total_commands_processed"]
            held = await hold_subscriptions(
                server.port, sources(connections), channels, uuid.uuid4().hex[:8]
            )
            commands = (await redis.info("stats"))["total_commands_processed"] - before - 1
            await asyncio.sleep(2.0)  # held, while the probe goes on
            snapshots = Tally()
            for ws in held:
                snapshots.add(f"{ws.outcome()} {ws.messages['snapshot']} snapshots")
            await close_all(held)
            assert snapshots.counts == {f"101 {channels} snapshots": connections}, str(snapshots)
            subscribes = connections * channels
            assert commands < subscribes / 4, (
                f"{subscribes} subscribes to never-published channels cost Redis {commands} commands"
            )
            await assert_attackers_gone(watch)
    finally:
        await redis.aclose()


# 3. Slow connections, and connections per address and per process


async def test_idle_and_dripping_connections_are_closed_within_their_timeouts(serve: Serve) -> None:
    """With every timeout at 1 s: idle TCP connections are closed unanswered; dripping
    request heads (plain and WebSocket upgrades) get 408 and are closed; dripping POST
    bodies get 408 (or, without a key, the 401 already sent) and are closed; a kept-alive
    connection idle after its request is closed. All within the timeout plus slack."""
    server = await serve(
        idle_timeout=TIMEOUT, head_timeout=TIMEOUT, body_timeout=TIMEOUT, keepalive_timeout=TIMEOUT,
    )
    async with watched(server) as watch:
        key = await server.create_key()
        heads = drip_heads()
        plan = {"idle": 100, "drip-http-head": 100, "drip-ws-head": 100,
                "drip-post-body": 50, "drip-post-body-no-key": 50, "idle-after-request": 50}
        conns: dict[str, list[Conn]] = {}
        for n, (kind, count) in enumerate(plan.items()):
            addresses = list(sources(count, first=4 * n))
            if kind == "idle":
                conns[kind] = list(await asyncio.gather(*(idle(server.port, a) for a in addresses)))
            elif kind == "idle-after-request":
                conns[kind] = list(await asyncio.gather(*(
                    idle_after_request(server.port, a) for a in addresses)))
            else:
                conns[kind] = list(await asyncio.gather(*(Conn.open(a, server.port) for a in addresses)))
        drips = [
            drip(conn, *heads[kind](key), every=0.25, seconds=TIMEOUT + SLACK + 1)
            for kind, group in conns.items() if kind in heads for conn in group
        ]
        waits = [
            conn.wait_closed(TIMEOUT + SLACK + 1)
            for kind, group in conns.items() if kind not in heads for conn in group
        ]
        await asyncio.gather(*drips, *waits)

        expected = {
            "idle": {"closed"}, "drip-http-head": {"408+closed"}, "drip-ws-head": {"408+closed"},
            "drip-post-body": {"408+closed"}, "drip-post-body-no-key": {"401+closed", "408+closed"},
            "idle-after-request": {"200+closed"},
        }
        failures = []
        for kind, group in conns.items():
            tally, slowest = Tally(), 0.0
            for conn in group:
                tally.add(outcome(conn))
                start = conn.answered if kind == "idle-after-request" else (conn.first_sent or conn.opened)
                if conn.closed_at is not None and start is not None:
                    slowest = max(slowest, conn.closed_at - start)
                answers = conn.answers()
                if answers and answers[-1].status == 408 and answers[-1].problem() is None:
                    tally.add("408 without a problem body")
            if set(tally.counts) - expected[kind] or slowest > TIMEOUT + SLACK:
                failures.append(f"{kind}: {tally} (slowest close {slowest:.1f} s)")
        assert not failures, "\n".join(failures)
        await assert_attackers_gone(watch)
        await close_all(c for group in conns.values() for c in group)


def _names_limit(reason: str) -> bool:
    return "address" in reason.lower() or "connections" in reason.lower()


async def test_connections_per_address_are_limited_and_forwarded_addresses_only_from_trusted_proxies(
    serve: Serve,
) -> None:
    """max_connections_per_address 50: 127.0.0.2 holds 50 WebSockets; its next HTTP
    request gets 429 (problem, Retry-After) and its next upgrade 101 then 1013 with a
    reason; X-Forwarded-For from it (not a trusted proxy) changes nothing; a burst of 100
    more is refused or dropped and gone at once; 127.0.0.3 is served. Through the trusted
    127.0.0.1, the forwarded address is what is limited. Closing the 50 frees the room."""
    server = await serve(max_connections_per_address=50)
    async with watched(server) as watch:
        port, crowded, other = server.port, ATTACKERS[0], ATTACKERS[1]
        held = [await RawWs.open(crowded, port) for _ in range(50)]
        assert all(ws.open_ok for ws in held), [ws.outcome() for ws in held]

        refused = await _get(port, crowded)
        assert problem_of(refused, 429) is None, problem_of(refused, 429)
        assert int(refused.answers()[-1].headers.get("retry-after", "0")) > 0, refused.answers()[-1].headers
        for headers in ([], [("X-Forwarded-For", "10.9.9.9")], [("Forwarded", "for=10.9.9.8")]):
            spoofed = await _get(port, crowded, headers)
            assert problem_of(spoofed, 429) is None, (headers, problem_of(spoofed, 429))
            ws = await RawWs.open(crowded, port, headers)
            await ws.wait_close(5.0)
            assert ws.outcome() == "101+1013" and _names_limit(ws.close_reason), (
                headers, ws.outcome(), ws.close_reason)
            await close_all([spoofed, ws])

        burst = await asyncio.gather(*(_get(port, crowded, wait=False) for _ in range(100)))
        await asyncio.gather(*(c.wait_closed(GONE_WITHIN) for c in burst))
        tally = Tally()
        for conn in burst:
            tally.add(outcome(conn))
        assert set(tally.counts) <= {"429+closed", "closed"}, str(tally)
        assert await poll(lambda: server.peers()[crowded] == 50, GONE_WITHIN), server.peers()
        await close_all(burst)

        served = await _get(port, other)
        assert [a.status for a in served.answers()] == [200], outcome(served)
        fine = await RawWs.open(other, port)
        await fine.send(json_frames([{"op": "subscribe", "channel": "per-address"}]))
        assert await fine.wait_messages("snapshot", 1, 5.0), fine.outcome()

        # Through the trusted proxy 127.0.0.1, each forwarded client has its own share.
        proxied = [await RawWs.open(LEGIT, port, [("X-Forwarded-For", "10.1.1.1")]) for _ in range(50)]
        await asyncio.sleep(0.5)
        assert {ws.outcome() for ws in proxied} == {"101"}, [ws.outcome() for ws in proxied]
        for headers in ([("X-Forwarded-For", "10.1.1.1")], [("Forwarded", "for=10.1.1.1")]):
            over = await RawWs.open(LEGIT, port, headers)
            await over.wait_close(5.0)
            assert over.outcome() == "101+1013" and _names_limit(over.close_reason), (
                headers, over.outcome(), over.close_reason)
            await over.close()
        another = await RawWs.open(LEGIT, port, [("X-Forwarded-For", "10.1.1.2")])
        await another.send(json_frames([{"op": "subscribe", "channel": "per-address"}]))
        assert await another.wait_messages("snapshot", 1, 5.0), another.outcome()

        await close_all(held)
        assert await poll(lambda: server.peers()[crowded] == 0, GONE_WITHIN), server.peers()
        again = await RawWs.open(crowded, port)
        await again.send(json_frames([{"op": "subscribe", "channel": "per-address"}]))
        assert await again.wait_messages("snapshot", 1, 5.0), again.outcome()

        await close_all([served, fine, another, again, *proxied])
        await assert_attackers_gone(watch)
        assert await poll(lambda: server.peers()[LEGIT] == watch.legit_peers, GONE_WITHIN), server.peers()


async def _get(
    port: int, source: str, headers: list[tuple[str, str]] | None = None, wait: bool = True,
) -> Conn:
    """GET /healthz from ``source``; with ``wait``, until answered or closed (5 s)."""
    conn = await Conn.open(source, port)
    await conn.send(request_head("GET", "/healthz", headers or []))
    if wait:
        await conn.wait_data(lambda: bool(conn.answers()), 5.0)
        await conn.wait_closed(0.5)
    return conn


async def test_connections_per_process_are_limited(serve: Serve) -> None:
    """max_connections 60: WebSockets from several addresses are admitted until the
    process holds 60 connections (the probe's among them); the next upgrade gets 101 then
    1013 with a reason, an HTTP request 503 (problem); a burst of 100 more is refused or
    dropped at once; the probe, already connected, is served throughout; closing ten
    makes room again."""
    limit = 60
    server = await serve(max_connections=limit)
    async with watched(server) as watch:
        port = server.port
        addresses = iter(sources(limit + 20))
        held = list(await asyncio.gather(*(RawWs.open(next(addresses), port) for _ in range(40))))
        assert all(ws.open_ok for ws in held), [ws.outcome() for ws in held]
        refusal = None
        for _ in range(30):
            ws = await RawWs.open(next(addresses), port)
            if await ws.wait_close(0.3):
                refusal = ws
                break
            held.append(ws)
        assert refusal is not None, f"{len(held)} WebSockets held and none refused (limit {limit})"
        assert limit - 8 <= len(held) + watch.legit_peers <= limit, (len(held), watch.legit_peers)
        assert refusal.outcome() == "101+1013" and refusal.close_reason, (
            refusal.outcome(), refusal.close_reason)

        busy = await _get(port, ATTACKERS[10])
        assert problem_of(busy, 503) is None, problem_of(busy, 503)
        burst = await asyncio.gather(*(_get(port, ATTACKERS[11], wait=False) for _ in range(100)))
        await asyncio.gather(*(c.wait_closed(GONE_WITHIN) for c in burst))
        tally = Tally()
        for conn in burst:
            tally.add(outcome(conn))
        assert set(tally.counts) <= {"503+closed", "closed"}, str(tally)

        await close_all(held[:10])
        assert await poll(lambda: server.attacker_connections() == len(held) - 10, GONE_WITHIN)
        room = await RawWs.open(ATTACKERS[12], port)
        await room.send(json_frames([{"op": "subscribe", "channel": "per-process"}]))
        assert await room.wait_messages("snapshot", 1, 5.0), room.outcome()

        await close_all([refusal, busy, *burst, *held[10:], room])
        await assert_attackers_gone(watch)


async def test_a_process_never_reaches_its_open_file_limit(serve: Serve) -> None:
    """With the default max_connections and 600 open files (a limit of 344 connections:
    600 less a reserve of 256, and 64 refusal slots), 500 connections that send nothing
    are taken: the process admits what it may, holds the refusal slots, closes the rest at
    once, never fails an accept for lack of descriptors, and serves again once they go."""
    server = await serve(open_files=600, idle_timeout=30)
    port = server.port
    conns = list(await asyncio.gather(*(Conn.open(address, port) for address in sources(500))))
    await asyncio.gather(*(c.wait_closed(0.5) for c in conns))
    dropped = [c for c in conns if c.closed.is_set()]
    assert 500 - 344 - 64 - 8 <= len(dropped) <= 500 - 344 - 64 + 8, len(dropped)
    assert server.open_fds() < 600 - 64, server.open_fds()
    # Those held are served, or refused in words (503) in the refusal slots.
    held = [c for c in conns if not c.closed.is_set()]
    await asyncio.gather(*(c.send(request_head("GET", "/healthz")) for c in held))
    await asyncio.gather(*(c.wait_data(lambda c=c: bool(c.answers()), 5.0) for c in held))
    tally = Tally()
    for conn in held:
        tally.add(str(conn.answers()[0].status) if conn.answers() else outcome(conn))
    assert set(tally.counts) == {"200", "503"}, str(tally)
    assert abs(tally.counts["200"] - 344) <= 8 and abs(tally.counts["503"] - 64) <= 8, str(tally)
    await close_all(conns)
    assert await poll(lambda: server.attacker_connections() == 0, GONE_WITHIN)
    answer = await _get(port, ATTACKERS[5])
    assert [a.status for a in answer.answers()] == [200], outcome(answer)
    await close_all([answer])
    log = server.log.read_text(errors="replace")
    assert "Too many open files" not in log and "out of system resource" not in log, log[-2000:]


# 5. WebSocket frame floods


async def test_websocket_frame_floods_are_closed_with_memory_flat(serve: Serve) -> None:
    """At full speed on one socket each: empty continuation frames (closed 1009 at
    ws_max_fragments), empty text frames (1008, the message rate), pings (1008 or 1009);
    each with a reason, and the server's memory flat."""
    server = await serve()
    async with watched(server) as watch:
        expected = {"empty-continuations": {1009}, "empty-text-frames": {1008}, "pings": {1008, 1009}}
        failures = []
        for n, kind in enumerate(FLOODS):
            ws = await frame_flood(server.port, ATTACKERS[n], kind, seconds=8.0)
            await ws.wait_close(3.0)
            if ws.close_code not in expected[kind] or not ws.close_reason:
                failures.append(
                    f"{kind}: {ws.outcome()} {ws.close_reason!r} after {ws.conn.sent / 1e6:.0f} MB "
                    f"({ws.conn.sent // 6:,} frames) sent; {ws.conn.received} bytes received"
                    f"{', then a reset' if ws.conn.reset else ''}"
                )
            elif not await ws.conn.wait_closed(GONE_WITHIN):
                failures.append(f"{kind}: closed with {ws.close_code}, but the TCP connection stayed open")
            await ws.close()
        assert not failures, "\n".join(failures)
        await assert_attackers_gone(watch)
